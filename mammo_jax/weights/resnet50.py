"""ResNet50's pretrained weights: name tables, converters, official files, the port.

Sources (`FORMATS`), all to the names of `mammo_jax.models.resnet.ResNet50`:
- `keras_h5`: Keras's `resnet50_weights_tf_dim_ordering_tf_kernels[_notop].h5` (tf.keras
  names, `conv2_block1_1_conv/kernel:0`), the older keras-applications files (`conv1`,
  `bn_conv1`, `res2a_branch2a`, `bn2a_branch2a`, `fc1000`; Keras 1's `running_std` holds the
  variance) or any legacy Keras save of a ResNet50. Variant 'keras' (v1).
- `keras3`: a Keras 3 `.weights.h5` or `.keras` archive of keras.applications.ResNet50.
- `torchvision`: `resnet50-0676ba61.pth` (IMAGENET1K_V1) or `resnet50-11ad3fa6.pth`
  (IMAGENET1K_V2), both the v1.5 architecture: variant 'torchvision'. Needs PyTorch.

A port is `{'params': ..., 'batch_stats': ...}`: convolutions `{kernel[, bias]}`, BatchNorm
`{scale, bias}` in params and its moving `{mean, var}` in batch_stats, `predictions` when the
file has the ImageNet top. Conversion is pure (numpy in, numpy out); names and shapes are
checked against the model itself (one definition of the architecture).
"""

import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

import mammo_jax
from mammo_jax.models import resnet as resnet_model
from mammo_jax.weights import download
from mammo_jax.weights import merge
from mammo_jax.weights import readers
from mammo_jax.weights import store

ARCHITECTURE = 'resnet50'
FORMATS = ('keras_h5', 'keras3', 'torchvision')
VARIANT = {'keras_h5': 'keras', 'keras3': 'keras', 'torchvision': 'torchvision'}
PORT_VERSION = 1  # bump when the conversion or the sidecar changes meaning
PORT_COMMAND = 'python -m mammo_jax.port_weights SRC OUT.msgpack'

STEMS = resnet_model.layer_stems()  # conv1, conv2_block1_0, conv2_block1_1, ...
TOP = resnet_model.TOP_NAME


def _stem_numbers(stem: str) -> tuple[int, int, int]:
  """conv3_block2_1 -> (3, 2, 1)."""
  return tuple(int(g) for g in re.fullmatch(r'conv(\d)_block(\d)_(\d)', stem).groups())


def _old_keras_stem(stem: str) -> tuple[str, str]:
  """(conv, bn) names of keras-applications' first ResNet50: res2a_branch2a, bn2a_branch2a."""
  if stem == 'conv1':
    return 'conv1', 'bn_conv1'
  stage, block, branch = _stem_numbers(stem)
  # The projection is branch1; the bottleneck's three convolutions branch2a, 2b, 2c.
  suffix = f'{stage}{"abcdef"[block - 1]}_branch{("1", "2a", "2b", "2c")[branch]}'
  return f'res{suffix}', f'bn{suffix}'


def _torch_stem(stem: str) -> tuple[str, str]:
  """(conv, bn) module names of torchvision's resnet50: layer1.0.conv1, layer1.0.bn1."""
  if stem == 'conv1':
    return 'conv1', 'bn1'
  stage, block, branch = _stem_numbers(stem)
  prefix = f'layer{stage - 1}.{block - 1}'
  if branch == 0:
    return f'{prefix}.downsample.0', f'{prefix}.downsample.1'
  return f'{prefix}.conv{branch}', f'{prefix}.bn{branch}'


# Our layer name -> keras-applications' old name / torchvision's module.
OLD_KERAS_NAMES = {TOP: 'fc1000', **{f'{s}_{kind}': name for s in STEMS
                                     for kind, name in zip(('conv', 'bn'), _old_keras_stem(s))}}
TORCHVISION_KEYS = {TOP: 'fc', **{f'{s}_{kind}': name for s in STEMS
                                  for kind, name in zip(('conv', 'bn'), _torch_stem(s))}}


def _keras_layer_order(kind: str) -> tuple[str, ...]:
  """Our `kind` ('conv', 'bn') layers in keras.applications' model.layers order, which is how
  Keras 3 numbers unnamed layers (conv2d_3): a projection block's _1, _2, then _0, then _3."""
  stems = ['conv1'] + [stem for stage, _, n in resnet_model.STAGES for b in range(1, n + 1)
                       for stem in sorted(resnet_model.block_names(stage, b),
                                          key=lambda s: {'0': 2.5}.get(s[-1], int(s[-1])))]
  return tuple(f'{stem}_{kind}' for stem in stems)


_KERAS3_CLASS_ORDER = (('conv2d', _keras_layer_order('conv')),
                       ('batch_normalization', _keras_layer_order('bn')), ('dense', (TOP,)))
