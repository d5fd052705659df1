"""Shen et al.'s S10 five-class patch classifier (docs/SHEN_2019.md), for configs/shen_patch.py.

An ImageNet backbone (ResNet50 or VGG16) with global average pooling, dropout 0.5 and a new
Dense(5) head, fine-tuned on the cbis_ddsm/s10_224 patches in three stages, each starting from
the previous stage's best checkpoint with a fresh optimizer:
  head  only the new Dense ('logits') trains;
  top   + the top block: ResNet50's res5c (conv5_block3_{1,2,3}_{conv,bn}), VGG16's block 5;
  all   every layer.
Inputs are Shen's preprocessing (model.preprocess='shen': x 255/65535, grey in 3 channels,
minus the scalar 52.18); training batches are class balanced (class_balance='batch') and
augmented with Shen's flips, rotation, shear and zoom.
"""

from __future__ import annotations

import math

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import stages as stages_lib
from mammo_jax.config_lib import vgg16 as vgg16_lib

VARIANTS = ('resnet50', 'vgg16')
FLAGS = ('demo', 'smoke')
HEAD = 'logits'
# The layers the second stage unfreezes, as parameter paths of the registry's classifiers.
TOP_BLOCK = {
    'resnet50': tuple(f'resnet50/conv5_block3_{i}_{kind}' for i in (1, 2, 3)
                      for kind in ('conv', 'bn')),
    'vgg16': tuple(f'vgg16/block5_conv{i}' for i in (1, 2, 3)),
}
# Where the ported ImageNet weights are expected (README: port once, then run).
WEIGHTS = {'resnet50': 'weights/resnet50_keras_notop.msgpack',
           'vgg16': vgg16_lib.DEFAULT_WEIGHTS}
DONT_LOAD = {'resnet50': r'^predictions(/|$)', 'vgg16': vgg16_lib.IMAGENET_TOP}
CHAIN = ('head', 'top', 'all')
# Adam learning rates and epochs per stage: the paper's 5-class S10 values as recalled, not
# checked against its text (docs/SHEN_2019.md marks them unverified).
LEARNING_RATES = {'head': 1e-3, 'top': 1e-4, 'all': 1e-5}
EPOCHS = {'head': 3, 'top': 10, 'all': 37}

# Shen's Keras 2.0 ImageDataGenerator: flips, rotation U(+-25 deg), shear U(+-0.2 rad; our
# AugmentSpec takes degrees), zoom factors U(0.8, 1.2) drawn independently per axis, 'nearest'
# fill. Its channel shift (U(+-20) per channel) has no counterpart in mammo_jax.augment.
AUGMENT = {'rotation': 25.0, 'shear': math.degrees(0.2), 'zoom': 0.2, 'width_shift': 0.0,
           'height_shift': 0.0, 'horizontal_flip': True, 'vertical_flip': True,
           'fill_mode': 'nearest'}

# The demo: no ImageNet weights here (CI cannot download them), so the backbone starts from
# random initialisation, and freezing it (Shen's head and top stages) would only fit a
# classifier to random features, with frozen BatchNorm layers using their initial statistics.
# The demo therefore runs one stage, `all`: every layer trains from the first step, BatchNorm
# in training mode. What a random network needs, unlike Shen's ImageNet one, measured on the
# resnet50 demo (test macro AUC / balanced accuracy, one run each, 2026-11-26):
#   Shen's preprocessing, dropout 0.5, Keras's BatchNorm (the first settings)   0.670 / 0.321
#   + zero-initialised residual branches, BatchNorm momentum 0.9, dropout 0     0.708 / 0.319
#     (a constant learning rate: validation loss erratic, 1.33 then 2.21 16 steps later)
#   + each patch standardised on its own (preprocess 'standardize'), decay     0.783 / 0.389
# The patches' brightness varies far more between patches than the lesions' contrast within
# one (synthetic and real mammograms alike); ImageNet filters already ignore it, random ones
# must first learn to. Zero-initialised residual branches (Goyal et al. 2017) start every block
# as the identity; Keras's momentum 0.99 leaves the running averages trailing weights that move
# fast in 400 steps. Synthetic lesions easier than the generator's default (difficulty 0.1, not
# 0.5: higher contrast, benign and malignant morphology further apart); 160 patients, as 80
# left 6 validation patients, whose loss picked an early checkpoint at chance on test; no
# augmentation, which a few hundred steps cannot profit from. Patches resized to 32x32
# (VGG16's smallest input; ResNet50 pools globally, any size works): 48x48 cost 2.5 times the
# CPU time for no better test numbers at the same steps. Adam 1e-3 with Keras's time-based
# decay 1e-2 (lr / (1 + 0.01 step), 2e-4 by step 400). 400 steps (about 3 epochs) fit about 8
# CPU-minutes. Measured numbers: configs/shen_patch.py.
DEMO_CHAIN = ('all',)
DEMO_SYNTHETIC = {'patients': 160, 'difficulty': 0.1}
DEMO_IMAGE_SIZE = 32
DEMO_LEARNING_RATE = 1e-3
DEMO_DECAY = 1e-2
DEMO_STEPS = 400
DEMO_PREPROCESS = 'standardize'
DEMO_DROPOUT = 0.0
DEMO_RESNET50 = {'zero_init_residual': True, 'bn_momentum': 0.9}
DEMO_AUGMENT = {**AUGMENT, 'rotation': 0.0, 'shear': 0.0, 'zoom': 0.0,
                'horizontal_flip': False, 'vertical_flip': False}


