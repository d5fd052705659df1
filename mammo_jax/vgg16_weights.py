"""Pretrained VGG16 weights: reading Keras and torchvision files, porting, strict merging.

Sources (`FORMATS`):
- `keras_h5`: keras-applications' `vgg16_weights_tf_dim_ordering_tf_kernels[_notop].h5`, the
  files REFERENCE_STUDY.md §2.4 loads, or any legacy Keras HDF5 weights or full-model save
  (root attribute `layer_names`, one group per layer with a `weight_names` attribute; Keras-1
  names such as `block1_conv1_W_1:0`, Keras-2 names such as `block1_conv1/kernel:0`).
- `keras3`: a Keras 3 `model.save_weights(....weights.h5)` file or a `.keras` archive.
- `torchvision`: `vgg16-397923af.pth` or any state dict with torchvision's VGG16 keys. Needs
  PyTorch (`pip install torch==2.13.0`, the `port` extra).

The parameters are `{layer: {'kernel', 'bias'}}` keyed by Keras's layer names, the names of
`mammo_jax.models.vgg16.VGG16`. Conversion is pure (`convert_keras`, `convert_torchvision`:
numpy in, numpy out, explicit name tables); reading, hashing, downloading and writing are
separate. A ported file is flax msgpack of that dict plus a JSON sidecar at `OUT + '.json'`
(`save_params`); the sidecar says how inputs must be preprocessed and whether the top needs
torchvision's 7x7 average pool, which the weights alone do not tell.
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Mapping

import flax.serialization
import flax.traverse_util
import h5py
import numpy as np
from absl import logging
from flax.core import frozen_dict

import mammo_jax
from mammo_jax.models import vgg16 as vgg16_model

FORMATS = ('keras_h5', 'keras3', 'torchvision')
PORT_VERSION = 1  # bump when the conversion or the sidecar changes meaning

# Keras's layer names, which are the model's (one definition, in models/vgg16.py).
CONV_LAYERS = vgg16_model.CONV_NAMES
TOP_LAYERS = vgg16_model.TOP_NAMES
# For merge_params(skip=...): drops the ImageNet top of a with-top file.
TOP_PATTERN = r'^(fc1|fc2|predictions)(/|$)'

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

# Inputs the weights expect (see preprocessing in the sidecar). 'caffe' is Keras's
# vgg16.preprocess_input: BGR in 0..255 minus the ImageNet means [103.939, 116.779, 123.68];
# 'torch' is torchvision's: RGB scaled to [0, 1], minus mean [0.485, 0.456, 0.406], divided
# by std [0.229, 0.224, 0.225].
PREPROCESS = {'keras_h5': 'caffe', 'keras3': 'caffe', 'torchvision': 'torch'}


@dataclasses.dataclass(frozen=True)
class Official:
  """A published weights file: where it is and the digest its publisher checks."""
  url: str
  format: str
  md5: str | None = None  # keras.utils.get_file's file_hash for these files
  sha256_prefix: str | None = None  # torch.hub checks the name's hash suffix this way

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[-1]


_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/vgg16/'
# The md5s are those keras/src/applications/vgg16.py passes to get_file.
OFFICIAL = {
    'keras': Official(_KERAS_URL + 'vgg16_weights_tf_dim_ordering_tf_kernels.h5', 'keras_h5',
                      md5='64373286793e3c8b2b4e3219cbf3544b'),
    'keras_notop': Official(_KERAS_URL + 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5',
                            'keras_h5', md5='6d6bbae143d832006294945121d1f1fc'),
    'torchvision': Official('https://download.pytorch.org/models/vgg16-397923af.pth',
                            'torchvision', sha256_prefix='397923af'),
}

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_ZIP_SIGNATURE = b'PK\x03\x04'
# torch.save's pre-1.6 format (the 2017 torchvision files): pickle protocol 2, then the
# long 0x1950a86a20f9469cfc6c as its first object.
_TORCH_LEGACY_SIGNATURE = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'

_KERNEL_NAME = re.compile(r'(^|[/_])(kernel|W)(_\d+)?(:\d+)?$')
_BIAS_NAME = re.compile(r'(^|[/_])(bias|b)(_\d+)?(:\d+)?$')

Params = dict[str, dict[str, np.ndarray]]


# ----------------------------------------------------------------------------------------
# Conversion (pure).


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
# Readers: a file -> weights keyed by the source's own names, as numpy.


def detect_format(path: str) -> str:
  """'keras_h5', 'keras3', 'torchvision' or 'msgpack' (a ported file), from the content."""
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  with open(path, 'rb') as f:
    head = f.read(len(_TORCH_LEGACY_SIGNATURE))
  if head.startswith(_HDF5_SIGNATURE) or h5py.is_hdf5(path):  # is_hdf5 finds user blocks
    with _open_h5(path) as f:
      return _hdf5_layout(f, path)
  if head.startswith(_ZIP_SIGNATURE):
    try:
      with zipfile.ZipFile(path) as z:
        members = z.namelist()
    except zipfile.BadZipFile as e:
      raise ValueError(f'{path}: a damaged zip file ({e}); download it again') from e
    if 'model.weights.h5' in members:
      return 'keras3'
    if any(m == 'data.pkl' or m.endswith('/data.pkl') for m in members):
      return 'torchvision'
    raise ValueError(f'{path}: a zip file that is neither a torch.save file (no data.pkl) '
                     'nor a .keras archive (no model.weights.h5)')
  if head.startswith(_TORCH_LEGACY_SIGNATURE):
    return 'torchvision'
  # Flax msgpack of a dict: a fixmap (0x80-0x8f) or map16/map32.
  if head and (0x80 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf)):
    return 'msgpack'
  raise ValueError(
      f'{path}: unrecognised file (starts with {head[:8]!r}); expected Keras weights (HDF5 '
      '.h5 or .weights.h5), a torchvision .pth (torch.save) or a ported .msgpack')


def read_keras_h5(path: str) -> Params:
  """Legacy Keras HDF5 weights -> {layer: {'kernel', 'bias'}}, layers with weights only.

  The layer list is the root attribute `layer_names` (under `model_weights` in a full-model
  save); each layer group lists its datasets in `weight_names`. Keras-2 names contain a
  slash, so their datasets sit in subgroups; the name's end tells kernel from bias.
  """
  with _open_h5(path) as f:
    root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
    layer_names = _h5_strings(root, 'layer_names')
    if not layer_names:
      raise ValueError(f'{path}: no layer_names attribute; not legacy Keras HDF5 weights')
    weights = {}
    for layer in layer_names:
      if layer not in root:
        raise ValueError(f'{path}: layer_names lists {layer!r} but the file has no such group')
      group = root[layer]
      layer_weights = {}
      for name in _h5_strings(group, 'weight_names'):
        kind = ('kernel' if _KERNEL_NAME.search(name) else
                'bias' if _BIAS_NAME.search(name) else None)
        if kind is None:
          raise ValueError(f'{path}: layer {layer} has weight {name!r}, neither a kernel '
                           '(..._W, .../kernel) nor a bias (..._b, .../bias)')
        if kind in layer_weights:
          raise ValueError(f'{path}: layer {layer} has more than one {kind} (a nested '
                           'model?); expected the layers of VGG16 itself')
        if name not in group:
          raise ValueError(f'{path}: layer {layer} lists weight {name!r} but has no such '
                           'dataset')
        layer_weights[kind] = np.asarray(group[name])
      if layer_weights:
        weights[layer] = layer_weights
  return weights


def read_keras3(path: str) -> Params:
  """Keras 3 `.weights.h5` (or a `.keras` archive) -> {layer: {'kernel', 'bias'}}.

  Keras 3 stores each layer at `layers/<class name>[_<n>]/vars/{0: kernel, 1: bias}`. Recent
  versions record the layer name as the `vars` group's `name` attribute; without it the
  layers are matched by class and creation order (conv2d..conv2d_12, dense..dense_2), and
  check_params catches a wrong order by shape.
  """
  with contextlib.ExitStack() as stack:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        if 'model.weights.h5' not in z.namelist():
          raise ValueError(f'{path}: a zip file without model.weights.h5; not a .keras file')
        data = io.BytesIO(z.read('model.weights.h5'))
      f = stack.enter_context(h5py.File(data, 'r'))
    else:
      f = stack.enter_context(_open_h5(path))
    layers = f.get('layers')
    if not isinstance(layers, h5py.Group):
      raise ValueError(f'{path}: no layers/ group; not a Keras 3 .weights.h5 file')
    entries = []  # (group name, recorded layer name, [arrays])
    for group_name, group in layers.items():
      variables = group.get('vars')
      if not isinstance(variables, h5py.Group) or not len(variables):
        if isinstance(group.get('layers'), h5py.Group):
          raise ValueError(f'{path}: layers/{group_name} is a nested model; expected the '
                           'layers of VGG16 itself')
        continue  # input, pooling and flatten layers have no weights
      arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
      recorded = variables.attrs.get('name')
      recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
      entries.append((group_name, recorded, arrays))

  if all(recorded for _, recorded, _ in entries):
    named = {recorded: arrays for _, recorded, arrays in entries}
  else:
    by_class = {prefix: [] for prefix, _ in _KERAS3_CLASS_ORDER}
    others = []
    for group_name, _, arrays in entries:
      m = re.match(r'^(conv2d|dense)(?:_(\d+))?$', group_name)
      if m:
        by_class[m.group(1)].append((int(m.group(2) or 0), arrays))
      else:
        others.append(group_name)
    if others:
      raise ValueError(f'{path}: unexpected layers with weights: {", ".join(others)}')
    named = {}
    for prefix, keras_names in _KERAS3_CLASS_ORDER:
      found = sorted(by_class[prefix], key=lambda item: item[0])
      if found and len(found) != len(keras_names):
        raise ValueError(f'{path}: {len(found)} {prefix} layers, expected {len(keras_names)}')
      named.update(zip(keras_names, (arrays for _, arrays in found)))
  weights = {}
  for name, arrays in named.items():
    if len(arrays) != 2:
      raise ValueError(f'{path}: layer {name} has {len(arrays)} variables, expected kernel '
                       'and bias')
    weights[name] = {'kernel': arrays[0], 'bias': arrays[1]}
  return weights


def read_torchvision(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state dict -> {key: numpy array}. Loads tensors only (weights_only)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path} (a torchvision .pth) needs PyTorch: pip install torch==2.13.0 (the '
        "CPU build is enough; or pip install 'mammo_jax[port]')") from e
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    raise ValueError(f'{path}: torch.load failed ({type(e).__name__}: {e}); expected a '
                     'torchvision state dict such as vgg16-397923af.pth') from e
  if isinstance(state, Mapping) and set(state) == {'state_dict'}:
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise ValueError(f'{path}: holds a {type(state).__name__}, expected a state dict')
  out = {}
  for key, value in state.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f'{path}: entry {key!r} is a {type(value).__name__}, not a tensor')
    out[key] = value.detach().to(torch.float32).numpy()
  return out


def _open_h5(path: str) -> h5py.File:
  try:
    return h5py.File(path, 'r')
  except OSError as e:
    raise ValueError(f'{path}: cannot be read as HDF5 ({e}); the file may be truncated or '
                     'damaged: download it again') from e


def _hdf5_layout(f: h5py.File, path: str) -> str:
  root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
  if 'layer_names' in root.attrs or 'layer_names0' in root.attrs:
    return 'keras_h5'
  if isinstance(f.get('layers'), h5py.Group):
    return 'keras3'
  raise ValueError(f'{path}: an HDF5 file but not Keras weights: expected a root attribute '
                   'layer_names (legacy Keras .h5) or a layers/ group (Keras 3 .weights.h5)')


def _h5_strings(group: h5py.Group, name: str) -> list[str]:
  """A list-of-strings attribute; Keras splits long ones into name0, name1, ..."""
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f'{name}{i}' in group.attrs:
      chunks.append(group.attrs[f'{name}{i}'])
      i += 1
  return [v.decode('utf8') if isinstance(v, bytes) else str(v)
          for chunk in chunks for v in np.atleast_1d(chunk)]


# ----------------------------------------------------------------------------------------
# Porting, saving, loading.


def port_file(path: str, format: str = 'auto',  # pylint: disable=redefined-builtin
              include_top: bool | None = None) -> tuple[Params, dict]:
  """Reads and converts a source file: (params, metadata for the sidecar).

  include_top: None keeps what the file has; False drops fc1/fc2/predictions; True requires
  them.
  """
  fmt = detect_format(path) if format == 'auto' else format
  if fmt == 'keras_h5':
    params = convert_keras(read_keras_h5(path))
  elif fmt == 'keras3':
    params = convert_keras(read_keras3(path))
  elif fmt == 'torchvision':
    params = convert_torchvision(read_torchvision(path))
  elif fmt == 'msgpack':
    raise ValueError(f'{path} is already a ported params file; load it with load_params')
  else:
    raise ValueError(f'unknown format {format!r}; expected auto or one of {FORMATS}')
  if include_top is False:
    params = {k: v for k, v in params.items() if k not in TOP_LAYERS}
  elif include_top and 'fc1' not in params:
    raise ValueError(f'{path} has no top (fc1, fc2, predictions)')
  sha256, md5 = file_digests(path)
  return params, _metadata(params, fmt, os.path.basename(path), sha256, md5)


def _metadata(params: Params, fmt: str, source: str, sha256: str, md5: str) -> dict:
  top = 'fc1' in params
  top_pool = None
  if top and fmt == 'torchvision':
    side = torchvision_pool_side(params['fc1']['kernel'].shape[0])
    top_pool = [side, side]
  return {
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


def file_digests(path: str) -> tuple[str, str]:
  """(SHA-256, MD5) hex digests of a file; MD5 because Keras publishes its files' MD5s."""
  sha256, md5 = hashlib.sha256(), hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      sha256.update(chunk)
      md5.update(chunk)
  return sha256.hexdigest(), md5.hexdigest()


