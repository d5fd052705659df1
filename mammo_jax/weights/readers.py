"""Weight files -> numpy, keyed by the source framework's own names (no architecture here).

- Legacy Keras HDF5 (`read_keras_h5`): keras-applications' published `.h5` files and any
  Keras 1/2 `save_weights` or full-model save: root attribute `layer_names` (under
  `model_weights` in a full-model save; split into `layer_names0`, `layer_names1`, ... when
  long), one group per layer with a `weight_names` attribute. Keras-1 names such as
  `block1_conv1_W_1:0`, Keras-2 names such as `block1_conv1/kernel:0`.
- Keras 3 (`read_keras3`): `model.save_weights(....weights.h5)` or a `.keras` archive.
- torch (`read_torch`): a `torch.save`d state dict, either serialization, loaded with
  `weights_only=True`. PyTorch is an optional extra, imported only here, when called.

Keras readers return `{layer: {weight: array}}` with Keras's weight names (`kernel`, `bias`,
`gamma`, `moving_mean`, ...); `read_torch` returns the flat state dict. Converting to a
model's parameters is the architecture's module (e.g. `mammo_jax.weights.vgg16`).
"""

import contextlib
import io
import os
import re
import zipfile
from collections.abc import Mapping, Sequence

import h5py
import numpy as np

KerasWeights = dict[str, dict[str, np.ndarray]]

# Keras weight name -> the spellings a file may use (Keras 1 wrote `_W`/`_b`).
KERAS_WEIGHT_NAMES = {
    'kernel': ('kernel', 'W'),
    'bias': ('bias', 'b'),
    'depthwise_kernel': ('depthwise_kernel',),
    'gamma': ('gamma',),
    'beta': ('beta',),
    'moving_mean': ('moving_mean', 'running_mean'),
    'moving_variance': ('moving_variance',),
}

# Keras 3 stores a layer's variables unnamed, in the layer's creation order.
KERAS3_VARIABLES = {
    'conv2d': ('kernel', 'bias'),
    'depthwise_conv2d': ('kernel', 'bias'),
    'dense': ('kernel', 'bias'),
    'batch_normalization': ('gamma', 'beta', 'moving_mean', 'moving_variance'),
}

_HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
_ZIP_SIGNATURE = b'PK\x03\x04'
# torch.save's pre-1.6 format (the 2017 torchvision files): pickle protocol 2, then the
# long 0x1950a86a20f9469cfc6c as its first object.
_TORCH_LEGACY_SIGNATURE = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'
_KERAS3_GROUP = re.compile(r'^(.*?)(?:_(\d+))?$')


