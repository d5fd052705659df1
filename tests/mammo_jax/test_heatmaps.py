"""Sliding-window heatmaps in one convolutional pass against cropping and classifying each window,
class-activation maps, peaks and the PNG."""

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

from mammo_jax import heatmaps
from mammo_jax.models.resnet import ResNet50Classifier
from mammo_jax.models.vgg16 import VGG16Classifier


def _init(model, size):
  return jax.jit(lambda x: model.init(jax.random.key(0), x))(jnp.zeros((1, size, size, 3)))


def test_vgg16_map_equals_classifying_the_cropped_window_when_padding_cannot_matter():
  # Zero biases (Flax's init) and an input that is zero except a 32-px block: a window holding
  # the block at least VGG16's receptive-field radius (106 px) from its border never sees its
  # padding differ from the whole image's zeros there, so its cell is the crop's logits.
  model = VGG16Classifier(num_outputs=5, fc=0, dropout=0.5, pooling='avg')
  variables = _init(model, 32)
  image = np.zeros((1, 320, 352, 3), np.float32)
  image[:, 144:176, 144:176] = np.asarray(jax.random.normal(jax.random.key(1), (32, 32, 3))) * 50
  logit_map = heatmaps.patch_logit_map(model, variables, jnp.asarray(image), window=256)
  assert logit_map.shape == (1, 3, 4, 5)  # (320 - 256) / 32 + 1 rows, (352 - 256) / 32 + 1 cols

  def crop(i, j):  # the classifier on the window with top-left corner (32 i, 32 j)
    return model.apply(variables, jnp.asarray(image[:, 32 * i:32 * i + 256, 32 * j:32 * j + 256]))

  np.testing.assert_allclose(logit_map[0, 1, 1], crop(1, 1)[0], rtol=1e-5, atol=1e-6)
  # 48 px from the window's left border the block's activations reach the crop's padding.
  assert np.abs(logit_map[0, 1, 3] - crop(1, 3)[0]).max() > 1e-4


def test_fc_head_and_every_window_of_a_whole_image_window():
  model = VGG16Classifier(num_outputs=1, fc=8, dropout=0.0, pooling='avg')
  variables = _init(model, 32)
  image = jax.random.normal(jax.random.key(2), (2, 32, 32, 3)) * 40
  logit_map = heatmaps.patch_logit_map(model, variables, image, window=32)
  assert logit_map.shape == (2, 1, 1, 1)
  np.testing.assert_allclose(logit_map[:, 0, 0], model.apply(variables, image), rtol=1e-4,
                             atol=1e-5)


def test_resnet50_map_equals_the_classifier_when_the_window_is_the_image():
  model = ResNet50Classifier(num_outputs=5)
  variables = _init(model, 64)
  image = jax.random.normal(jax.random.key(3), (1, 64, 64, 3)) * 30
  logit_map = heatmaps.patch_logit_map(model, variables, image, window=64)
  np.testing.assert_allclose(logit_map[:, 0, 0], model.apply(variables, image), rtol=1e-4,
                             atol=1e-4)


def test_unsupported_models_windows_and_sizes_are_refused():
  flat = VGG16Classifier(num_outputs=5, fc=0, pooling='flatten')
  with pytest.raises(ValueError, match="needs the patch classifier's global average pooling"):
    heatmaps.patch_logit_map(flat, {'params': {}}, jnp.zeros((1, 64, 64, 3)), 64)
  model = VGG16Classifier(num_outputs=5, fc=0, pooling='avg')
  with pytest.raises(ValueError, match=r'window \(48 px\) must be a multiple of .*32 px'):
    heatmaps.patch_logit_map(model, {'params': {}}, jnp.zeros((1, 64, 64, 3)), 48)
  variables = _init(model, 32)
  with pytest.raises(ValueError, match='an image of 32x64 px is smaller than one window of 64'):
    heatmaps.patch_logit_map(model, variables, jnp.zeros((1, 32, 64, 3)), 64)


def test_grids_peaks_and_the_malignant_map():
  grid = heatmaps.window_grid(224)
  assert grid.centre(0, 0) == (112.0, 112.0) and grid.centre(2, 1) == (176.0, 144.0)
  values = np.zeros((3, 4))
  values[2, 1] = 0.9
  assert heatmaps.peak(values, grid) == (176.0, 144.0)
  cam = heatmaps.cam_grid((1152, 896), (36, 28))
  assert cam.step == 32 and cam.centre(0, 0) == (16.0, 16.0)
  assert cam.extent((36, 28)) == (0.0, 896.0, 1152.0, 0.0)
  names = ('BACKGROUND', 'BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION',
           'MALIGNANT_CALCIFICATION')
  probs = np.array([[[0.1, 0.2, 0.3, 0.1, 0.3]]])
  np.testing.assert_allclose(heatmaps.malignant_map(probs, names), [[0.6]])
  with pytest.raises(ValueError, match='have no MALIGNANT one'):
    heatmaps.malignant_map(probs, ('A', 'B', 'C', 'D', 'E'))


def test_render_writes_a_png_of_the_mammogram_with_the_map(tmp_path):
  image = np.tile(np.linspace(0, 65535, 96, dtype=np.uint16), (128, 1))
  values = np.random.default_rng(0).uniform(size=(3, 2))
  path = heatmaps.render(image, values, heatmaps.window_grid(64), tmp_path / 'h.png', title='t')
  with PIL.Image.open(path) as png:
    assert png.format == 'PNG' and png.size[0] > 300
