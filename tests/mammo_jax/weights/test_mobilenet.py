"""MobileNet v1 weight ports (mammo_jax.weights.mobilenet) against Keras, and the model
family's loader (mammo_jax.models.mobilenet.check_pretrained / load / backbone).

Equivalence: keras.applications.MobileNet(alpha=0.5, weights=None) with random kernels AND
random BatchNorm moving statistics, written as keras-applications' legacy HDF5, by Keras's
own legacy full-model save, as Keras 3 .weights.h5 and as a .keras archive; each ported,
loaded into the model `backbone(metadata)` builds and run in inference mode at 64x64 and
100x100 (and 64x64 with the top): max |ours - Keras| / max |Keras| <= 1e-4. At 100 a strided
depthwise convolution meets odd sizes (25, 13), where Keras's bottom/right zero padding
differs from 'SAME' (at 64 every strided input is even and the two agree).
"""

import ast
import hashlib
import importlib.util
import os
import warnings

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import models
from mammo_jax import port_weights
from mammo_jax.models import mobilenet as mobilenet_model
from mammo_jax.weights import mobilenet as mw
from mammo_jax.weights import store
from tests.mammo_jax.weights import vgg16_sources

TOLERANCE = 1e-4
ALPHA = 0.5
KERAS_FILES = ('legacy_h5', 'keras_full_h5', 'keras3', 'keras_archive')

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def _randomise(model, seed=0):
  """He-scaled kernels, random BN gamma/beta and moving statistics that keep activations at
  scale through inference-mode BatchNorm (Keras's own init would make them vanish)."""
  rng = np.random.default_rng(seed)
  for layer in model.layers:
    weights = layer.get_weights()
    if not weights:
      continue
    if layer.name.endswith('_bn'):
      n = weights[0].shape
      weights = [rng.uniform(0.5, 1.5, n), rng.normal(0.5, 0.2, n), rng.normal(0.0, 0.2, n),
                 rng.uniform(0.5, 1.5, n)]
    else:
      fan_in = 9 if layer.name.startswith('conv_dw_') else np.prod(weights[0].shape[:-1])
      weights = [rng.standard_normal(weights[0].shape) * np.sqrt(2.0 / fan_in)] + [
          rng.normal(0.0, 0.1, w.shape) for w in weights[1:]]
    layer.set_weights([w.astype(np.float32) for w in weights])
  return model


def _legacy_weight_names(name: str, n: int) -> list[str]:
  """keras-applications' names in the published mobilenet_*_tf*.h5 files (Keras 2)."""
  if name.endswith('_bn'):
    kinds = ('gamma', 'beta', 'moving_mean', 'moving_variance')
  elif name.startswith('conv_dw_'):
    kinds = ('depthwise_kernel',)
  else:
    kinds = ('kernel', 'bias')
  return [f'{name}/{k}:0' for k in kinds[:n]]


def _write_legacy_h5(path, model):
  """The published files' layout: root layer_names, one group per layer, weight_names."""
  with h5py.File(path, 'w') as f:
    f.attrs['layer_names'] = np.array([layer.name.encode() for layer in model.layers])
    f.attrs['backend'], f.attrs['keras_version'] = b'tensorflow', b'2.1.4'
    for layer in model.layers:
      group = f.create_group(layer.name)
      weights = layer.get_weights()
      names = _legacy_weight_names(layer.name, len(weights))
      group.attrs['weight_names'] = np.array([n.encode() for n in names], dtype='S')
      for weight_name, value in zip(names, weights):
        group.create_dataset(weight_name, data=value)


