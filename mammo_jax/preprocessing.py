"""Stored uint16 patches -> model inputs: one path for training, validation and test.

Training augments between `scale` and `finish`, where Keras's ImageDataGenerator applied the
study's `preprocessing_function`: after the random transform (its fill values are grey values,
not mean-subtracted ones). The reference study's defect D1 (a different preprocessing at test
time, docs/REFERENCE_STUDY.md) cannot occur: every step calls these functions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mammo_jax import augment

# Keras "caffe" preprocessing (keras.applications.vgg16.preprocess_input): RGB -> BGR, then
# minus the ImageNet means in BGR order, no scaling. torchvision's: [0, 1], minus mean, over std.
# Keras "tf" (keras.applications.mobilenet.preprocess_input): x / 127.5 - 1 on 0..255 RGB, which
# is 2u - 1 on u = uint16 / 65535 in [0, 1].
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN, TORCH_RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Shen et al.'s (docs/SHEN_2019.md): 16 bits rescaled to [0, 255] (x 255/65535), grey in 3
# channels, minus one fixed scalar: the featurewise mean of their resized CBIS-DDSM training
# images, which their scripts pass as a constant; no ImageNet means, no division.
SHEN_MEAN = 52.18
# 'standardize', for training from random initialisation: each image on its own, minus its mean
# over its pixels, over its standard deviation plus 1 grey level of 255 (so that a flat patch
# is not amplified noise), grey in 3 channels. A patch's brightness then says nothing; a random
# network need not first learn to ignore it (the synthetic S10 demo: configs/shen_patch.py). No
# pretrained weights expect it. Per image, so a sliding window over a whole image is not the
# same computation (PER_IMAGE_MODES: predict refuses such patch runs).
STANDARDIZE_FLOOR = 1.0
PREPROCESS_MODES = ('unit', 'caffe', 'torch', 'tf', 'shen', 'standardize')
PER_IMAGE_MODES = ('standardize',)
# Shen's recipe fine-tunes Keras's ImageNet weights (trained on 'caffe' inputs: 0..255 minus
# means) on its own 0..255-minus-one-mean inputs; so 'shen' loads the weights 'caffe' does.
_WEIGHTS_OF = {'shen': 'caffe'}


def weights_preprocess(mode: str) -> str:
  """The preprocessing of the pretrained weights that model.preprocess=`mode` may load."""
  return _WEIGHTS_OF.get(mode, mode)


def _unknown(mode: str) -> ValueError:
  return ValueError(f'unknown model.preprocess {mode!r}; known: {", ".join(PREPROCESS_MODES)}')


def scale(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Stored uint16 grey patches -> float grey images, the space augmentation works in."""
  if mode in ('unit', 'torch', 'tf'):  # the study's scratch scaling; torch's and tf's [0, 1]
    return images.astype(jnp.float32) / 65535.0
  if mode == 'caffe':  # the study's VGG16 input: uint16 / 256, roughly [0, 255]
    return images.astype(jnp.float32) / 256.0
  if mode in ('shen', 'standardize'):  # exactly [0, 255]; augmentation fills with these greys
    return images.astype(jnp.float32) * (255.0 / 65535.0)
  raise _unknown(mode)


def finish(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Scaled (and possibly augmented) grey images -> model input."""
  if mode == 'unit':
    return images
  if mode == 'standardize':
    mean = images.mean(axis=(-3, -2, -1), keepdims=True)
    std = images.std(axis=(-3, -2, -1), keepdims=True)
    images = (images - mean) / (std + STANDARDIZE_FLOOR)
  rgb = jnp.repeat(images, 3, axis=-1)  # grey -> 3 channels, as the study's np.repeat
  if mode == 'caffe':
    return rgb[..., ::-1] - jnp.asarray(CAFFE_BGR_MEANS, jnp.float32)
  if mode == 'torch':
    return (rgb - jnp.asarray(TORCH_RGB_MEAN)) / jnp.asarray(TORCH_RGB_STD)
  if mode == 'tf':
    return rgb * 2.0 - 1.0
  if mode == 'shen':  # the mean after augmentation, as Shen's generator subtracts it
    return rgb - SHEN_MEAN
  if mode == 'standardize':
    return rgb
  raise _unknown(mode)


def preprocess(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Stored uint16 patches -> model input, for validation and test (and init shapes)."""
  return finish(scale(images, mode), mode)


def train_inputs(images: jnp.ndarray, keys: jax.Array | None, spec: augment.AugmentSpec,
                 mode: str) -> jnp.ndarray:
  """The training step's model input: preprocess() with augmentation in the middle."""
  x = scale(images, mode)
  if spec.enabled and keys is not None:
    x = augment.augment_batch(keys, x, spec)
  return finish(x, mode)
