"""ResNet50 feature extraction (docs/REFERENCE_STUDY.md §2.5), for configs/resnet50_*.py.

The report describes the model only: the ImageNet ResNet50 base, frozen, and one sigmoid unit
on its 2,048 globally pooled feature maps, with or without dropout 0.5. What it leaves out is
chosen as for the study's VGG16 feature extraction (config_lib/vgg16.py), its closest
published relative: 150x150 patches as stored, grey repeated to 3 channels, Keras "caffe"
preprocessing (what keras.applications.resnet50.preprocess_input does), RMSprop 1e-3 without
decay, batch 128, augmentation B, 200 epochs with patience 30. Frozen BatchNorm layers run in
inference mode with the ImageNet statistics, as in Keras.
"""

import ml_collections

from mammo_jax.config_lib import base

# Where `python -m mammo_jax.port_weights` is told to write the Keras notop weights (README).
DEFAULT_WEIGHTS = 'weights/resnet50_keras_notop.msgpack'
HEAD = 'logits'  # feature extraction: only the head trains ('fc,logits' with an FC layer)
# The ImageNet top of a with-top weight file: our head replaces it.
IMAGENET_TOP = r'^predictions(/|$)'


def base_config(task: str) -> ml_collections.ConfigDict:
  config = base.base_config()
  config.task = task
  config.model.name = 'resnet50'
  config.model.preprocess = 'caffe'
  config.model.fc = 0  # the report: the sigmoid unit sits directly on the pooled features
  config.model.dropout = 0.0
  config.model.trainable = HEAD
  config.model.pretrained = DEFAULT_WEIGHTS
  config.model.dont_load = IMAGENET_TOP
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 1e-3  # Keras's default, as in the VGG16 FE notebooks
  config.optimizer.decay = 0.0
  config.augment = ml_collections.ConfigDict(base.augmentation('B'))
  config.num_epochs = 200
  config.patience = 30
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  """base.smoke, without the ImageNet weights (CI has none; the port has its own tests)."""
  base.smoke(config)
  config.model.pretrained = ''
