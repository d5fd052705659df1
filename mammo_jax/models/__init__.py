"""Model registry: config.model.name -> a linen module.

`vgg16` (models/vgg16.py) is not in the registry: its head comes from config.model.fc and
config.model.dropout, so train.create_model builds it.

The scratch family follows REFERENCE_STUDY.md §2.1 (2-class Exps 0-11), §2.2 (4-class
M1-M3) and §2.3 (benign vs malignant). Optimiser, L2 and augmentation differences between
experiments (e.g. Exp 5's LR decay, Exp 8's Adam, Exp 9's L2) are config, not architecture.

PAIR_MODELS (§2.6 Dual CNN, §2.7 Siamese; models/pairs.py) take (abnormality, baseline)
pairs stacked as two channels, so they need config.data.inputs='image+baseline'; they are a
separate table because their input differs from every model of MODELS.
"""

import functools

from mammo_jax.models.pairs import DualCNN, SiameseCNN
from mammo_jax.models.scratch import ScratchCNN
from mammo_jax.models.vgg16 import VGG16, VGG16Classifier

_C2 = (32, 64)
_C3 = (32, 64, 128)
_C4 = (32, 64, 128, 256)
_exp = functools.partial(ScratchCNN, num_outputs=1)
_stem5 = dict(first_kernel=5, first_stride=2)

MODELS = {
    'scratch2_exp0': _exp(filters=_C2, dense=16, dropout=0.0),
    'scratch2_exp1': _exp(filters=_C2, dense=16),
    'scratch2_exp2': _exp(filters=_C2, dense=16),
    'scratch2_exp3': _exp(filters=_C3, dense=32),
    'scratch2_exp4': _exp(filters=_C3, dense=48),
    'scratch2_exp5': _exp(filters=_C3, dense=48),
    'scratch2_exp6': _exp(filters=_C4, dense=48),
    'scratch2_exp7': _exp(filters=_C3, dense=48, **_stem5),
    'scratch2_exp8': _exp(filters=_C3, dense=48),
    'scratch2_exp9': _exp(filters=_C4, dense=48),
    'scratch2_exp10': _exp(filters=_C4, dense=48, batch_norm=True, **_stem5),
    'scratch2_exp11': _exp(filters=_C4, dense=48, batch_norm=True, bn_momentum=0.001,
                           **_stem5),
    'scratch4_m1': ScratchCNN(filters=_C4, dense=48, num_outputs=4),
    'scratch4_m2': ScratchCNN(filters=(64, 128, 256), dense=64, num_outputs=4),
    'scratch4_m3': ScratchCNN(filters=(64, 128, 256, 512), dense=64, num_outputs=4),
    'benmal': ScratchCNN(filters=(64, 128, 256), dense=64, num_outputs=1),
}

PAIR_MODELS = {
    'dual': DualCNN(),
    'siamese': SiameseCNN(),
}


def inputs_of(name: str) -> str:
  """The config.data.inputs (input_pipeline.INPUTS) that model `name` (or vgg16) is fed."""
  return 'image+baseline' if name in PAIR_MODELS else 'image'


def get_model(name: str, **overrides):
  """The registered module `name`, with attributes replaced by `overrides`."""
  registry = {**MODELS, **PAIR_MODELS}
  if name not in registry:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(sorted(registry))}')
  return registry[name].clone(**overrides) if overrides else registry[name]
