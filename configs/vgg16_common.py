"""Shared by configs/vgg16_2.py and configs/vgg16_4.py (not a config itself).

The study's VGG16 transfer learning (REFERENCE_STUDY.md §2.4): the ImageNet VGG16 base on
150x150 patches, grey repeated to 3 channels and Keras "caffe" preprocessing (the same at
training and test time, unlike the study's notebooks: defect D1), a Flatten -> [Dropout] ->
Dense(fc, relu) -> Dense(k) head, feature extraction with the base frozen, then fine-tuning
that unfreezes block 5's convolutions one at a time, each stage starting from the previous
stage's best checkpoint with a fresh RMSprop.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top
from mammo_jax import augment  # noqa: E402  pylint: disable=g-import-not-at-top
from mammo_jax import pipeline  # noqa: E402  pylint: disable=g-import-not-at-top

# Where `python -m mammo_jax.port_vgg16` is told to write the Keras notop weights (README).
DEFAULT_WEIGHTS = 'weights/vgg16_keras_notop.msgpack'
HEAD = 'fc,logits'


def augmentation(setting: str) -> dict:
  """The study's augmentation set B or C (REFERENCE_STUDY.md §1.7) as config values."""
  spec = augment.STUDY_SETTINGS[setting]
  return {f: getattr(spec, f) for f in default.get_config().augment.keys()}


def fine_tune(convs: tuple[str, ...], learning_rate: float, start: str, fc: int) -> dict:
  """Overrides of a fine-tuning stage: the head plus `convs` trainable, from stage `start`
  (whose head is `fc` wide)."""
  trainable = ','.join([HEAD] + [f'vgg16/{c}' for c in convs])
  # model.pretrained stays: init_from, which sets every weight, takes precedence over it.
  return {'model': {'trainable': trainable, 'fc': fc},
          'optimizer': {'learning_rate': learning_rate}, 'init_from': f'@{start}',
          'augment': augmentation('C'), 'num_epochs': 200, 'patience': 30}


def base(task: str):
  config = default.get_config()
  config.task = task
  config.model.name = 'vgg16'
  config.model.preprocess = 'caffe'
  config.model.fc = 256
  config.model.dropout = 0.5
  config.model.trainable = HEAD  # feature extraction: the base is frozen
  config.model.pretrained = DEFAULT_WEIGHTS
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 1e-3  # Keras's default; no decay in the VGG notebooks
  config.optimizer.decay = 0.0
  config.patience = 30
  return config


def get_config(arg, stages: dict, chain: tuple[str, ...], default_stage: str,
               task: str, config_file: str):
  stage, smoke = default.parse_args(arg, tuple(stages) + ('pipeline',), default_stage,
                                    config_file)
  config = base(task)
  if smoke:
    default.smoke(config)
    config.model.pretrained = ''  # CI has no ImageNet weights; the port has its own tests
    # The smoke run's lengths win over the stages' epoch caps and patience.
    stages = {s: {k: v for k, v in o.items() if k not in ('num_epochs', 'patience')}
              for s, o in stages.items()}
  if stage == 'pipeline':
    return pipeline.make_config(config, stages, chain)
  return pipeline.stage_config(config, stages[stage])
