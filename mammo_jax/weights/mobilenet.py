"""MobileNet v1's pretrained weights: name tables, converter, official files, the port.

Sources (`FORMATS`):
- `keras_h5`: keras-applications' `mobilenet_{alpha}_{size}_tf[_no_top].h5` (alpha 1_0, 7_5,
  5_0, 2_5; size 128, 160, 192, 224), or any legacy Keras HDF5 weights or full-model save
  of a MobileNet (see readers.read_keras_h5).
- `keras3`: a Keras 3 `model.save_weights(....weights.h5)` file or a `.keras` archive.

A port is the variables of `mammo_jax.models.mobilenet.MobileNet`, `{'params': ...,
'batch_stats': ...}` keyed by Keras's layer names: convolution kernels as they are (HWIO),
depthwise kernels [3, 3, C, m] reshaped to Flax's grouped [3, 3, 1, C * m] (output channel
c * m + j in both), BatchNorm gamma/beta as scale/bias and the moving mean/variance as
batch_stats mean/var. The width multiplier alpha and the depth multiplier are read from the
shapes and recorded in the sidecar, with the preprocessing the weights expect (Keras's 'tf':
x / 127.5 - 1). Conversion is pure (`convert_keras`: numpy in, numpy out).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

import mammo_jax
from mammo_jax.models import mobilenet as mobilenet_model
from mammo_jax.weights import download
from mammo_jax.weights import readers
from mammo_jax.weights import store

FORMATS = ('keras_h5', 'keras3')
PORT_VERSION = 1  # bump when the conversion or the sidecar changes meaning
PORT_COMMAND = 'python -m mammo_jax.port_weights SRC OUT.msgpack'
PREPROCESS = 'tf'  # keras.applications.mobilenet.preprocess_input
ARCHITECTURE = 'mobilenet'

CONV_LAYERS = mobilenet_model.CONV_NAMES
BN_LAYERS = mobilenet_model.BN_NAMES
TOP_LAYER = mobilenet_model.TOP_NAME
# A with-top file's ImageNet classifier, which MobileNetClassifier has no place for.
TOP_PATTERN = rf'^{TOP_LAYER}(/|$)'

# Keras 3 names a layer's weights by its class and creation order; in a MobileNet built alone
# that order is the layer order below (used only when a file records no layer names).
_POINTWISE = ('conv1',) + tuple(n for n in CONV_LAYERS if n.startswith('conv_pw_'))
_KERAS3_CLASS_ORDER = (
    ('conv2d', _POINTWISE + (TOP_LAYER,)),
    ('depthwise_conv2d', tuple(n for n in CONV_LAYERS if n.startswith('conv_dw_'))),
    ('batch_normalization', BN_LAYERS))

# Keras's published files: keras/src/applications/mobilenet.py builds the URLs and passes no
# file_hash to get_file, so there is no publisher's digest to check; the port records the
# download's SHA-256 (source_sha256) instead.
_KERAS_URL = 'https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/'
ALPHAS = {'1_0': 1.0, '7_5': 0.75, '5_0': 0.5, '2_5': 0.25}
SIZES = (128, 160, 192, 224)
OFFICIAL = {
    f'keras_{a}_{size}{suffix}': download.Official(
        f'{_KERAS_URL}mobilenet_{a}_{size}_tf{file_suffix}.h5', 'keras_h5')
    for a in ALPHAS for size in SIZES
    for suffix, file_suffix in (('', ''), ('_notop', '_no_top'))}

Variables = dict[str, dict[str, dict[str, np.ndarray]]]


# ----------------------------------------------------------------------------------------
# Conversion (pure).


def convert_keras(weights: Mapping[str, Mapping[str, np.ndarray]]) -> Variables:
  """Keras MobileNet weights `{layer: {weight: array}}` -> {'params', 'batch_stats'}.

  The top (conv_preds) is kept when present. Raises ValueError naming every missing,
  unexpected or mis-shaped layer.
  """
  names = CONV_LAYERS + BN_LAYERS + ((TOP_LAYER,) if TOP_LAYER in weights else ())
  _check_names(set(weights), names)
  params, stats = {}, {}
  for name in CONV_LAYERS:
    layer = weights[name]
    kernel = layer.get('depthwise_kernel', layer.get('kernel'))
    if kernel is None or len(layer) != 1:
      raise ValueError(f'Keras layer {name} has weights {sorted(layer)}, expected one kernel '
                       '(no bias)')
    kernel = np.asarray(kernel, np.float32)
    if name.startswith('conv_dw_'):
      if kernel.ndim != 4:
        raise ValueError(f'{name}: depthwise kernel of shape {kernel.shape}, expected 4-d')
      kernel = kernel.reshape(*kernel.shape[:2], 1, -1)  # [3, 3, C, m] -> [3, 3, 1, C * m]
    params[name] = {'kernel': np.ascontiguousarray(kernel)}
  for name in BN_LAYERS:
    layer = weights[name]
    if set(layer) != {'gamma', 'beta', 'moving_mean', 'moving_variance'}:
      raise ValueError(f'Keras layer {name} has weights {sorted(layer)}, expected gamma, beta, '
                       'moving_mean and moving_variance')
    f32 = lambda k: np.ascontiguousarray(layer[k], dtype=np.float32)  # pylint: disable=cell-var-from-loop
    params[name] = {'scale': f32('gamma'), 'bias': f32('beta')}
    stats[name] = {'mean': f32('moving_mean'), 'var': f32('moving_variance')}
  if TOP_LAYER in weights:
    layer = weights[TOP_LAYER]
    if set(layer) != {'kernel', 'bias'}:
      raise ValueError(f'Keras layer {TOP_LAYER} has weights {sorted(layer)}, expected kernel '
                       'and bias')
    params[TOP_LAYER] = {k: np.ascontiguousarray(layer[k], dtype=np.float32)
                         for k in ('kernel', 'bias')}
  variables = {'params': params, 'batch_stats': stats}
  architecture(variables)
  return variables


def architecture(variables: Variables) -> dict:
  """{'alpha', 'depth_multiplier', 'num_classes'} from the shapes; raises ValueError listing
  every shape that does not fit that MobileNet."""
  params = variables['params']
  alpha = np.shape(params['conv_pw_13']['kernel'])[-1] / 1024
  dm = np.shape(params['conv_dw_1']['kernel'])[-1] // max(
      np.shape(params['conv1']['kernel'])[-1], 1)
  top = params.get(TOP_LAYER)
  classes = int(np.shape(top['kernel'])[-1]) if top else None
  stem, *blocks = mobilenet_model.widths(alpha)
  expected, cin = {'conv1': (3, 3, 3, stem)}, stem
  for i, cout in enumerate(blocks, 1):
    expected[f'conv_dw_{i}'] = (3, 3, 1, cin * dm)
    expected[f'conv_pw_{i}'] = (1, 1, cin * dm, cout)
    cin = cout
  bad = [f'{n}/kernel: got {np.shape(params[n]["kernel"])}, expected {s}'
         for n, s in expected.items() if tuple(np.shape(params[n]['kernel'])) != s]
  for bn in BN_LAYERS:
    width = expected[bn[:-3]][-1]
    for collection, keys in (('params', ('scale', 'bias')), ('batch_stats', ('mean', 'var'))):
      for k in keys:
        got = tuple(np.shape(variables[collection][bn][k]))
        if got != (width,):
          bad.append(f'{collection}/{bn}/{k}: got {got}, expected ({width},)')
  if top and (tuple(np.shape(top['kernel']))[:3] != (1, 1, cin)
              or np.shape(top['bias']) != (classes,)):
    bad.append(f'{TOP_LAYER}: got kernel {np.shape(top["kernel"])} and bias '
               f'{np.shape(top["bias"])}, expected (1, 1, {cin}, classes) and (classes,)')
  if bad:
    raise ValueError(f'weights do not have the shapes of a MobileNet (alpha {alpha:g}, '
                     f'depth multiplier {dm}):\n  ' + '\n  '.join(bad))
  return {'alpha': float(alpha), 'depth_multiplier': int(dm), 'num_classes': classes}


def _check_names(got: set[str], expected) -> None:
  missing = [n for n in expected if n not in got]
  extra = sorted(got - set(expected))
  if missing or extra:
    lines = ['Keras layers do not match MobileNet:']
    if missing:
      lines.append(f'  missing: {", ".join(missing)}')
    if extra:
      lines.append(f'  unexpected: {", ".join(extra)}')
    raise ValueError('\n'.join(lines))


# ----------------------------------------------------------------------------------------
# Recognising, porting and loading.


def recognises(path: str) -> bool:
  """Whether path is Keras weights of a MobileNet v1, by its layer names (no weights read)."""
  try:
    fmt, names = readers.entry_names(path)
  except (OSError, ValueError):
    return False
  return fmt in FORMATS and {'conv1', 'conv_dw_1', 'conv_pw_13_bn'} <= set(names)


def port_file(path: str, format: str = 'auto',  # pylint: disable=redefined-builtin
              include_top: bool | None = None) -> tuple[Variables, dict]:
  """Reads and converts a source file: (variables, metadata for the sidecar).

  include_top: None keeps what the file has; False drops conv_preds; True requires it.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  fmt = readers.detect_format(path) if format == 'auto' else format
  if fmt == 'keras_h5':
    variables = convert_keras(readers.read_keras_h5(path))
  elif fmt == 'keras3':
    variables = convert_keras(readers.read_keras3(path, _KERAS3_CLASS_ORDER))
  elif fmt == 'msgpack':
    raise ValueError(f'{path} is already a ported file; load it with load_params')
  else:
    raise ValueError(f'{path}: format {fmt!r} is not a MobileNet source; expected auto or one '
                     f'of {", ".join(FORMATS)}')
  if include_top is False:
    variables['params'].pop(TOP_LAYER, None)
  elif include_top and TOP_LAYER not in variables['params']:
    raise ValueError(f'{path} has no top ({TOP_LAYER})')
  sha256, md5 = store.file_digests(path)
  return variables, _metadata(variables, fmt, os.path.basename(path), sha256, md5)