def save_params(params: Params, out_path: str, metadata: Mapping) -> dict:
  """Writes OUT (flax msgpack) and OUT + '.json' (metadata + params_sha256); returns that.

  Both are written to temporary files and renamed into place, so a failure leaves any
  earlier OUT intact; params_sha256 ties the sidecar to its msgpack.
  """
  data = flax.serialization.msgpack_serialize(
      {layer: {k: np.asarray(v, np.float32) for k, v in p.items()} for layer, p in
       params.items()})
  metadata = dict(metadata, params_sha256=hashlib.sha256(data).hexdigest())
  sidecar = out_path + '.json'
  _atomic_write(out_path, data)
  _atomic_write(sidecar, (json.dumps(metadata, indent=2) + '\n').encode())
  return metadata


def load_params(path: str, require_metadata: bool = True) -> tuple[Params, dict]:
  """Reads a ported file: (params as float32 numpy, its sidecar's metadata).

  Without the sidecar the weights' preprocessing and top_pool are unknown, so this raises
  unless require_metadata=False (then a warning, and empty metadata).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  with open(path, 'rb') as f:
    data = f.read()
  try:
    restored = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types for damaged data
    raise ValueError(f'{path}: not a flax msgpack params file ({type(e).__name__}: {e})') from e
  if not isinstance(restored, dict) or not all(isinstance(v, dict) for v in restored.values()):
    raise ValueError(f'{path}: expected a {{layer: {{kernel, bias}}}} dict')
  sidecar = path + '.json'
  metadata = {}
  if os.path.exists(sidecar):
    with open(sidecar) as f:
      metadata = json.load(f)
    want = metadata.get('params_sha256')
    if want and want != hashlib.sha256(data).hexdigest():
      raise ValueError(f'{path} does not match its sidecar {sidecar} (params_sha256 '
                       'differs); port the source again')
  elif require_metadata:
    raise FileNotFoundError(
        f'{path}: its sidecar {sidecar} is missing; it records the preprocessing and '
        'top_pool the weights need. Port the source again with python -m '
        'mammo_jax.port_vgg16 SRC OUT')
  else:
    warnings.warn(f'{sidecar} is missing: preprocessing and top_pool unknown')
  params = {layer: {k: np.asarray(v, np.float32) for k, v in p.items()}
            for layer, p in restored.items()}
  _check_names(set(params), CONV_LAYERS + (TOP_LAYERS if 'fc1' in params else ()),
               f'{path}: layers')
  check_params(params)
  return params, metadata


def _atomic_write(path: str, data: bytes) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


# ----------------------------------------------------------------------------------------
# Merging into an initialised tree.


def merge_params(target, loaded, skip: str | None = None, keep: str | None = None):
  """Loaded values in target's structure; raises ValueError unless the names match exactly.

  Args:
    target: the initialised params (arrays, or jax.ShapeDtypeStructs from jax.eval_shape),
      e.g. VGG16's params or a VGG16Classifier's `params['vgg16']`.
    loaded: the pretrained params, e.g. from load_pretrained.
    skip: regex (re.search) over '/'-joined paths of `loaded`; matching entries are dropped,
      e.g. TOP_PATTERN to leave out the ImageNet top.
    keep: regex over target's paths whose initial values are kept and not looked for in
      `loaded` (e.g. '^(fc|logits)/' to merge {'vgg16': loaded} into a whole classifier).

  Returns:
    A dict (FrozenDict if target is one) shaped like target: numpy arrays in target's dtypes
    (float32 for ShapeDtypeStructs), and target's own values where `keep` matched.
  """
  flat_target = flax.traverse_util.flatten_dict(frozen_dict.unfreeze(target), sep='/')
  flat_loaded = flax.traverse_util.flatten_dict(frozen_dict.unfreeze(loaded), sep='/')
  skipped = [k for k in flat_loaded if skip and re.search(skip, k)]
  for k in skipped:
    del flat_loaded[k]
  kept = {k for k in flat_target if keep and re.search(keep, k)}
  missing = sorted(k for k in flat_target if k not in flat_loaded and k not in kept)
  unexpected = sorted(k for k in flat_loaded if k not in flat_target)
  mismatched = [(k, tuple(np.shape(flat_target[k])), tuple(np.shape(v)))
                for k, v in flat_loaded.items()
                if k in flat_target and k not in kept
                and tuple(np.shape(flat_target[k])) != tuple(np.shape(v))]
  if missing or unexpected or mismatched:
    lines = ['pretrained params do not fit the model:']
    if missing:
      lines.append(f'  missing (in the model, not in the weights): {", ".join(missing)}')
    if unexpected:
      lines.append(f'  unexpected (in the weights, not in the model): {", ".join(unexpected)}')
      if any(re.search(TOP_PATTERN, k) for k in unexpected):
        lines.append(f'  (the weights have the ImageNet top; skip={TOP_PATTERN!r} drops it)')
    for k, want, got in mismatched:
      lines.append(f'  shape mismatch: {k}: model {want}, weights {got}')
    raise ValueError('\n'.join(lines))
  merged = {}
  for k, t in flat_target.items():
    if k in kept:
      merged[k] = t
    else:
      dtype = getattr(t, 'dtype', np.float32)
      merged[k] = np.asarray(flat_loaded[k]).astype(dtype, copy=False)
  out = flax.traverse_util.unflatten_dict(merged, sep='/')
  return frozen_dict.freeze(out) if isinstance(target, frozen_dict.FrozenDict) else out


# ----------------------------------------------------------------------------------------
# config.model.pretrained: a file, or an official file downloaded and cached.


def load_pretrained(spec: str, cache_dir: str | None = None) -> tuple[Params, dict]:
  """config.model.pretrained -> (params, metadata).

  spec: a ported .msgpack (with its sidecar); a source file (.h5, .weights.h5, .keras, .pth),
  converted in memory; or 'keras', 'keras_notop' or 'torchvision': the official file,
  downloaded, checked against its publisher's digest, ported and cached in `cache_dir`
  (default $MAMMO_JAX_CACHE/weights, else ~/.cache/mammo_jax/weights) for next time.
  """
  if spec in OFFICIAL:
    return _load_official(spec, cache_dir)
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(spec))
  fmt = detect_format(path)
  return load_params(path) if fmt == 'msgpack' else port_file(path, fmt)


def default_cache_dir() -> str:
  return os.path.join(os.path.expanduser(os.environ.get('MAMMO_JAX_CACHE')
                                         or '~/.cache/mammo_jax'), 'weights')


def missing_message(path: str) -> str:
  """Where the official files are and how to port them (for a missing weights path)."""
  return (
      f'VGG16 weights not found: {path}\n'
      'Download an official file:\n'
      f'  Keras, no top (the study\'s base): {OFFICIAL["keras_notop"].url}\n'
      f'  Keras, with the ImageNet top:     {OFFICIAL["keras"].url}\n'
      f'  torchvision:                      {OFFICIAL["torchvision"].url}\n'
      'port it with\n'
      '  python -m mammo_jax.port_vgg16 SRC OUT.msgpack\n'
      'and set config.model.pretrained=OUT.msgpack (a source file works too, converted at '
      'start-up). With internet access, config.model.pretrained=keras_notop (or keras, '
      'torchvision) downloads, verifies and caches the file.')


def _load_official(name: str, cache_dir: str | None) -> tuple[Params, dict]:
  source = OFFICIAL[name]
  cache_dir = cache_dir or default_cache_dir()
  out = os.path.join(cache_dir, f'vgg16_{name}.msgpack')
  if os.path.exists(out):
    try:
      params, metadata = load_params(out)
      if _digest_ok(source, metadata['source_sha256'], metadata['source_md5']):
        logging.info('VGG16 weights %s: cached %s', name, out)
        return params, metadata
      logging.warning('%s was ported from another file than %s; downloading again', out,
                      source.url)
    except (OSError, ValueError, KeyError) as e:
      logging.warning('ignoring the cached %s (%s); downloading again', out, e)
  os.makedirs(cache_dir, exist_ok=True)
  download = _download(source.url, cache_dir)
  try:
    sha256, md5 = file_digests(download)
    if not _digest_ok(source, sha256, md5):
      want = (f'MD5 {source.md5}' if source.md5 else f'SHA-256 {source.sha256_prefix}...')
      raise ValueError(f'{source.url}: the download does not match its published digest '
                       f'({want}; got MD5 {md5}, SHA-256 {sha256}); try again, or download '
                       'it yourself and port it with python -m mammo_jax.port_vgg16')
    params, metadata = port_file(download, source.format)
  finally:
    os.remove(download)
  metadata.update(source=source.filename, source_url=source.url)
  metadata = save_params(params, out, metadata)
  logging.info('VGG16 weights %s: ported to %s', name, out)
  return params, metadata


def _digest_ok(source: Official, sha256: str, md5: str) -> bool:
  if source.md5:
    return md5 == source.md5
  return sha256.startswith(source.sha256_prefix)


def _download(url: str, directory: str) -> str:
  """Streams url into a temporary file in directory; returns its path."""
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.download')
  logging.info('downloading %s', url)
  try:
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(1 << 22):
        f.write(chunk)
  except (urllib.error.URLError, OSError) as e:
    os.remove(tmp)
    reason = getattr(e, 'reason', e)
    raise ConnectionError(
        f'could not download {url} ({reason}). Without internet access, download the file '
        'on another machine, copy it here and set config.model.pretrained to its path (or '
        'port it first: python -m mammo_jax.port_vgg16 SRC OUT.msgpack)') from e
  except BaseException:
    os.remove(tmp)
    raise
  return tmp

