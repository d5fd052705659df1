"""VGG16 weight ports (mammo_jax.weights.vgg16) against Keras and torch, and the model
family's loader (mammo_jax.models.vgg16.check_pretrained / load).

Equivalence: a source model with random weights is written in each published layout, ported,
loaded into our VGG16 and run on random inputs; max |ours - source| / max |source| <= 1e-4.
The fast suite covers every format without the top at 150 and 224, with the top at 32x32
(Keras; fc1 then takes 512 inputs) and torchvision's layout with a small head (3x3 pool,
64 units: fc1's C,H,W -> H,W,C permutation and the adaptive pool are still exercised).
The published with-top shapes (138M parameters) at 224 and 150 are `slow`.
"""

import os

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax.models import vgg16 as vgg16_model
from mammo_jax.weights import store
from mammo_jax.weights import vgg16 as vw
from tests.mammo_jax.weights import vgg16_sources

TOLERANCE = 1e-4  # max |diff| / max |ref|; float32 reorderings give about 3e-6
KERAS_FILES = ('keras1', 'keras2', 'keras3', 'keras_archive', 'keras_full_h5')
NOTOP_PARAMS = 14_714_688  # docs/REFERENCE_STUDY.md §2.4

# Keras's TF backend converts tensors with np.array(x), which numpy 2 flags.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


def _rel_err(out, ref):
  return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


_FORWARDS = {}


def _ours(params, metadata, x):
  """Our VGG16 configured from the sidecar metadata, jitted once per configuration."""
  top_pool = tuple(metadata['top_pool']) if metadata['top_pool'] else None
  key = (metadata['include_top'], metadata['num_classes'], metadata['fc_units'], top_pool)
  if key not in _FORWARDS:
    kwargs = dict(num_classes=key[1], fc_units=key[2]) if key[0] else {}
    model = vgg16_model.VGG16(include_top=key[0], top_pool=top_pool, **kwargs)
    _FORWARDS[key] = jax.jit(lambda p, x: model.apply({'params': p}, x))
  return np.asarray(_FORWARDS[key](params, jnp.asarray(x)))


# ----------------------------------------------------------------------------------------
# Equivalence with the source frameworks.

_slow = pytest.mark.slow


@pytest.mark.parametrize('kind', KERAS_FILES)
@pytest.mark.parametrize('include_top,size', [
    (False, 150), (False, 224), (True, 32),
    pytest.param(True, 150, marks=_slow), pytest.param(True, 224, marks=_slow)])
def test_keras_port_matches_keras(sources, kind, include_top, size):
  _, files = sources.keras(include_top, size)
  x, ref = sources.keras_ref(include_top, size)
  params, metadata = vw.port_file(files[kind])
  assert metadata['format'] == ('keras3' if kind in ('keras3', 'keras_archive') else 'keras_h5')
  assert metadata['include_top'] == include_top and metadata['top_pool'] is None
  assert metadata['preprocess'] == 'caffe'
  assert _rel_err(_ours(params, metadata, x), ref) <= TOLERANCE


@pytest.mark.parametrize('kind', ['zip', 'legacy'])
@pytest.mark.parametrize('layout,include_top,size', [
    ('small', True, 64), ('small', True, 150), ('small', False, 150), ('small', False, 224),
    pytest.param('torchvision', True, 224, marks=_slow),
    pytest.param('torchvision', True, 150, marks=_slow)])
def test_torchvision_port_matches_torch(sources, kind, layout, include_top, size):
  pytest.importorskip('torch')
  _, files = sources.torch(layout)
  x, ref = sources.torch_ref(layout, include_top, size)
  params, metadata = vw.port_file(files[kind], include_top=include_top)
  assert metadata['format'] == 'torchvision' and metadata['preprocess'] == 'torch'
  if include_top:
    assert metadata['top_pool'] == ([3, 3] if layout == 'small' else [7, 7])
    if layout == 'torchvision':
      assert metadata['num_params'] == 138_357_544
  else:
    assert metadata['top_pool'] is None and metadata['num_params'] == NOTOP_PARAMS
  assert _rel_err(_ours(params, metadata, x), ref) <= TOLERANCE


def test_keras_reads_our_legacy_files_like_the_published_ones(sources):
  """Keras's own legacy loader accepts the writer's files: the layout is the real one."""
  model, files = sources.keras(False, 150)
  for naming in ('keras1', 'keras2'):
    fresh = vgg16_sources.keras_vgg16(False, None, seed=1)
    fresh.load_weights(files[naming])
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), fresh.get_weights()))
  with h5py.File(files['keras1'], 'r') as f:
    assert 'block1_pool' in [n.decode() for n in f.attrs['layer_names']]
    assert list(f['block1_conv1'].attrs['weight_names']) == [b'block1_conv1_W_1:0',
                                                            b'block1_conv1_b_1:0']
  with h5py.File(files['keras2'], 'r') as f:
    assert f['block5_conv3/block5_conv3/kernel:0'].shape == (3, 3, 512, 512)


