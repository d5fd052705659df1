"""The study's VGG16 transfer learning (docs/REFERENCE_STUDY.md §2.4), for configs/vgg16_*.py.

The ImageNet VGG16 base on 150x150 patches, grey repeated to 3 channels and Keras "caffe"
preprocessing (the same at training and test time, unlike the study's notebooks: defect D1),
a Flatten -> [Dropout] -> Dense(fc, relu) -> Dense(k) head, feature extraction with the base
frozen, then fine-tuning that unfreezes block 5's convolutions one at a time, each stage
starting from the previous stage's best checkpoint with a fresh RMSprop.
"""

from collections.abc import Mapping

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import stages as stages_lib

# Where `python -m mammo_jax.port_vgg16` is told to write the Keras notop weights (README).
DEFAULT_WEIGHTS = 'weights/vgg16_keras_notop.msgpack'
HEAD = 'fc,logits'
# The ImageNet top of a with-top weight file: our head replaces it.
IMAGENET_TOP = r'^(fc1|fc2|predictions)(/|$)'


def fine_tune(convs: tuple[str, ...], learning_rate: float, start: str, fc: int) -> dict:
  """Overrides of a fine-tuning stage: the head plus `convs` trainable, from stage `start`
  (whose head is `fc` wide)."""
  trainable = ','.join([HEAD] + [f'vgg16/{c}' for c in convs])
  # model.pretrained stays: init_from, which sets every weight, takes precedence over it.
  return {'model': {'trainable': trainable, 'fc': fc},
          'optimizer': {'learning_rate': learning_rate}, 'init_from': f'@{start}',
          'augment': base.augmentation('C'), 'num_epochs': 200, 'patience': 30}


def base_config(task: str) -> ml_collections.ConfigDict:
  config = base.base_config()
  config.task = task
  config.model.name = 'vgg16'
  config.model.preprocess = 'caffe'
  config.model.fc = 256
  config.model.dropout = 0.5
  config.model.trainable = HEAD  # feature extraction: the base is frozen
  config.model.pretrained = DEFAULT_WEIGHTS
  config.model.dont_load = IMAGENET_TOP
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 1e-3  # Keras's default; no decay in the VGG notebooks
  config.optimizer.decay = 0.0
  config.patience = 30
  return config


def get_config(arg: str | None, stages: Mapping[str, dict], chain: tuple[str, ...],
               default_stage: str, task: str, config_file: str,
               published: Mapping[str, dict]) -> ml_collections.ConfigDict:
  """A VGG16 config file's get_config: one stage, or `pipeline` (the chain of stages);
  `published`: the study's numbers per stage."""
  stage, smoke = base.parse_args(arg, tuple(stages) + ('pipeline',), default_stage,
                                 config_file)
  config = base_config(task)
  if smoke:
    base.smoke(config)
    config.model.pretrained = ''  # CI has no ImageNet weights; the port has its own tests
    # The smoke run's lengths win over the stages' epoch caps and patience.
    stages = {s: {k: v for k, v in o.items() if k not in ('num_epochs', 'patience')}
              for s, o in stages.items()}
  if stage == 'pipeline':
    return stages_lib.make_config(config, stages, chain, published)
  return stages_lib.stage_config(config, stages[stage], published.get(stage))