_KERAS_WEIGHTS = {**readers.KERAS_WEIGHT_NAMES,
                  'moving_variance': ('moving_variance', 'running_std')}
_BN_KERAS = {'gamma': ('params', 'scale'), 'beta': ('params', 'bias'),
             'moving_mean': ('batch_stats', 'mean'), 'moving_variance': ('batch_stats', 'var')}
_BN_TORCH = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
             'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}

_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/resnet/'
# The md5s are those keras/src/applications/resnet.py passes to get_file; torch.hub checks
# the SHA-256 prefix in a torchvision file's name.
OFFICIAL = {
    'keras': download.Official(_KERAS_URL + 'resnet50_weights_tf_dim_ordering_tf_kernels.h5',
                               'keras_h5', md5='2cb95161c43110f7111970584f804107'),
    'keras_notop': download.Official(
        _KERAS_URL + 'resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5', 'keras_h5',
        md5='4d473c1dd8becc155b73f8504c6f6626'),
    'torchvision': download.Official('https://download.pytorch.org/models/resnet50-0676ba61.pth',
                                     'torchvision', sha256_prefix='0676ba61'),
    'torchvision_v2': download.Official(
        'https://download.pytorch.org/models/resnet50-11ad3fa6.pth', 'torchvision',
        sha256_prefix='11ad3fa6'),
}

Variables = dict[str, dict[str, dict[str, np.ndarray]]]


# ----------------------------------------------------------------------------------------
# Recognition and conversion (pure).


def recognises(path: str) -> bool:
  """Whether `path` is a ResNet50 source file, by its layer names or state-dict keys."""
  fmt, names = readers.entry_names(path)
  return _recognises_names(fmt, set(names))


def _recognises_names(fmt: str, names: set[str]) -> bool:
  if fmt == 'torch':  # resnet101/152 have a seventh layer3 block, resnet18/34 no conv3
    return {'layer3.5.conv3.weight', 'layer4.2.conv3.weight'} <= names and (
        'layer3.6.conv1.weight' not in names)
  if {'conv4_block6_3_conv', 'conv5_block3_3_bn'} <= names:
    return 'conv4_block7_1_conv' not in names
  if {'res4f_branch2c', 'bn5c_branch2c'} <= names:
    return True
  # A Keras 3 file without recorded names: ResNet50's 53 convolutions, 53 batch norms.
  return fmt == 'keras3' and all(
      sum(re.fullmatch(rf'{c}(_\d+)?', n) is not None for n in names) == 53
      for c in ('conv2d', 'batch_normalization'))


def convert_keras(weights: Mapping[str, Mapping[str, np.ndarray]]) -> Variables:
  """Keras ResNet50 weights `{layer: {kernel, bias, gamma, ...}}`, either naming -> ours.

  Keras's layouts are ours (HWIO kernels, [in, out] dense kernels).
  """
  if 'res2a_branch2a' in weights:
    renamed = {v: k for k, v in OLD_KERAS_NAMES.items()}
    weights = {renamed.get(name, name): layer for name, layer in weights.items()}
  out = {'params': {}, 'batch_stats': {}}
  for name, layer in weights.items():
    layer = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in layer.items()}
    if name.endswith('_bn'):
      if set(layer) != set(_BN_KERAS):
        raise ValueError(f'Keras layer {name} has weights {sorted(layer)}, expected '
                         f'{", ".join(_BN_KERAS)}')
      for weight, (collection, ours) in _BN_KERAS.items():
        out[collection].setdefault(name, {})[ours] = layer[weight]
    else:
      out['params'][name] = layer
  return check_variables(out, 'keras')


def convert_torchvision(state_dict: Mapping[str, np.ndarray]) -> Variables:
  """torchvision resnet50 state dict (numpy values) -> ours: OIHW -> HWIO, fc [out, in] ->
  [in, out]; BatchNorm's num_batches_tracked is dropped. No `fc.*` gives a no-top port."""
  out = {'params': {}, 'batch_stats': {}}
  used = set()
  has_top = any(key.startswith('fc.') for key in state_dict)
  for name, module in TORCHVISION_KEYS.items():
    if name == TOP and not has_top:
      continue
    keys = (tuple(_BN_TORCH) + ('num_batches_tracked',) if name.endswith('_bn') else
            ('weight', 'bias') if name == TOP else ('weight',))
    present = {k: state_dict[f'{module}.{k}'] for k in keys if f'{module}.{k}' in state_dict}
    used.update(f'{module}.{k}' for k in present)
    if name.endswith('_bn'):
      for weight, (collection, ours) in _BN_TORCH.items():
        if weight in present:
          out[collection].setdefault(name, {})[ours] = np.asarray(present[weight], np.float32)
    elif 'weight' in present:
      w = np.asarray(present['weight'], np.float32)
      layer = {'kernel': np.ascontiguousarray(w.T if name == TOP else
                                              w.transpose(2, 3, 1, 0))}
      if 'bias' in present:
        layer['bias'] = np.asarray(present['bias'], np.float32)
      out['params'][name] = layer
  extra = sorted(set(state_dict) - used)
  if extra:
    raise ValueError(f'torchvision keys do not match ResNet50:\n  unexpected: '
                     f'{", ".join(extra[:20])}{" ..." if len(extra) > 20 else ""}')
  return check_variables(out, 'torchvision')