def test_keras3_layers_without_recorded_names_map_by_creation_order(sources, tmp_path):
  """Older Keras 3 files lack vars' name attribute: conv2d_2 < conv2d_10 numerically."""
  _, files = sources.keras(False, 150)
  path = str(tmp_path / 'unnamed.weights.h5')
  with open(files['keras3'], 'rb') as src, open(path, 'wb') as dst:
    dst.write(src.read())
  with h5py.File(path, 'r+') as f:
    for group in f['layers'].values():
      if 'vars' in group and 'name' in group['vars'].attrs:
        del group['vars'].attrs['name']
  want, _ = vw.port_file(files['keras3'])
  got, _ = vw.port_file(path)
  assert set(got) == set(want)
  assert all(np.array_equal(got[n][k], want[n][k]) for n in want for k in ('kernel', 'bias'))


def test_name_tables_match_the_model_and_torchvision(sources):
  shapes = jax.eval_shape(lambda: vgg16_model.VGG16(include_top=True).init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))['params']
  assert set(shapes) == set(vw.CONV_LAYERS + vw.TOP_LAYERS)
  pytest.importorskip('torch')
  model, _ = sources.torch('small')
  assert set(model.state_dict()) == {f'{key}.{p}' for key in vw.TORCHVISION_KEYS.values()
                                     for p in ('weight', 'bias')}


def test_official_sources_are_the_ones_keras_checks():
  import ast  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  keras_dir = os.path.dirname(importlib.util.find_spec('keras').origin)
  with open(os.path.join(keras_dir, 'src', 'applications', 'vgg16.py')) as f:
    text = f.read()
  urls = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(text).body
          if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
          and node.targets[0].id.startswith('WEIGHTS_PATH')}
  assert vw.OFFICIAL['keras'].url == urls['WEIGHTS_PATH']
  assert vw.OFFICIAL['keras_notop'].url == urls['WEIGHTS_PATH_NO_TOP']
  # get_file(..., file_hash=...) right after each URL: 32 hex digits, so MD5.
  for name, variable in (('keras', 'WEIGHTS_PATH,'), ('keras_notop', 'WEIGHTS_PATH_NO_TOP,')):
    after = text[text.index(variable):]
    assert after[after.index('file_hash="') + 11:].startswith(vw.OFFICIAL[name].md5 + '"')


# ----------------------------------------------------------------------------------------
# Conversion errors.


def test_convert_torchvision_permutes_fc1_from_chw_to_hwc():
  rng = np.random.default_rng(0)
  state = {}
  for name, key in vw.TORCHVISION_KEYS.items():
    if name in vw.CONV_LAYERS:
      cin, cout = vw._CONV_CHANNELS[name]  # pylint: disable=protected-access
      shape = (cout, cin, 3, 3)
    else:
      shape = {'fc1': (8, 512 * 4), 'fc2': (8, 8), 'predictions': (3, 8)}[name]
    state[f'{key}.weight'] = rng.standard_normal(shape).astype(np.float32)
    state[f'{key}.bias'] = rng.standard_normal(shape[:1]).astype(np.float32)
  params = vw.convert_torchvision(state)
  fc1 = state['classifier.0.weight'].reshape(8, 512, 2, 2)  # [out, C, H, W]
  kernel = params['fc1']['kernel'].reshape(2, 2, 512, 8)  # [H, W, C, out]
  assert np.array_equal(kernel[1, 0, 7, 5], fc1[5, 7, 1, 0])
  assert np.array_equal(params['block2_conv1']['kernel'][2, 1, 4, 9],
                        state['features.5.weight'][9, 4, 2, 1])
  assert np.array_equal(params['predictions']['kernel'], state['classifier.6.weight'].T)
  del state['features.7.bias']
  state['features.99.weight'] = state['features.0.weight']
  with pytest.raises(ValueError, match=r'missing: features\.7\.bias[\s\S]*unexpected: '
                     r'features\.99\.weight'):
    vw.convert_torchvision(state)