@pytest.fixture(scope='module')
def keras_sources(tmp_path_factory):
  """{include_top: (keras model, {kind: path})}: one no-top model for every input size."""
  keras = pytest.importorskip('keras')
  root = tmp_path_factory.mktemp('mobilenet_sources')
  out = {}
  for include_top in (False, True):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # "input shape not in [128, 160, 192, 224]"
      model = keras.applications.MobileNet(
          alpha=ALPHA, weights=None, include_top=include_top, classes=10,
          input_shape=(64, 64, 3) if include_top else (None, None, 3),
          classifier_activation=None)
    _randomise(model, seed=int(include_top))
    stem = str(root / f'mobilenet_{"top" if include_top else "notop"}')
    files = {'legacy_h5': f'{stem}_tf.h5', **vgg16_sources.save_keras_files(model, stem)}
    _write_legacy_h5(files['legacy_h5'], model)
    out[include_top] = model, files
  return out


_FORWARDS = {}


def _ours(variables, metadata, x):
  key = (metadata['alpha'], metadata['include_top'], metadata['num_classes'])
  if key not in _FORWARDS:
    if key[1]:
      model = mobilenet_model.MobileNet(alpha=key[0], include_top=True, num_classes=key[2])
    else:
      model = mobilenet_model.backbone(metadata)
    _FORWARDS[key] = jax.jit(lambda v, x: model.apply(v, x))
  return np.asarray(_FORWARDS[key](variables, jnp.asarray(x)))


@pytest.mark.parametrize('kind', KERAS_FILES)
@pytest.mark.parametrize('include_top,size', [(False, 64), (False, 100), (True, 64)])
def test_keras_port_matches_keras(keras_sources, kind, include_top, size):
  model, files = keras_sources[include_top]
  x = np.random.default_rng(size).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  ref = np.asarray(model(x, training=False))
  assert np.std(ref) > 0.1  # the random statistics keep the features at scale
  variables, metadata = mw.port_file(files[kind])
  assert metadata['format'] == ('keras3' if kind in ('keras3', 'keras_archive') else 'keras_h5')
  assert (metadata['architecture'], metadata['alpha'], metadata['preprocess']) == (
      'mobilenet', ALPHA, 'tf')
  assert metadata['include_top'] == include_top
  assert metadata['num_params'] == model.count_params()
  err = float(np.max(np.abs(_ours(variables, metadata, x) - ref)) / np.max(np.abs(ref)))
  assert err <= TOLERANCE


def test_depth_multiplier_keeps_keras_channel_order(tmp_path):
  """Keras's depthwise output channel c * m + j is Flax's grouped-conv channel c * m + j."""
  keras = pytest.importorskip('keras')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    model = keras.applications.MobileNet(alpha=0.25, depth_multiplier=2, weights=None,
                                         include_top=False, input_shape=(64, 64, 3))
  _randomise(model, seed=2)
  path = str(tmp_path / 'dm2.weights.h5')
  model.save_weights(path)
  variables, metadata = mw.port_file(path)
  assert (metadata['alpha'], metadata['depth_multiplier']) == (0.25, 2)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  ref = np.asarray(model(x, training=False))
  ours = mobilenet_model.backbone(metadata).apply(variables, jnp.asarray(x))
  assert float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref))) <= TOLERANCE


def test_port_recognises_sidecar_and_round_trip(keras_sources, tmp_path):
  _, files = keras_sources[False]
  for path in files.values():
    assert mw.recognises(path), path
  vgg = str(tmp_path / 'vgg16.h5')
  vgg16_sources.write_keras_legacy_h5(vgg, vgg16_sources.numpy_vgg16_layers(False))
  assert not mw.recognises(vgg) and not mw.recognises(str(tmp_path / 'missing.h5'))
  variables, metadata = mw.port_file(files['legacy_h5'])
  with open(files['legacy_h5'], 'rb') as f:
    assert metadata['source_sha256'] == hashlib.sha256(f.read()).hexdigest()
  assert metadata['depth_multiplier'] == 1 and metadata['num_classes'] is None
  assert variables['params']['conv_dw_1']['kernel'].shape == (3, 3, 1, 16)
  out = str(tmp_path / 'mobilenet.msgpack')
  store.save_params(variables, out, metadata)
  loaded, sidecar = mw.load_params(out)
  assert sidecar['alpha'] == ALPHA and sidecar['preprocess'] == 'tf'
  np.testing.assert_array_equal(loaded['batch_stats']['conv_pw_13_bn']['var'],
                                variables['batch_stats']['conv_pw_13_bn']['var'])
  _, top_files = keras_sources[True]
  no_top, meta = mw.port_file(top_files['keras3'], include_top=False)
  assert 'conv_preds' not in no_top['params'] and not meta['include_top']
  with pytest.raises(ValueError, match='has no top'):
    mw.port_file(files['keras3'], include_top=True)