def parse_arg(arg: str | None, config_file: str) -> tuple[str, set[str]]:
  """'[VARIANT][,demo][,smoke]' -> (variant, default resnet50; flags)."""
  parts = [p for p in (arg or '').split(',') if p]
  variants = [p for p in parts if p in VARIANTS]
  flags = {p for p in parts if p in FLAGS}
  if len(variants) > 1 or len(variants) + len(flags) != len(parts):
    raise ValueError(f'{config_file} takes one of {", ".join(VARIANTS)} (default '
                     f'{VARIANTS[0]}), optionally with ",demo" and/or ",smoke" (e.g. '
                     f'vgg16,demo); got {arg!r}')
  return (variants[0] if variants else VARIANTS[0]), flags


def base_config(variant: str) -> ml_collections.ConfigDict:
  """Shen's settings shared by the three stages (the head-only stage's trainable set)."""
  config = base.base_config()
  config.task = 'five_class'
  config.data.name = 'cbis_ddsm/s10_224'
  config.model.name = variant
  config.model.preprocess = 'shen'
  config.model.fc = 0  # GAP -> dropout -> Dense(5): no hidden FC layer
  config.model.dropout = 0.5
  if variant == 'vgg16':
    config.model.pooling = 'avg'  # Keras's pooling='avg' (ResNet50 always pools)
  else:
    config.model.bn_momentum = 0.0  # 0: Keras's 0.99
    config.model.zero_init_residual = False
  config.model.trainable = HEAD
  config.model.pretrained = WEIGHTS[variant]
  config.model.dont_load = DONT_LOAD[variant]
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = LEARNING_RATES['head']
  config.optimizer.decay = 0.0
  config.class_balance = 'batch'
  config.augment = ml_collections.ConfigDict(AUGMENT)
  config.batch_size = 32
  config.eval_batch_size = 64
  config.patience = 5  # early stopping on the validation loss, as Shen's scripts
  config.log_every_steps = 50
  return config


def stage_overrides(variant: str, learning_rates: dict, epochs: dict,
                    steps: dict | None = None, chain: tuple[str, ...] = CHAIN) -> dict:
  """Each stage of `chain` starts from the one before it (the first from model.pretrained)."""
  trainable = {'head': HEAD, 'top': ','.join((HEAD,) + TOP_BLOCK[variant]), 'all': 'all'}
  return {s: {'model': {'trainable': trainable[s]},
              'init_from': f'@{chain[i - 1]}' if i else '',
              'optimizer': {'learning_rate': learning_rates[s]}, 'num_epochs': epochs[s],
              **({'num_train_steps': steps[s]} if steps else {})}
          for i, s in enumerate(chain)}


def get_config(arg: str | None, config_file: str) -> ml_collections.ConfigDict:
  variant, flags = parse_arg(arg, config_file)
  config = base_config(variant)
  learning_rates, epochs, steps, chain = LEARNING_RATES, EPOCHS, None, CHAIN
  if flags:  # demo and smoke: synthetic data, random initialisation, small inputs
    config.model.pretrained = ''
    config.data.image_size = DEMO_IMAGE_SIZE
    config.log_every_steps = 10
  if 'smoke' in flags:  # Shen's three stages, tiny
    base.smoke(config)
    epochs = {s: config.num_epochs for s in CHAIN}
  elif 'demo' in flags:
    chain = DEMO_CHAIN
    config.data.synthetic.update(DEMO_SYNTHETIC)
    learning_rates = {'all': DEMO_LEARNING_RATE}
    config.optimizer.decay = DEMO_DECAY
    steps = {'all': DEMO_STEPS}
    epochs = {'all': 10}  # the step cap ends the stage first
    config.augment = ml_collections.ConfigDict(DEMO_AUGMENT)
    config.model.preprocess = DEMO_PREPROCESS
    config.model.dropout = DEMO_DROPOUT
    if variant == 'resnet50':
      config.model.update(DEMO_RESNET50)
  return stages_lib.make_config(
      config, stage_overrides(variant, learning_rates, epochs, steps, chain), chain)
