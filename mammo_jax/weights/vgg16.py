"""VGG16's pretrained weights: name tables, converters, official files, the port.

Sources (`FORMATS`):
- `keras_h5`: keras-applications' `vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`, the
  files docs/REFERENCE_STUDY.md §2.4 loads, or any legacy Keras HDF5 weights or full-model
  save of a VGG16 (see readers.read_keras_h5).
- `keras3`: a Keras 3 `model.save_weights(....weights.h5)` file or a `.keras` archive.
- `torchvision`: `vgg16-397923af.pth` or any state dict with torchvision's VGG16 keys. Needs
  PyTorch (`pip install torch==2.13.0`, the `port` extra).

The parameters are `{layer: {'kernel', 'bias'}}` keyed by Keras's layer names, the names of
`mammo_jax.models.vgg16.VGG16`. Conversion is pure (`convert_keras`, `convert_torchvision`:
numpy in, numpy out, explicit name tables); reading, storing and downloading are the
generic modules of this package. The sidecar says how inputs must be preprocessed and
whether the top needs torchvision's 7x7 average pool, which the weights alone do not tell.
"""

import math
import os
import re
from collections.abc import Mapping

import numpy as np

import mammo_jax
from mammo_jax.models import vgg16 as vgg16_model
from mammo_jax.weights import download
from mammo_jax.weights import readers
from mammo_jax.weights import store

FORMATS = ('keras_h5', 'keras3', 'torchvision')
PORT_VERSION = 1  # bump when the conversion or the sidecar changes meaning
PORT_COMMAND = 'python -m mammo_jax.port_vgg16 SRC OUT.msgpack'

# Keras's layer names, which are the model's (one definition, in models/vgg16.py).
CONV_LAYERS = vgg16_model.CONV_NAMES
TOP_LAYERS = vgg16_model.TOP_NAMES
TOP_PATTERN = vgg16_model.TOP_PATTERN

# (in, out) channels of each 3x3 convolution.
_CONV_CHANNELS = dict(zip(CONV_LAYERS, (
    (3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512))))
_FEATURES = 512  # channels of block5_pool, fc1's input per spatial position

# Keras layer -> torchvision module. torchvision's `features` Sequential interleaves ReLUs
# and pools, hence the gaps; `classifier` is Linear, ReLU, Dropout, Linear, ReLU, Dropout,
# Linear.
TORCHVISION_KEYS = {
    'block1_conv1': 'features.0', 'block1_conv2': 'features.2',
    'block2_conv1': 'features.5', 'block2_conv2': 'features.7',
    'block3_conv1': 'features.10', 'block3_conv2': 'features.12',
    'block3_conv3': 'features.14',
    'block4_conv1': 'features.17', 'block4_conv2': 'features.19',
    'block4_conv3': 'features.21',
    'block5_conv1': 'features.24', 'block5_conv2': 'features.26',
    'block5_conv3': 'features.28',
    'fc1': 'classifier.0', 'fc2': 'classifier.3', 'predictions': 'classifier.6',
}

# Keras 3 names a layer's weights by its class and creation order (`layers/conv2d_3`); in a
# VGG16 built alone that order is the layer order below.
_KERAS3_CLASS_ORDER = (('conv2d', CONV_LAYERS), ('dense', TOP_LAYERS))
_KERAS_WEIGHTS = {k: readers.KERAS_WEIGHT_NAMES[k] for k in ('kernel', 'bias')}

# Inputs the weights expect (see preprocessing in the sidecar). 'caffe' is Keras's
# vgg16.preprocess_input: BGR in 0..255 minus the ImageNet means [103.939, 116.779, 123.68];
# 'torch' is torchvision's: RGB scaled to [0, 1], minus mean [0.485, 0.456, 0.406], divided
# by std [0.229, 0.224, 0.225].
PREPROCESS = {'keras_h5': 'caffe', 'keras3': 'caffe', 'torchvision': 'torch'}

_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
# The md5s are those keras/src/applications/vgg16.py passes to get_file.
OFFICIAL = {
    'keras': download.Official(
        _KERAS_URL + 'vgg16_weights_tf_dim_ordering_tf_kernels.h5', 'keras_h5',
        md5='64373286793e3c8b2b4e3219cbf3544b'),
    'keras_notop': download.Official(
        _KERAS_URL + 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5', 'keras_h5',
        md5='6d6bbae143d832006294945121d1f1fc'),
    'torchvision': download.Official('https://download.pytorch.org/models/vgg16-397923af.pth',
                                     'torchvision', sha256_prefix='397923af'),
}

Params = dict[str, dict[str, np.ndarray]]


# ----------------------------------------------------------------------------------------
# Conversion (pure).