def check_variables(variables: Variables, variant: str) -> Variables:
  """variables if their names and shapes are those of ResNet50(variant); else ValueError
  listing every difference (the top's class count is the file's)."""
  top = variables['params'].get(TOP, {}).get('kernel')
  model = resnet_model.ResNet50(variant=variant, include_top=top is not None,
                                num_classes=top.shape[-1] if top is not None else 1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  try:
    for collection in ('params', 'batch_stats'):
      merge.merge_params(shapes[collection], variables[collection])
  except merge.MergeError as e:
    raise ValueError(f'weights do not have {variant} ResNet50 names and shapes '
                     f'({collection}):\n{str(e).split(chr(10), 1)[1]}') from None
  return variables


# ----------------------------------------------------------------------------------------
# Porting and loading.


def port_file(path: str, format: str = 'auto',  # pylint: disable=redefined-builtin
              include_top: bool | None = None) -> tuple[Variables, dict]:
  """Reads and converts a source file: (variables, metadata for the sidecar).

  include_top: None keeps what the file has; False drops `predictions`; True requires it.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  fmt = readers.detect_format(path) if format == 'auto' else format
  fmt = 'torchvision' if fmt == 'torch' else fmt
  if fmt == 'keras_h5':
    variables = convert_keras(readers.read_keras_h5(path, _KERAS_WEIGHTS))
  elif fmt == 'keras3':
    variables = convert_keras(readers.read_keras3(path, _KERAS3_CLASS_ORDER))
  elif fmt == 'torchvision':
    variables = convert_torchvision(readers.read_torch(path))
  elif fmt == 'msgpack':
    raise ValueError(f'{path} is already a ported file; load it with load_params')
  else:
    raise ValueError(f'unknown format {format!r}; expected auto or one of {FORMATS}')
  if include_top is False:
    variables['params'].pop(TOP, None)
  elif include_top and TOP not in variables['params']:
    raise ValueError(f'{path} has no top (predictions / fc1000 / fc)')
  sha256, md5 = store.file_digests(path)
  top = variables['params'].get(TOP)
  return variables, {
      'architecture': ARCHITECTURE,
      'variant': VARIANT[fmt],
      'format': fmt,
      'source': os.path.basename(path),
      'source_sha256': sha256,
      'source_md5': md5,
      'include_top': top is not None,
      'preprocess': resnet_model.PREPROCESS[VARIANT[fmt]],
      'num_classes': int(top['kernel'].shape[1]) if top else None,
      'num_params': int(sum(a.size for a in jax.tree.leaves(variables))),
      'port_version': PORT_VERSION,
      'mammo_jax_version': mammo_jax.__version__,
  }


def load_params(path: str) -> tuple[Variables, dict]:
  """A ported ResNet50 file (store.load_params), its architecture, names and shapes checked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  variables, metadata = store.load_params(path, needs='architecture, variant and '
                                          'preprocessing', port_command=PORT_COMMAND)
  if metadata.get('architecture') != ARCHITECTURE or set(variables) != {'params',
                                                                          'batch_stats'}:
    raise ValueError(f'{path} holds {metadata.get("architecture") or "vgg16"} weights, not '
                     f'ResNet50 ones; port a ResNet50 file with {PORT_COMMAND}')
  return check_variables(variables, metadata['variant']), metadata


def load_pretrained(spec: str, cache_dir: str | None = None) -> tuple[Variables, dict]:
  """config.model.pretrained -> (variables, metadata): a ported .msgpack, a source file
  (converted in memory) or an OFFICIAL name (downloaded, checked, ported and cached)."""
  return download.load_spec(spec, official=OFFICIAL, family='resnet50', label='ResNet50',
                            cache_dir=cache_dir, port=port_file, load=load_params,
                            port_command=PORT_COMMAND, missing_message=missing_message)


def missing_message(path: str) -> str:
  """Where the official files are and how to port them (for a missing weights path)."""
  urls = '\n'.join(f'  {name:15s} {source.url}' for name, source in OFFICIAL.items())
  return (f'ResNet50 weights not found: {path}\nDownload an official file:\n{urls}\n'
          f'port it with\n  {PORT_COMMAND}\nand set config.model.pretrained=OUT.msgpack (a '
          'source file works too, converted at start-up). With internet access, '
          f'config.model.pretrained={"|".join(OFFICIAL)} downloads, verifies and caches it.')
