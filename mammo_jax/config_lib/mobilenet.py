"""The study's MobileNet feature extraction (docs/REFERENCE_STUDY.md §2.5), for
configs/mobilenet_*.py.

The ImageNet MobileNet v1 base at width multiplier 0.5, its 150x150 patches resized to
160x160 inside the model (the size of the published weights nearest the patches), grey
repeated to 3 channels and MobileNet's own preprocessing (Keras's 'tf': x / 127.5 - 1), the
same at training and test time; global average pooling, optional dropout, an optional small
dense layer and the output layer. The base is frozen, its BatchNorm layers in inference mode.
"""

from collections.abc import Mapping

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import stages as stages_lib

# Where `python -m mammo_jax.port_weights` is told to write Keras's alpha-0.5, 160x160 no-top
# weights (mobilenet_5_0_160_tf_no_top.h5).
DEFAULT_WEIGHTS = 'weights/mobilenet_5_0_160_keras_notop.msgpack'
# A with-top weight file's ImageNet classifier (weights.mobilenet.TOP_PATTERN): our head
# replaces it.
IMAGENET_TOP = r'^conv_preds(/|$)'


def base_config(task: str) -> ml_collections.ConfigDict:
  config = base.base_config()
  config.task = task
  config.model.name = 'mobilenet'
  config.model.preprocess = 'tf'
  config.model.alpha = 0.5
  config.model.input_size = 160  # the study's input size; 0 feeds the stored patches as they are
  config.model.fc = 0  # width of a Dense(relu) before the output layer; 0 = none
  config.model.dropout = 0.0
  config.model.trainable = 'logits'  # feature extraction: the base is frozen
  config.model.pretrained = DEFAULT_WEIGHTS
  config.model.dont_load = IMAGENET_TOP
  return config


def get_config(arg: str | None, variants: Mapping[str, dict], default: str, task: str,
               config_file: str, published: Mapping[str, dict],
               training: Mapping) -> ml_collections.ConfigDict:
  """A MobileNet config file's get_config: one variant (overrides of base_config plus the
  file's `training` settings), optionally ',smoke'; `published`: the study's numbers."""
  variant, smoke = base.parse_args(arg, tuple(variants), default, config_file)
  config = base_config(task)
  overrides = {**training, **variants[variant]}
  if smoke:
    base.smoke(config)
    config.model.pretrained = ''  # CI has no ImageNet weights; the port has its own tests
    overrides = {k: v for k, v in overrides.items() if k not in ('num_epochs', 'patience')}
  return stages_lib.stage_config(config, overrides, published.get(variant))