def recognises(path: str) -> bool:
  """Whether `path` is a VGG16 source file, by its layer names or state-dict keys (VGG19 has
  a 16th convolution: features.34, block5_conv4)."""
  fmt, names = readers.entry_names(path)
  names = set(names)
  if fmt == 'torch':
    return {'features.0.weight', 'features.28.weight'} <= names and (
        'features.30.weight' not in names)
  if 'block5_conv3' in names:
    return 'block5_conv4' not in names
  # A Keras 3 file without recorded names: 13 convolutions and no other layer kind but dense.
  convs = {n for n in names if re.fullmatch(r'conv2d(_\d+)?', n)}
  return fmt == 'keras3' and len(convs) == 13 and all(
      n in convs or re.fullmatch(r'dense(_\d+)?', n) for n in names)


def convert_keras(weights: Mapping[str, Mapping[str, np.ndarray]]) -> Params:
  """Keras VGG16 weights `{layer: {'kernel', 'bias'}}` -> our params (float32 copies).

  Keras's layout is ours (HWIO conv kernels, [in, out] dense kernels, NHWC flatten), so this
  only checks names and shapes. The top is all of fc1/fc2/predictions or none of them.
  """
  has_top = any(name in weights for name in TOP_LAYERS)
  names = CONV_LAYERS + (TOP_LAYERS if has_top else ())
  _check_names(set(weights), names, 'Keras layers')
  params = {}
  for name in names:
    layer = weights[name]
    if set(layer) != {'kernel', 'bias'}:
      raise ValueError(f'Keras layer {name} has weights {sorted(layer)}, expected kernel and '
                       'bias')
    params[name] = {k: np.ascontiguousarray(layer[k], dtype=np.float32)
                    for k in ('kernel', 'bias')}
  check_params(params)
  return params


def convert_torchvision(state_dict: Mapping[str, np.ndarray]) -> Params:
  """torchvision VGG16 state dict (numpy values) -> our params.

  Conv weights OIHW -> HWIO; linear weights [out, in] -> [in, out]. torchvision flattens the
  pooled features in C,H,W order and we flatten NHWC in H,W,C order, so fc1's input rows are
  permuted here, once; the pool size H=W is fc1's width / 512 (7x7 in torchvision). The
  classifier may be absent (a features-only state dict gives a no-top model).
  """
  has_top = any(key.startswith('classifier.') for key in state_dict)
  names = CONV_LAYERS + (TOP_LAYERS if has_top else ())
  expected = [f'{TORCHVISION_KEYS[n]}.{p}' for n in names for p in ('weight', 'bias')]
  _check_names(set(state_dict), expected, 'torchvision keys')
  params = {}
  for name in names:
    key = TORCHVISION_KEYS[name]
    w = np.asarray(state_dict[f'{key}.weight'], dtype=np.float32)
    b = np.asarray(state_dict[f'{key}.bias'], dtype=np.float32)
    if name in CONV_LAYERS:
      if w.ndim != 4:
        raise ValueError(f'{key}.weight has shape {w.shape}, expected a 4-d conv weight')
      kernel = w.transpose(2, 3, 1, 0)
    elif name == 'fc1':
      side = torchvision_pool_side(w.shape[1])
      # [out, C*H*W] -> [H, W, C, out] -> [H*W*C, out]: one copy.
      kernel = np.ascontiguousarray(
          w.reshape(-1, _FEATURES, side, side).transpose(2, 3, 1, 0)).reshape(-1, w.shape[0])
    else:
      kernel = w.T
    params[name] = {'kernel': np.ascontiguousarray(kernel), 'bias': np.ascontiguousarray(b)}
  check_params(params)
  return params


