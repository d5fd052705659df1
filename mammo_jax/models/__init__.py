"""Model registry: config.model.name -> the module, what it is fed, and who loads its weights.

One table, REGISTRY, holds every model the trainer can build; `create_model(config.model,
num_outputs, ...)` builds any of them, so the trainer special-cases no architecture. An entry
says:
  template     the linen module with its architecture (attributes fixed by the study);
  from_config  attributes read from config.model (VGG16's head: model.fc, model.dropout);
  head_follows_task  the head is built for the task's class count (VGG16); otherwise the
               architecture fixes it and a task that needs another count is refused;
  inputs       the config.data.inputs it is fed (pair models: 'image+baseline');
  preprocess   the model.preprocess values it accepts;
  family       the module that owns the family's pretrained weights: its `check_pretrained(spec)`
               and `load(variables, spec, ...)` serve config.model.pretrained (big_vision's
               `model_mod.load`); None when the family has no weights to load.

Adding a model family: a module in models/, a converter in mammo_jax/weights/, one entry here.

The scratch family follows docs/REFERENCE_STUDY.md §2.1 (2-class Exps 0-11), §2.2 (4-class
M1-M3) and §2.3 (benign vs malignant); optimiser, L2 and augmentation differences between
experiments (Exp 5's LR decay, Exp 8's Adam, Exp 9's L2) are config, not architecture. The
pair models (§2.6 Dual CNN, §2.7 Siamese; models/pairs.py) take (abnormality, baseline) pairs
stacked as two channels. VGG16 (§2.4; models/vgg16.py) is the ImageNet base with the study's
head; ResNet50 (§2.5; models/resnet.py) the report's feature extractor, in Keras's and
torchvision's variants; MobileNet v1 (§2.5; models/mobilenet.py) the report's other one.
The whole-image models (models/whole.py) are Shen et al.'s: a patch classifier's backbone on the
whole mammogram with Shen's top and a 2-way softmax (docs/SHEN_2019.md).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable

import flax.linen as nn

from mammo_jax.models.mobilenet import MobileNet, MobileNetClassifier
from mammo_jax.models.pairs import DualCNN, SiameseCNN
from mammo_jax.models.resnet import ResNet50, ResNet50Classifier
from mammo_jax.models.scratch import ScratchCNN
from mammo_jax.models.vgg16 import VGG16, VGG16Classifier
from mammo_jax import preprocessing
from mammo_jax.models import whole
from mammo_jax.models.whole import WholeImageClassifier


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  template: nn.Module
  from_config: Callable[[object], dict] = lambda model_config: {}
  head_follows_task: bool = False
  inputs: str = 'image'
  preprocess: tuple[str, ...] = preprocessing.PREPROCESS_MODES
  family: str | None = None


_C2 = (32, 64)
_C3 = (32, 64, 128)
_C4 = (32, 64, 128, 256)
_exp = functools.partial(ScratchCNN, num_outputs=1)
_stem5 = dict(first_kernel=5, first_stride=2)
# 'caffe' / 'torch' turn one grey channel into RGB; a pair's two channels are two images.
_pair = functools.partial(ModelEntry, inputs='image+baseline', preprocess=('unit',))


_whole = functools.partial(ModelEntry, from_config=lambda m: {'dropout': m.dropout},
                           preprocess=('shen', 'caffe'), family='mammo_jax.models.resnet')


def _resnet_head(model_config) -> dict:
  """The report's ResNet50 head has no FC layer and no dropout unless a config adds them;
  training from random initialisation may set the BatchNorm momentum and zero-init the
  residual branches (configs/shen_patch.py's demo)."""
  return {'fc': model_config.get('fc', 0), 'dropout': model_config.get('dropout', 0.0),
          'bn_momentum': model_config.get('bn_momentum', 0.0),
          'zero_init_residual': model_config.get('zero_init_residual', False)}


REGISTRY: dict[str, ModelEntry] = {
    'scratch2_exp0': ModelEntry(_exp(filters=_C2, dense=16, dropout=0.0)),
    'scratch2_exp1': ModelEntry(_exp(filters=_C2, dense=16)),
    'scratch2_exp2': ModelEntry(_exp(filters=_C2, dense=16)),
    'scratch2_exp3': ModelEntry(_exp(filters=_C3, dense=32)),
    'scratch2_exp4': ModelEntry(_exp(filters=_C3, dense=48)),
    'scratch2_exp5': ModelEntry(_exp(filters=_C3, dense=48)),
    'scratch2_exp6': ModelEntry(_exp(filters=_C4, dense=48)),
    'scratch2_exp7': ModelEntry(_exp(filters=_C3, dense=48, **_stem5)),
    'scratch2_exp8': ModelEntry(_exp(filters=_C3, dense=48)),
    'scratch2_exp9': ModelEntry(_exp(filters=_C4, dense=48)),
    'scratch2_exp10': ModelEntry(_exp(filters=_C4, dense=48, batch_norm=True, **_stem5)),
    'scratch2_exp11': ModelEntry(_exp(filters=_C4, dense=48, batch_norm=True,
                                      bn_momentum=0.001, **_stem5)),
    'scratch4_m1': ModelEntry(ScratchCNN(filters=_C4, dense=48, num_outputs=4)),
    'scratch4_m2': ModelEntry(ScratchCNN(filters=(64, 128, 256), dense=64, num_outputs=4)),
    'scratch4_m3': ModelEntry(ScratchCNN(filters=(64, 128, 256, 512), dense=64, num_outputs=4)),
    'benmal': ModelEntry(ScratchCNN(filters=(64, 128, 256), dense=64, num_outputs=1)),
    'dual': _pair(DualCNN()),
    'siamese': _pair(SiameseCNN()),
    'vgg16': ModelEntry(
        VGG16Classifier(num_outputs=1),
        from_config=lambda m: {'fc': m.fc, 'dropout': m.dropout,
                               'pooling': m.get('pooling', 'flatten')},
        head_follows_task=True, preprocess=('caffe', 'torch', 'shen', 'standardize'),
        family='mammo_jax.models.vgg16'),
    'resnet50': ModelEntry(
        ResNet50Classifier(num_outputs=1, variant='keras'), from_config=_resnet_head,
        head_follows_task=True, preprocess=('caffe', 'shen', 'standardize'),
        family='mammo_jax.models.resnet'),
    'resnet50_torchvision': ModelEntry(
        ResNet50Classifier(num_outputs=1, variant='torchvision'), from_config=_resnet_head,
        head_follows_task=True, preprocess=('torch',), family='mammo_jax.models.resnet'),
    'mobilenet': ModelEntry(
        MobileNetClassifier(num_outputs=1),
        from_config=lambda m: {'alpha': m.alpha, 'fc': m.fc, 'dropout': m.dropout,
                               'input_size': m.input_size or None},
        head_follows_task=True, preprocess=('tf',), family='mammo_jax.models.mobilenet'),
    # Whole mammograms (models/whole.py): Shen's ResNet50 + [512-512-1024]x2 and VGG16 + 512x1,
    # and a small scratch backbone for CPU demos.
    'whole_resnet50': _whole(WholeImageClassifier(backbone='resnet50', top_kind='resnet')),
    'whole_vgg16': _whole(WholeImageClassifier(backbone='vgg16', top_kind='vgg',
                                               top_blocks=whole.VGG_TOP),
                          preprocess=('shen', 'caffe', 'torch'), family='mammo_jax.models.vgg16'),
    # The demo's S10 patch classifier: the `small` backbone, pooling and a task-sized Dense, so
    # that its `small` subtree loads into whole_small (configs/whole.py:demo, stage `patch`).
    'small': _whole(WholeImageClassifier(backbone='small', top_blocks=()), head_follows_task=True,
                    preprocess=('shen',), family=None),
    'whole_small': _whole(WholeImageClassifier(backbone='small', top_kind='vgg',
                                               top_blocks=((64, 1),)),
                          preprocess=('shen',), family=None),
}


def get_entry(name: str) -> ModelEntry:
  if name not in REGISTRY:
    raise ValueError(f'unknown model {name!r}; known: {", ".join(sorted(REGISTRY))}')
  return REGISTRY[name]


def get_model(name: str, **overrides) -> nn.Module:
  """The registered module `name` as the study defines it, attributes replaced by overrides."""
  template = get_entry(name).template
  return template.clone(**overrides) if overrides else template


def _accepts(module: nn.Module, field: str) -> bool:
  return field in {f.name for f in dataclasses.fields(module)}


def create_model(model_config, num_outputs: int, task_name: str = '', **common) -> nn.Module:
  """The module config.model describes, with `num_outputs` logits (for task `task_name`).

  `common` holds implementation attributes every family may take (conv_impl, dtype,
  bn_axis_name); a family without such an attribute (VGG16 has no batch norm) ignores it.
  """
  name = model_config.name
  entry = get_entry(name)
  accepted, mode = entry.preprocess, model_config.preprocess
  if mode not in accepted:
    quoted = [repr(p) for p in accepted]
    needs = (f'={quoted[0]}' if len(quoted) == 1 else
             f' {", ".join(quoted[:-1])} or {quoted[-1]}')
    raise ValueError(f'model {name} needs model.preprocess{needs}, not {mode!r}; set '
                     f'--config.model.preprocess={accepted[0]}')
  attrs = {k: v for k, v in common.items() if _accepts(entry.template, k)}
  attrs.update(entry.from_config(model_config))
  if entry.head_follows_task:
    attrs['num_outputs'] = num_outputs
  model = entry.template.clone(**attrs)
  if model.num_outputs != num_outputs:
    raise ValueError(f'model {name} has {model.num_outputs} outputs but task '
                     f'{task_name or "the task"} needs {num_outputs}')
  return model


def inputs_of(name: str) -> str:
  """The config.data.inputs (input_pipeline.INPUTS) that model `name` is fed."""
  return get_entry(name).inputs


# A ported file's sidecar `architecture` -> the models module whose `backbone(metadata)` builds
# its base (models.pretrained).
BACKBONES = {
    'vgg16': 'mammo_jax.models.vgg16',
    'resnet50': 'mammo_jax.models.resnet',
    'mobilenet': 'mammo_jax.models.mobilenet',
}


def pretrained(path: str) -> tuple[nn.Module, dict]:
  """(module, variables) of a ported weights file's backbone, for use outside the trainer.

  `module.apply(variables, x)` on NHWC float32 inputs, preprocessed as the sidecar's
  `preprocess` says, returns the backbone's last feature map (no pooling, no top) in
  inference mode. The architecture is the sidecar's (files without one are VGG16 ports); a
  file's ImageNet top is left out, anything else that does not fit the backbone is an error.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mammo_jax.weights import merge, store  # pylint: disable=g-import-not-at-top
  loaded, metadata = store.load_params(path, port_command='python -m mammo_jax.port_weights')
  architecture = metadata.get('architecture', 'vgg16')
  if architecture not in BACKBONES:
    raise ValueError(f'{path}: architecture {architecture!r} (its sidecar) is not one of '
                     f'{", ".join(BACKBONES)}; port the file again with this version')
  module = importlib.import_module(BACKBONES[architecture]).backbone(metadata)
  loaded = loaded if 'params' in loaded else {'params': loaded}  # VGG16 ports: params only
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  try:
    variables = {c: merge.merge_params(shapes[c], {k: v for k, v in loaded[c].items()
                                                   if k in shapes[c]}) for c in shapes}
  except (KeyError, merge.MergeError) as e:
    raise ValueError(f'{path}: not a {architecture} backbone: {e}') from None
  return module, jax.tree.map(jnp.asarray, variables)


def family_of(name: str):
  """The module owning model `name`'s pretrained weights (load, check_pretrained), or None."""
  family = get_entry(name).family
  return importlib.import_module(family) if family else None


__all__ = ['REGISTRY', 'ModelEntry', 'get_entry', 'get_model', 'create_model', 'inputs_of',
           'family_of', 'pretrained', 'ScratchCNN', 'DualCNN', 'SiameseCNN', 'VGG16',
           'VGG16Classifier', 'ResNet50', 'ResNet50Classifier', 'MobileNet',
           'MobileNetClassifier', 'WholeImageClassifier']