def detect_format(path: str) -> str:
  """'keras_h5', 'keras3', 'torch' or 'msgpack' (a ported file), from the content."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  with open(path, 'rb') as f:
    head = f.read(len(_TORCH_LEGACY_SIGNATURE))
  if head.startswith(_HDF5_SIGNATURE) or h5py.is_hdf5(path):  # is_hdf5 finds user blocks
    with open_h5(path) as f:
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
      return 'torch'
    raise ValueError(f'{path}: a zip file that is neither a torch.save file (no data.pkl) '
                     'nor a .keras archive (no model.weights.h5)')
  if head.startswith(_TORCH_LEGACY_SIGNATURE):
    return 'torch'
  # Flax msgpack of a dict: a fixmap (0x80-0x8f) or map16/map32.
  if head and (0x80 <= head[0] <= 0x8f or head[0] in (0xde, 0xdf)):
    return 'msgpack'
  raise ValueError(
      f'{path}: unrecognised file (starts with {head[:8]!r}); expected Keras weights (HDF5 '
      '.h5 or .weights.h5), a torch .pth (torch.save) or a ported .msgpack')


def read_keras_h5(path: str, names: Mapping[str, Sequence[str]] = KERAS_WEIGHT_NAMES
                  ) -> KerasWeights:
  """Legacy Keras HDF5 weights -> {layer: {weight: array}}, layers with weights only.

  Each layer group lists its datasets in `weight_names`; Keras-2 names contain a slash, so
  their datasets sit in subgroups. A name's end tells which weight it is; `names` lists the
  weights accepted (Keras name -> spellings), anything else is an error.
  """
  # Longest spellings first: `depthwise_kernel` also ends in `_kernel`.
  patterns = sorted(((re.compile(rf'(^|[/_]){re.escape(s)}(_\d+)?(:\d+)?$'), len(s), kind)
                     for kind, spellings in names.items() for s in spellings),
                    key=lambda p: -p[1])
  with open_h5(path) as f:
    root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
    layer_names = h5_strings(root, 'layer_names')
    if not layer_names:
      raise ValueError(f'{path}: no layer_names attribute; not legacy Keras HDF5 weights')
    weights = {}
    for layer in layer_names:
      if layer not in root:
        raise ValueError(f'{path}: layer_names lists {layer!r} but the file has no such group')
      group = root[layer]
      layer_weights = {}
      for name in h5_strings(group, 'weight_names'):
        kind = next((k for pattern, _, k in patterns if pattern.search(name)), None)
        if kind is None:
          accepted = ' nor '.join(f'a {k} ({"/".join(s)})' for k, s in names.items())
          raise ValueError(f'{path}: layer {layer} has weight {name!r}, neither {accepted}')
        if kind in layer_weights:
          raise ValueError(f'{path}: layer {layer} has more than one {kind} (a nested '
                           'model?); expected the layers of one model, not nested ones')
        if name not in group:
          raise ValueError(f'{path}: layer {layer} lists weight {name!r} but has no such '
                           'dataset')
        layer_weights[kind] = np.asarray(group[name])
      if layer_weights:
        weights[layer] = layer_weights
  return weights


def read_keras3(path: str, class_order: Sequence[tuple[str, Sequence[str]]] = ()
                ) -> KerasWeights:
  """Keras 3 `.weights.h5` (or a `.keras` archive) -> {layer: {weight: array}}.

  Keras 3 stores each layer at `layers/<class name>[_<n>]/vars/{0, 1, ...}`, named here by
  KERAS3_VARIABLES (others '0', '1', ...). Recent versions record the layer name as the
  `vars` group's `name` attribute; without it the layers are named from `class_order`,
  ((class, layer names in creation order), ...), e.g. conv2d, conv2d_1, ..., conv2d_12 ->
  the 13 convolutions of VGG16 (the suffix compares as a number).
  """
  with contextlib.ExitStack() as stack:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        if 'model.weights.h5' not in z.namelist():
          raise ValueError(f'{path}: a zip file without model.weights.h5; not a .keras file')
        data = io.BytesIO(z.read('model.weights.h5'))
      f = stack.enter_context(h5py.File(data, 'r'))
    else:
      f = stack.enter_context(open_h5(path))
    layers = f.get('layers')
    if not isinstance(layers, h5py.Group):
      raise ValueError(f'{path}: no layers/ group; not a Keras 3 .weights.h5 file')
    entries = []  # (group name, recorded layer name, {weight: array})
    for group_name, group in layers.items():
      variables = group.get('vars')
      if not isinstance(variables, h5py.Group) or not len(variables):
        if isinstance(group.get('layers'), h5py.Group):
          raise ValueError(f'{path}: layers/{group_name} is a nested model; expected the '
                           'layers of one model, not nested ones')
        continue  # input, pooling and flatten layers have no weights
      arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
      layer_class = _KERAS3_GROUP.match(group_name).group(1)
      var_names = KERAS3_VARIABLES.get(layer_class, ())
      if var_names and len(arrays) > len(var_names):
        raise ValueError(f'{path}: layers/{group_name} has {len(arrays)} variables, expected '
                         f'at most {len(var_names)} ({", ".join(var_names)})')
      named = dict(zip(list(var_names) + [str(i) for i in range(len(var_names), len(arrays))],
                       arrays))
      recorded = variables.attrs.get('name')
      recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
      entries.append((group_name, recorded, named))

  if all(recorded for _, recorded, _ in entries):
    return {recorded: named for _, recorded, named in entries}
  by_class = {layer_class: [] for layer_class, _ in class_order}
  others = []
  for group_name, _, named in entries:
    layer_class, index = _KERAS3_GROUP.match(group_name).groups()
    if layer_class in by_class:
      by_class[layer_class].append((int(index or 0), named))
    else:
      others.append(group_name)
  if others:
    raise ValueError(f'{path}: layers without recorded names, not matched by creation order: '
                     f'{", ".join(others)}')
  weights = {}
  for layer_class, layer_names in class_order:
    found = sorted(by_class[layer_class], key=lambda item: item[0])
    if found and len(found) != len(layer_names):
      raise ValueError(f'{path}: {len(found)} {layer_class} layers, expected '
                       f'{len(layer_names)}')
    weights.update(zip(layer_names, (named for _, named in found)))
  return weights


def read_torch(path: str) -> dict[str, np.ndarray]:
  """A torch.save'd state dict -> {key: float32 array}. Loads tensors only (weights_only)."""
  torch = _import_torch(path)
  try:
    state = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
    raise ValueError(f'{path}: torch.load failed ({type(e).__name__}: {e}); expected a state '
                     'dict such as torchvision\'s vgg16-397923af.pth') from e
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