def _metadata(variables: Variables, fmt: str, source: str, sha256: str, md5: str) -> dict:
  arch = architecture(variables)
  return {
      'architecture': ARCHITECTURE,
      'format': fmt,
      'source': source,
      'source_sha256': sha256,
      'source_md5': md5,
      'include_top': arch['num_classes'] is not None,
      'preprocess': PREPROCESS,
      **arch,
      'num_params': int(sum(a.size for c in variables.values() for layer in c.values()
                            for a in layer.values())),
      'port_version': PORT_VERSION,
      'mammo_jax_version': mammo_jax.__version__,
  }


def load_params(path: str, require_metadata: bool = True) -> tuple[Variables, dict]:
  """A ported MobileNet file (store.load_params), its names and shapes checked."""
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(path))
  variables, metadata = store.load_params(path, require_metadata, needs='preprocessing',
                                          port_command=PORT_COMMAND.replace('.msgpack', ''))
  if set(variables) != {'params', 'batch_stats'}:
    raise ValueError(f'{path}: holds {", ".join(sorted(variables))}, not the params and '
                     'batch_stats of a MobileNet port')
  top = (TOP_LAYER,) if TOP_LAYER in variables['params'] else ()
  _check_names(set(variables['params']), CONV_LAYERS + BN_LAYERS + top)
  _check_names(set(variables['batch_stats']), BN_LAYERS)
  architecture(variables)
  return variables, metadata