def test_keras3_layers_without_recorded_names_map_by_creation_order(keras_sources, tmp_path):
  _, files = keras_sources[True]
  path = str(tmp_path / 'unnamed.weights.h5')
  with open(files['keras3'], 'rb') as src, open(path, 'wb') as dst:
    dst.write(src.read())
  with h5py.File(path, 'r+') as f:
    for group in f['layers'].values():
      if 'vars' in group and 'name' in group['vars'].attrs:
        del group['vars'].attrs['name']
  want, _ = mw.port_file(files['keras3'])
  got, _ = mw.port_file(path)
  flat = lambda v: jax.tree_util.tree_leaves_with_path(v)
  assert [(p, a.tobytes()) for p, a in flat(got)] == [(p, a.tobytes()) for p, a in flat(want)]


def test_convert_keras_names_every_bad_layer():
  layers = {name: {'kernel': np.zeros((1, 1, 1, 1))} for name in mw.CONV_LAYERS}
  with pytest.raises(ValueError, match='missing: conv1_bn, conv_dw_1_bn'):
    mw.convert_keras(layers)
  good = mw.convert_keras(_numpy_keras_weights(alpha=0.25))
  assert mw.architecture(good)['alpha'] == 0.25
  bad = _numpy_keras_weights(alpha=0.25)
  bad['conv_pw_3']['kernel'] = np.zeros((1, 1, 32, 33), np.float32)
  with pytest.raises(ValueError, match=r'conv_pw_3/kernel: got \(1, 1, 32, 33\), expected '
                     r'\(1, 1, 32, 32\)'):
    mw.convert_keras(bad)


def _numpy_keras_weights(alpha):
  """Keras-named weights of a no-top MobileNet without Keras (files and errors only)."""
  rng = np.random.default_rng(0)
  stem, *blocks = mobilenet_model.widths(alpha)
  kernels, cin = {'conv1': ('kernel', (3, 3, 3, stem))}, stem
  for i, cout in enumerate(blocks, 1):
    kernels[f'conv_dw_{i}'] = ('depthwise_kernel', (3, 3, cin, 1))
    kernels[f'conv_pw_{i}'] = ('kernel', (1, 1, cin, cout))
    cin = cout
  out = {}
  for name, (kind, shape) in kernels.items():
    width = shape[-2] if kind == 'depthwise_kernel' else shape[-1]
    out[name] = {kind: rng.standard_normal(shape).astype(np.float32)}
    out[f'{name}_bn'] = {k: rng.uniform(0.5, 1.5, width).astype(np.float32)
                         for k in ('gamma', 'beta', 'moving_mean', 'moving_variance')}
  return out


# ----------------------------------------------------------------------------------------
# The family's loader.


def _classifier_variables(alpha=ALPHA):
  model = mobilenet_model.MobileNetClassifier(num_outputs=1, alpha=alpha, fc=4)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


@pytest.fixture(scope='module')
def ported_top(keras_sources, tmp_path_factory):
  _, files = keras_sources[True]
  variables, metadata = mw.port_file(files['legacy_h5'])
  path = str(tmp_path_factory.mktemp('ported') / 'mobilenet_top.msgpack')
  store.save_params(variables, path, metadata)
  return path, variables