def torchvision_pool_side(fc1_inputs: int) -> int:
  """The side of torchvision's square AdaptiveAvgPool2d output, from fc1's input width."""
  side = math.isqrt(fc1_inputs // _FEATURES)
  if side * side * _FEATURES != fc1_inputs:
    raise ValueError(f'fc1 takes {fc1_inputs} inputs, not 512*H*H for a square pool')
  return side


def check_params(params: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """Raises ValueError listing every shape that does not fit VGG16 (layer/param: shape)."""
  bad = []

  def expect(name, param, shape):
    got = tuple(np.shape(params[name][param]))
    if got != shape:
      bad.append(f'{name}/{param}: got {got}, expected {shape}')

  for name in CONV_LAYERS:
    cin, cout = _CONV_CHANNELS[name]
    expect(name, 'kernel', (3, 3, cin, cout))
    expect(name, 'bias', (cout,))
  if 'fc1' in params:
    fc1 = np.shape(params['fc1']['kernel'])
    units = fc1[-1] if len(fc1) == 2 else -1
    classes = np.shape(params['predictions']['kernel'])[-1]
    if len(fc1) != 2 or fc1[0] % _FEATURES:
      bad.append(f'fc1/kernel: got {fc1}, expected (512*H*W, units)')
    expect('fc1', 'bias', (units,))
    expect('fc2', 'kernel', (units, units))
    expect('fc2', 'bias', (units,))
    expect('predictions', 'kernel', (units, classes))
    expect('predictions', 'bias', (classes,))
  if bad:
    raise ValueError('weights do not have VGG16 shapes:\n  ' + '\n  '.join(bad))


def _check_names(got: set[str], expected, what: str) -> None:
  missing = [n for n in expected if n not in got]
  extra = sorted(got - set(expected))
  if missing or extra:
    lines = [f'{what} do not match VGG16:']
    if missing:
      lines.append(f'  missing: {", ".join(missing)}')
    if extra:
      lines.append(f'  unexpected: {", ".join(extra)}')
    raise ValueError('\n'.join(lines))


# ----------------------------------------------------------------------------------------
# Porting and loading.


def port_file(path: str, format: str = 'auto',  # pylint: disable=redefined-builtin
              include_top: bool | None = None) -> tuple[Params, dict]:
  """Reads and converts a source file: (params, metadata for the sidecar).

  include_top: None keeps what the file has; False drops fc1/fc2/predictions; True requires
  them.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  if format == 'auto':
    fmt = readers.detect_format(path)
    fmt = 'torchvision' if fmt == 'torch' else fmt  # the one torch layout of VGG16
  else:
    fmt = format
  if fmt == 'keras_h5':
    params = convert_keras(readers.read_keras_h5(path, _KERAS_WEIGHTS))
  elif fmt == 'keras3':
    params = convert_keras(readers.read_keras3(path, _KERAS3_CLASS_ORDER))
  elif fmt == 'torchvision':
    params = convert_torchvision(readers.read_torch(path))
  elif fmt == 'msgpack':
    raise ValueError(f'{path} is already a ported params file; load it with load_params')
  else:
    raise ValueError(f'unknown format {format!r}; expected auto or one of {FORMATS}')
  if include_top is False:
    params = {k: v for k, v in params.items() if k not in TOP_LAYERS}
  elif include_top and 'fc1' not in params:
    raise ValueError(f'{path} has no top (fc1, fc2, predictions)')
  sha256, md5 = store.file_digests(path)
  return params, _metadata(params, fmt, os.path.basename(path), sha256, md5)


def _metadata(params: Params, fmt: str, source: str, sha256: str, md5: str) -> dict:
  top = 'fc1' in params
  top_pool = None
  if top and fmt == 'torchvision':
    side = torchvision_pool_side(params['fc1']['kernel'].shape[0])
    top_pool = [side, side]
  return {
      'architecture': 'vgg16',
      'format': fmt,
      'source': source,
      'source_sha256': sha256,
      'source_md5': md5,
      'include_top': top,
      'preprocess': PREPROCESS[fmt],
      'top_pool': top_pool,  # VGG16(top_pool=...): None, or torchvision's adaptive pool
      'fc_units': int(params['fc1']['kernel'].shape[1]) if top else None,
      'num_classes': int(params['predictions']['kernel'].shape[1]) if top else None,
      'num_params': int(sum(a.size for layer in params.values() for a in layer.values())),
      'port_version': PORT_VERSION,
      'mammo_jax_version': mammo_jax.__version__,
  }


def load_params(path: str, require_metadata: bool = True) -> tuple[Params, dict]:
  """A ported VGG16 file (store.load_params), its layer names and shapes checked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  params, metadata = store.load_params(path, require_metadata,
                                       needs='preprocessing and top_pool',
                                       port_command=PORT_COMMAND.replace('.msgpack', ''))
  _check_names(set(params), CONV_LAYERS + (TOP_LAYERS if 'fc1' in params else ()),
               f'{path}: layers')
  check_params(params)
  return params, metadata


def load_pretrained(spec: str, cache_dir: str | None = None) -> tuple[Params, dict]:
  """config.model.pretrained -> (params, metadata).

  spec: a ported .msgpack (with its sidecar); a source file (.h5, .weights.h5, .keras, .pth),
  converted in memory; or 'keras', 'keras_notop' or 'torchvision': the official file,
  downloaded, checked against its publisher's digest, ported and cached in `cache_dir`
  (default download.default_cache_dir()) for next time.
  """
  return download.load_spec(spec, official=OFFICIAL, family='vgg16', label='VGG16',
                            cache_dir=cache_dir, port=port_file, load=load_params,
                            port_command=PORT_COMMAND, missing_message=missing_message)


def missing_message(path: str) -> str:
  """Where the official files are and how to port them (for a missing weights path)."""
  return (
      f'VGG16 weights not found: {path}\n'
      'Download an official file:\n'
      f'  Keras, no top (the study\'s base): {OFFICIAL["keras_notop"].url}\n'
      f'  Keras, with the ImageNet top:     {OFFICIAL["keras"].url}\n'
      f'  torchvision:                      {OFFICIAL["torchvision"].url}\n'
      'port it with\n'
      f'  {PORT_COMMAND}\n'
      'and set config.model.pretrained=OUT.msgpack (a source file works too, converted at '
      'start-up). With internet access, config.model.pretrained=keras_notop (or keras, '
      'torchvision) downloads, verifies and caches the file.')