def load_pretrained(spec: str, cache_dir: str | None = None) -> tuple[Variables, dict]:
  """config.model.pretrained -> (variables, metadata).

  spec: a ported .msgpack (with its sidecar); a source file (.h5, .weights.h5, .keras),
  converted in memory; or an OFFICIAL name such as 'keras_5_0_160_notop': Keras's file,
  downloaded, ported and cached in `cache_dir` (default download.default_cache_dir()).
  """
  return download.load_spec(spec, official=OFFICIAL, family='mobilenet', label='MobileNet',
                            cache_dir=cache_dir, port=port_file, load=load_params,
                            port_command=PORT_COMMAND, missing_message=missing_message)


def missing_message(path: str) -> str:
  """Where the official files are and how to port them (for a missing weights path)."""
  return (
      f'MobileNet weights not found: {path}\n'
      'Download an official Keras file, e.g. (alpha 0.5, 160x160, no top; other alphas and '
      'sizes: mobilenet_{1_0,7_5,5_0,2_5}_{128,160,192,224}_tf[_no_top].h5):\n'
      f'  {OFFICIAL["keras_5_0_160_notop"].url}\n'
      'port it with\n'
      f'  {PORT_COMMAND}\n'
      'and set config.model.pretrained=OUT.msgpack (a source file works too, converted at '
      'start-up). With internet access, config.model.pretrained=keras_5_0_160_notop (or any '
      'keras_{alpha}_{size}[_notop]) downloads and caches the file.')