def test_convert_keras_checks_names_and_shapes(notop_h5):
  _, layers = notop_h5
  weights = vgg16_sources.layers_to_params(layers)
  weights['block1_conv1'] = {'kernel': np.zeros((3, 3, 1, 64)), 'bias': np.zeros(64)}
  with pytest.raises(ValueError, match=r'block1_conv1/kernel: got \(3, 3, 1, 64\), expected '
                     r'\(3, 3, 3, 64\)'):
    vw.convert_keras(weights)
  weights['fc1'] = weights.pop('block5_conv3')
  with pytest.raises(ValueError, match='missing: block5_conv3, fc2, predictions'):
    vw.convert_keras(weights)


# ----------------------------------------------------------------------------------------
# config.model.pretrained: the model family's loader.


def test_missing_pretrained_path_says_where_to_get_weights(tmp_path):
  missing = str(tmp_path / 'vgg16_notop.msgpack')
  for fail in (lambda: vw.load_pretrained(missing),
               lambda: vgg16_model.check_pretrained(missing)):
    with pytest.raises(FileNotFoundError) as error:
      fail()
    message = str(error.value)
    assert missing in message
    for source in vw.OFFICIAL.values():
      assert source.url in message
    assert 'python -m mammo_jax.port_vgg16 SRC OUT.msgpack' in message
    assert 'pretrained=keras_notop' in message
  vgg16_model.check_pretrained('keras_notop')  # an official name is fine: fetched at start


def test_models_vgg16_does_not_import_the_weights_readers():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; import mammo_jax.models.vgg16; '
          'print("h5py" in sys.modules, "mammo_jax.weights.readers" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.split() == ['False', 'False']


def _classifier_params(fc=8):
  model = vgg16_model.VGG16Classifier(num_outputs=1, fc=fc)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return {'params': jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes['params'])}


@pytest.fixture(scope='module')
def top_file(tmp_path_factory):
  """A ported file with a (small) ImageNet top: fc1/fc2/predictions beside the base."""
  layers = vgg16_sources.numpy_vgg16_layers(include_top=True, fc1_inputs=512, fc_units=4,
                                            classes=3)
  path = str(tmp_path_factory.mktemp('top') / 'vgg16_top.msgpack')
  params = vgg16_sources.layers_to_params(layers)
  store.save_params(params, path, {'format': 'keras_h5', 'preprocess': 'caffe'})
  return path, params


def test_load_skips_the_entries_dont_load_matches(top_file):
  path, source = top_file
  init = _classifier_params()
  variables, metadata = vgg16_model.load(init, path, preprocess='caffe',
                                         dont_load=vgg16_model.TOP_PATTERN)
  params, init = variables['params'], init['params']
  assert set(variables) == {'params'}
  assert metadata['format'] == 'keras_h5'
  assert set(params) == {'vgg16', 'fc', 'logits'} and set(params['vgg16']) == set(vw.CONV_LAYERS)
  for layer in vw.CONV_LAYERS:
    np.testing.assert_array_equal(params['vgg16'][layer]['kernel'], source[layer]['kernel'])
  assert params['fc'] is init['fc'] and params['logits'] is init['logits']  # head untouched
  # Another regex is honoured as given: the top and one base layer left out is not a fit.
  with pytest.raises(ValueError, match=r'missing \(in the model, not in the weights\): '
                     r'block1_conv1/bias'):
    vgg16_model.load({'params': init}, path, preprocess='caffe',
                     dont_load=r'^(fc1|fc2|predictions|'
                     r'block1_conv1)(/|$)')


def test_load_without_dont_load_is_strict_and_says_how_to_skip_the_top(top_file):
  path, _ = top_file
  with pytest.raises(ValueError) as error:
    vgg16_model.load(_classifier_params(), path, preprocess='caffe')
  message = str(error.value)
  assert message.startswith(f'model.pretrained={path}: pretrained params do not fit')
  assert 'unexpected (in the weights, not in the model): fc1/bias, fc1/kernel' in message
  assert 'Port the weights of a VGG16 (python -m mammo_jax.port_vgg16 SRC OUT).' in message
  assert "--config.model.dont_load='^(fc1|fc2|predictions)(/|$)'" in message


def test_load_refuses_weights_for_another_preprocessing(top_file, tmp_path):
  path, _ = top_file
  with pytest.raises(ValueError, match=r"'caffe'-preprocessed inputs, but model.preprocess is "
                     r"'torch'; set --config.model.preprocess=caffe"):
    vgg16_model.load(_classifier_params(), path, preprocess='torch',
                     dont_load=vgg16_model.TOP_PATTERN)
  with pytest.raises(ValueError, match='go into the vgg16 base of a VGG16Classifier'):
    vgg16_model.load({'params': {'conv': {}}}, path, preprocess='caffe')