def entry_names(path: str) -> tuple[str, list[str]]:
  """(detect_format(path), the layer names or state-dict keys the file holds), cheaply.

  For recognising an architecture: HDF5 files give their layer names without reading a
  tensor (Keras 3 files the recorded names, else `conv2d_3`-style group names); torch zip
  files are memory-mapped; a ported msgpack gives no names.
  """
  fmt = detect_format(path)
  if fmt == 'keras_h5':
    with open_h5(path) as f:
      root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
      return fmt, h5_strings(root, 'layer_names')
  if fmt == 'keras3':
    with contextlib.ExitStack() as stack:
      if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
          data = io.BytesIO(z.read('model.weights.h5'))
        f = stack.enter_context(h5py.File(data, 'r'))
      else:
        f = stack.enter_context(open_h5(path))
      names = []
      for group_name, group in f.get('layers', {}).items():
        recorded = group['vars'].attrs.get('name') if 'vars' in group else None
        recorded = recorded.decode() if isinstance(recorded, bytes) else recorded
        names.append(recorded or group_name)
      return fmt, names
  if fmt == 'torch':
    torch = _import_torch(path)
    try:
      state = torch.load(path, map_location='cpu', weights_only=True,
                         mmap=zipfile.is_zipfile(path))
    except Exception as e:  # as in read_torch
      raise ValueError(f'{path}: torch.load failed ({type(e).__name__}: {e})') from e
    if isinstance(state, Mapping) and set(state) == {'state_dict'}:
      state = state['state_dict']
    return fmt, list(state) if isinstance(state, Mapping) else []
  return fmt, []


def _import_torch(path: str):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f'reading {path} (a torch .pth) needs PyTorch: pip install torch==2.13.0 (the CPU '
        "build is enough; or pip install 'mammo_jax[port]')") from e
  return torch


def open_h5(path: str) -> h5py.File:
  """h5py.File(path, 'r'), with damage reported as a ValueError naming the file."""
  try:
    return h5py.File(path, 'r')
  except OSError as e:
    raise ValueError(f'{path}: cannot be read as HDF5 ({e}); the file may be truncated or '
                     'damaged: download it again') from e


def h5_strings(group: h5py.Group, name: str) -> list[str]:
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


def _hdf5_layout(f: h5py.File, path: str) -> str:
  root = f['model_weights'] if isinstance(f.get('model_weights'), h5py.Group) else f
  if 'layer_names' in root.attrs or 'layer_names0' in root.attrs:
    return 'keras_h5'
  if isinstance(f.get('layers'), h5py.Group):
    return 'keras3'
  raise ValueError(f'{path}: an HDF5 file but not Keras weights: expected a root attribute '
                   'layer_names (legacy Keras .h5) or a layers/ group (Keras 3 .weights.h5)')