def test_load_merges_base_params_and_batch_stats_and_keeps_the_head(ported_top):
  path, source = ported_top
  init = _classifier_variables()
  variables, metadata = mobilenet_model.load(init, path, preprocess='tf',
                                             dont_load=mw.TOP_PATTERN)
  assert metadata['alpha'] == ALPHA
  assert set(variables['params']) == {'mobilenet', 'fc', 'logits'}
  np.testing.assert_array_equal(variables['params']['mobilenet']['conv_dw_5']['kernel'],
                                source['params']['conv_dw_5']['kernel'])
  np.testing.assert_array_equal(variables['batch_stats']['mobilenet']['conv1_bn']['mean'],
                                source['batch_stats']['conv1_bn']['mean'])
  assert variables['params']['logits'] is init['params']['logits']  # the head stays
  # A bare MobileNet (no 'mobilenet' submodule) takes the file at its root.
  bare = mobilenet_model.MobileNet(alpha=ALPHA, include_top=True, num_classes=10)
  shapes = jax.eval_shape(lambda: bare.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  whole, _ = mobilenet_model.load(shapes, path, preprocess='tf')
  assert set(whole['params']) == set(source['params'])


def test_load_errors_name_the_fix(ported_top, tmp_path):
  path, _ = ported_top
  with pytest.raises(ValueError) as error:
    mobilenet_model.load(_classifier_variables(), path, preprocess='tf')
  assert 'unexpected (in the weights, not in the model): conv_preds/bias' in str(error.value)
  assert "--config.model.dont_load='^(conv_preds)(/|$)'" in str(error.value)
  with pytest.raises(ValueError, match=r'alpha 0.5: set --config.model.alpha'):
    mobilenet_model.load(_classifier_variables(alpha=0.25), path, preprocess='tf',
                         dont_load=mw.TOP_PATTERN)
  with pytest.raises(ValueError, match=r"'tf'-preprocessed inputs, but model.preprocess is "
                     r"'caffe'; set --config.model.preprocess=tf"):
    mobilenet_model.load(_classifier_variables(), path, preprocess='caffe')
  missing = str(tmp_path / 'nope.msgpack')
  with pytest.raises(FileNotFoundError, match='mobilenet_5_0_160_tf_no_top.h5'):
    mobilenet_model.check_pretrained(missing)
  mobilenet_model.check_pretrained('keras_5_0_160_notop')  # official: downloaded at load


def test_official_files_are_the_ones_keras_builds_and_publish_no_digest():
  keras_dir = os.path.dirname(importlib.util.find_spec('keras').origin)
  with open(os.path.join(keras_dir, 'src', 'applications', 'mobilenet.py')) as f:
    text = f.read()
  base = next(ast.literal_eval(node.value) for node in ast.parse(text).body
              if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '')
              == 'BASE_WEIGHT_PATH')
  assert mw.OFFICIAL['keras_5_0_160_notop'].url == base + 'mobilenet_5_0_160_tf_no_top.h5'
  assert mw.OFFICIAL['keras_1_0_224'].url == base + 'mobilenet_1_0_224_tf.h5'
  assert len(mw.OFFICIAL) == 4 * 4 * 2
  assert 'file_hash' not in text  # nothing to check a download against
  official = mw.OFFICIAL['keras_2_5_128']
  assert official.md5 is None and official.sha256_prefix is None
  assert official.matches('0' * 64, '0' * 32)


def test_port_weights_cli_recognises_mobilenet_and_pretrained_serves_it(keras_sources, tmp_path):
  """python -m mammo_jax.port_weights picks the MobileNet family from the file alone, and
  models.pretrained(OUT) gives the headless network Keras computes."""
  model, files = keras_sources[False]
  out = tmp_path / 'mobilenet.msgpack'
  assert port_weights.main([files['legacy_h5'], str(out)]) == 0
  module, variables = models.pretrained(str(out))
  assert isinstance(module, mobilenet_model.MobileNet) and not module.include_top
  x = np.random.default_rng(5).uniform(-1, 1, (2, 100, 100, 3)).astype(np.float32)
  ref = np.asarray(model(x, training=False))
  got = np.asarray(module.apply(variables, jnp.asarray(x)))
  assert float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))) <= TOLERANCE
