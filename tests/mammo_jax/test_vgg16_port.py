"""VGG16 weight ports (mammo_jax.vgg16_weights, mammo_jax.port_vgg16) against Keras and torch.

Equivalence: a source model with random weights is written in each published layout, ported,
loaded into our VGG16 and run on random inputs; max |ours - source| / max |source| <= 1e-4.
The fast suite covers every format without the top at 150 and 224, with the top at 32x32
(Keras; fc1 then takes 512 inputs) and torchvision's layout with a small head (3x3 pool,
64 units: fc1's C,H,W -> H,W,C permutation and the adaptive pool are still exercised).
The published with-top shapes (138M parameters) at 224 and 150 are `slow`.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
import zipfile

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import port_vgg16
from mammo_jax import vgg16_weights as vw
from mammo_jax.models import vgg16 as vgg16_model
from tests.mammo_jax import vgg16_sources

from tests.conftest import ROOT
TOLERANCE = 1e-4  # max |diff| / max |ref|; float32 reorderings give about 3e-6
KERAS_FILES = ('keras1', 'keras2', 'keras3', 'keras_archive', 'keras_full_h5')
NOTOP_PARAMS = 14_714_688  # REFERENCE_STUDY.md §2.4

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


class _Sources:
  """Source models and their files, built once per test process."""

  def __init__(self, root):
    self.root = root
    self._keras, self._torch, self._refs = {}, {}, {}

  def keras(self, include_top: bool, size: int):
    """(model, {file kind: path}); one no-top model serves every input size."""
    key = (include_top, size if include_top else None)
    if key not in self._keras:
      classes = 10 if include_top and size == 32 else 1000
      model = vgg16_sources.keras_vgg16(include_top, key[1], classes=classes)
      stem = os.path.join(self.root, f'keras_{"top" if include_top else "notop"}_{key[1]}')
      layers = vgg16_sources.keras_layers(model)
      files = {}
      for naming in ('keras1', 'keras2'):
        files[naming] = f'{stem}_{naming}.h5'
        vgg16_sources.write_keras_legacy_h5(files[naming], layers, naming)
      files['keras3'] = f'{stem}.weights.h5'
      model.save_weights(files['keras3'])
      files['keras_archive'] = f'{stem}.keras'
      model.save(files['keras_archive'])
      files['keras_full_h5'] = f'{stem}_full.h5'  # Keras's own legacy full-model save
      with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "legacy format" advice
        model.save(files['keras_full_h5'])
      self._keras[key] = model, files
    return self._keras[key]

  def keras_ref(self, include_top: bool, size: int):
    key = ('keras', include_top, size)
    if key not in self._refs:
      x = np.random.default_rng(size).normal(0, 50, (2, size, size, 3)).astype(np.float32)
      model, _ = self.keras(include_top, size)
      self._refs[key] = x, np.asarray(model(x, training=False))
    return self._refs[key]

  def torch(self, layout: str):
    """(model, {'zip': path, 'legacy': path}); layout 'small' or 'torchvision'."""
    if layout not in self._torch:
      import torch  # pylint: disable=g-import-not-at-top
      kwargs = dict(pool=(3, 3), fc_units=64, classes=10) if layout == 'small' else {}
      model = vgg16_sources.torch_vgg16(**kwargs)
      files = {'zip': os.path.join(self.root, f'torch_{layout}.pth'),
               'legacy': os.path.join(self.root, f'torch_{layout}_legacy.pth')}
      torch.save(model.state_dict(), files['zip'])
      torch.save(model.state_dict(), files['legacy'], _use_new_zipfile_serialization=False)
      self._torch[layout] = model, files
    return self._torch[layout]

  def torch_ref(self, layout: str, include_top: bool, size: int):
    key = ('torch', layout, include_top, size)
    if key not in self._refs:
      import torch  # pylint: disable=g-import-not-at-top
      x = np.random.default_rng(size).normal(0, 1, (2, size, size, 3)).astype(np.float32)
      model, _ = self.torch(layout)
      with torch.no_grad():
        nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        ref = model(nchw) if include_top else model.features(nchw).permute(0, 2, 3, 1)
      self._refs[key] = x, ref.numpy()
    return self._refs[key]


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp('vgg16_sources')
  yield _Sources(str(root))
  shutil.rmtree(root)  # several GB with the slow tests; pytest would keep three runs' worth


@pytest.fixture(scope='module')
def notop_h5(tmp_path_factory):
  """A legacy Keras no-top file from numpy (no Keras needed), and its layers."""
  layers = vgg16_sources.numpy_vgg16_layers(include_top=False)
  path = str(tmp_path_factory.mktemp('notop')
             / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  vgg16_sources.write_keras_legacy_h5(path, layers, 'keras1')
  return path, layers


def _layers_to_params(layers):
  return {name: {'kernel': w[0], 'bias': w[1]} for name, w in layers if w}


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
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(files['keras1'], 'r') as f:
    assert 'block1_pool' in [n.decode() for n in f.attrs['layer_names']]
    assert list(f['block1_conv1'].attrs['weight_names']) == [b'block1_conv1_W_1:0',
                                                            b'block1_conv1_b_1:0']
  with h5py.File(files['keras2'], 'r') as f:
    assert f['block5_conv3/block5_conv3/kernel:0'].shape == (3, 3, 512, 512)


def test_keras3_layers_without_recorded_names_map_by_creation_order(sources, tmp_path):
  """Older Keras 3 files lack vars' name attribute: conv2d_2 < conv2d_10 numerically."""
  import h5py  # pylint: disable=g-import-not-at-top
  _, files = sources.keras(False, 150)
  path = str(tmp_path / 'unnamed.weights.h5')
  with open(files['keras3'], 'rb') as src, open(path, 'wb') as dst:
    dst.write(src.read())
  with h5py.File(path, 'r+') as f:
    for group in f['layers'].values():
      if 'vars' in group and 'name' in group['vars'].attrs:
        del group['vars'].attrs['name']
  want = vw.convert_keras(vw.read_keras3(files['keras3']))
  got = vw.convert_keras(vw.read_keras3(path))
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
# Conversion and reading errors.


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
  weights = _layers_to_params(layers)
  weights['block1_conv1'] = {'kernel': np.zeros((3, 3, 1, 64)), 'bias': np.zeros(64)}
  with pytest.raises(ValueError, match=r'block1_conv1/kernel: got \(3, 3, 1, 64\), expected '
                     r'\(3, 3, 3, 64\)'):
    vw.convert_keras(weights)
  weights['fc1'] = weights.pop('block5_conv3')
  with pytest.raises(ValueError, match='missing: block5_conv3, fc2, predictions'):
    vw.convert_keras(weights)


def test_unrecognised_damaged_and_foreign_files_are_named(notop_h5, tmp_path):
  path, _ = notop_h5
  with open(path, 'rb') as f:
    head = f.read(4096)
  cases = {
      'truncated.h5': (head, r'truncated\.h5: cannot be read as HDF5'),
      'noise.pth': (b'not a weights file' * 8, r'noise\.pth: unrecognised file'),
      'broken.pth': (b'PK\x03\x04' + b'\x00' * 64, r'broken\.pth: a damaged zip file'),
  }
  for name, (data, message) in cases.items():
    bad = tmp_path / name
    bad.write_bytes(data)
    with pytest.raises(ValueError, match=message):
      vw.port_file(str(bad))
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(tmp_path / 'other.h5', 'w') as f:
    f['x'] = np.zeros(3)
  with pytest.raises(ValueError, match='an HDF5 file but not Keras weights'):
    vw.detect_format(str(tmp_path / 'other.h5'))
  with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as z:
    z.writestr('readme.txt', 'hi')
  with pytest.raises(ValueError, match='neither a torch.save file'):
    vw.detect_format(str(tmp_path / 'other.zip'))


def test_format_is_detected_by_content_not_extension(notop_h5, tmp_path):
  path, _ = notop_h5
  renamed = tmp_path / 'weights.pth'
  renamed.write_bytes(open(path, 'rb').read())
  assert vw.detect_format(str(renamed)) == 'keras_h5'
  params, metadata = vw.port_file(str(renamed))
  assert metadata['format'] == 'keras_h5' and len(params) == 13


def test_unknown_keras_weight_names_are_reported(notop_h5, tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'odd.h5')
  vgg16_sources.write_keras_legacy_h5(path, notop_h5[1], 'keras2')
  with h5py.File(path, 'r+') as f:
    f['block2_conv1'].attrs['weight_names'] = np.array([b'block2_conv1/gamma:0',
                                                        b'block2_conv1/bias:0'])
  with pytest.raises(ValueError, match=r"odd\.h5: layer block2_conv1 has weight "
                     r"'block2_conv1/gamma:0', neither a kernel"):
    vw.read_keras_h5(path)


def test_torch_missing_gives_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match=r'pip install torch==2\.13\.0'):
    vw.read_torchvision(str(tmp_path / 'vgg16-397923af.pth'))


# ----------------------------------------------------------------------------------------
# Strict merge.


def _classifier_shapes():
  model = vgg16_model.VGG16Classifier(num_outputs=1)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 150, 150, 3))))


def test_merge_into_the_classifier_base(notop_h5):
  loaded = _layers_to_params(notop_h5[1])
  target = _classifier_shapes()['params']['vgg16']
  merged = vw.merge_params(target, loaded)
  assert jax.tree.structure(merged) == jax.tree.structure(dict(target))
  assert np.array_equal(merged['block4_conv2']['kernel'], loaded['block4_conv2']['kernel'])
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(merged))
  assert sum(leaf.size for leaf in jax.tree.leaves(merged)) == NOTOP_PARAMS


def test_merge_into_a_whole_classifier_keeps_the_head():
  model = vgg16_model.VGG16Classifier(num_outputs=4, fc=8)
  x = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))['params']
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)  # "initialised"
  loaded = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), dict(shapes['vgg16']))
  merged = vw.merge_params(flax.core.freeze(params), {'vgg16': loaded}, keep='^(fc|logits)/')
  assert isinstance(merged, flax.core.FrozenDict)
  assert merged['logits']['kernel'] is params['logits']['kernel']
  assert float(merged['vgg16']['block1_conv1']['bias'][0]) == 0.5
  assert jax.eval_shape(lambda p: model.apply({'params': p}, x), merged).shape == (1, 4)
  with pytest.raises(ValueError, match=r'missing \(in the model, not in the weights\): '
                     r'fc/bias, fc/kernel, logits/bias, logits/kernel'):
    vw.merge_params(params, {'vgg16': loaded})


def test_merge_lists_missing_unexpected_and_misshaped_names(notop_h5):
  target = _classifier_shapes()['params']['vgg16']
  loaded = _layers_to_params(notop_h5[1])
  del loaded['block3_conv2']
  loaded['block6_conv1'] = loaded['block5_conv1']
  loaded['block1_conv1'] = {'kernel': np.zeros((3, 3, 1, 64)), 'bias': np.zeros(64)}
  with pytest.raises(ValueError) as error:
    vw.merge_params(target, loaded)
  message = str(error.value)
  assert 'missing (in the model, not in the weights): block3_conv2/bias, block3_conv2/kernel' \
      in message
  assert ('unexpected (in the weights, not in the model): block6_conv1/bias, '
          'block6_conv1/kernel') in message
  assert 'shape mismatch: block1_conv1/kernel: model (3, 3, 3, 64), weights (3, 3, 1, 64)' \
      in message


def test_merge_skips_the_top_by_pattern(notop_h5):
  target = _classifier_shapes()['params']['vgg16']
  loaded = _layers_to_params(notop_h5[1])
  loaded.update({name: {'kernel': np.zeros((4, 4)), 'bias': np.zeros(4)}
                 for name in vw.TOP_LAYERS})
  with pytest.raises(ValueError, match=r"unexpected .*fc1/bias[\s\S]*skip='\^\(fc1\|fc2\|"):
    vw.merge_params(target, loaded)
  merged = vw.merge_params(target, loaded, skip=vw.TOP_PATTERN)
  assert set(merged) == set(vw.CONV_LAYERS)


# ----------------------------------------------------------------------------------------
# Saving, loading, the CLI and config.model.pretrained.


def _run_cli(*args, capsys=None):
  code = port_vgg16.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def test_cli_writes_params_and_sidecar(notop_h5, tmp_path, capsys):
  src, layers = notop_h5
  out = tmp_path / 'vgg16_notop.msgpack'
  code, stdout, _ = _run_cli(src, out, capsys=capsys)
  assert code == 0
  sha256 = hashlib.sha256(open(src, 'rb').read()).hexdigest()
  assert f'{NOTOP_PARAMS:,}' in stdout and sha256 in stdout and 'keras_h5' in stdout
  metadata = json.loads((tmp_path / 'vgg16_notop.msgpack.json').read_text())
  assert metadata == {
      'format': 'keras_h5', 'source': os.path.basename(src), 'source_sha256': sha256,
      'source_md5': hashlib.md5(open(src, 'rb').read()).hexdigest(), 'include_top': False,
      'preprocess': 'caffe', 'top_pool': None, 'fc_units': None, 'num_classes': None,
      'num_params': NOTOP_PARAMS, 'port_version': vw.PORT_VERSION,
      'mammo_jax_version': metadata['mammo_jax_version'],
      'params_sha256': hashlib.sha256(out.read_bytes()).hexdigest()}
  params, loaded_metadata = vw.load_params(str(out))
  assert loaded_metadata == metadata
  want = _layers_to_params(layers)
  assert all(np.array_equal(params[n][k], want[n][k]) for n in want for k in ('kernel', 'bias'))
  # config.model.pretrained takes the ported file or the source itself.
  for spec in (str(out), src):
    params, _ = vw.load_pretrained(spec)
    assert np.array_equal(params['block5_conv3']['bias'], want['block5_conv3']['bias'])


def test_cli_refuses_to_overwrite_and_keeps_out_on_failure(notop_h5, tmp_path, capsys):
  src, _ = notop_h5
  out = tmp_path / 'w.msgpack'
  assert _run_cli(src, out, capsys=capsys)[0] == 0
  before = out.read_bytes(), (tmp_path / 'w.msgpack.json').read_bytes()
  code, _, err = _run_cli(src, out, capsys=capsys)
  assert code == 1 and 'exists; pass --overwrite' in err and err.count('\n') == 1
  bad = tmp_path / 'bad.h5'
  bad.write_bytes(b'\x89HDF\r\n\x1a\n' + b'\x00' * 100)
  code, _, err = _run_cli(bad, out, '--overwrite', capsys=capsys)
  assert code == 1 and 'bad.h5' in err and err.count('\n') == 1
  assert (out.read_bytes(), (tmp_path / 'w.msgpack.json').read_bytes()) == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['bad.h5', 'w.msgpack', 'w.msgpack.json']
  code, stdout, _ = _run_cli(src, out, '--overwrite', capsys=capsys)
  assert code == 0 and 'wrote' in stdout


def test_cli_missing_source_names_the_official_files(tmp_path, capsys):
  code, _, err = _run_cli(tmp_path / 'nope.h5', tmp_path / 'out.msgpack', capsys=capsys)
  assert code == 1 and err.count('\n') == 1
  assert 'nope.h5: no such file' in err and vw.OFFICIAL['keras_notop'].url in err
  assert not os.path.exists(tmp_path / 'out.msgpack')


def test_cli_module_ports_a_torchvision_file_without_its_top(sources, tmp_path):
  pytest.importorskip('torch')
  _, files = sources.torch('small')
  out = tmp_path / 'tv.msgpack'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true', JAX_PLATFORMS='cpu')
  done = subprocess.run(
      [sys.executable, '-m', 'mammo_jax.port_vgg16', files['legacy'], str(out), '--notop'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert 'torchvision' in done.stdout and f'{NOTOP_PARAMS:,}' in done.stdout
  _, metadata = vw.load_params(str(out))
  assert metadata['preprocess'] == 'torch' and metadata['include_top'] is False


def test_missing_pretrained_path_says_where_to_get_weights(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    vw.load_pretrained(str(tmp_path / 'vgg16_notop.msgpack'))
  message = str(error.value)
  assert str(tmp_path / 'vgg16_notop.msgpack') in message
  for source in vw.OFFICIAL.values():
    assert source.url in message
  assert 'python -m mammo_jax.port_vgg16 SRC OUT.msgpack' in message
  assert 'pretrained=keras_notop' in message


def test_load_params_needs_a_matching_sidecar(notop_h5, tmp_path):
  params = _layers_to_params(notop_h5[1])
  out = str(tmp_path / 'p.msgpack')
  vw.save_params(params, out, {'format': 'keras_h5'})
  os.rename(out + '.json', out + '.json.bak')
  with pytest.raises(FileNotFoundError, match=r'p\.msgpack\.json is missing'):
    vw.load_params(out)
  with pytest.warns(UserWarning, match='preprocessing and top_pool unknown'):
    assert vw.load_params(out, require_metadata=False)[1] == {}
  os.rename(out + '.json.bak', out + '.json')
  params['block1_conv1']['bias'] = params['block1_conv1']['bias'] + 1
  with open(out, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(params))
  with pytest.raises(ValueError, match='does not match its sidecar'):
    vw.load_params(out)


@pytest.fixture
def fake_official(notop_h5, tmp_path, monkeypatch):
  """keras_notop served from a local file:// URL with that file's MD5."""
  src, _ = notop_h5
  md5 = hashlib.md5(open(src, 'rb').read()).hexdigest()
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      vw.Official(f'file://{src}', 'keras_h5', md5=md5))
  return src, md5


def test_pretrained_keras_downloads_verifies_and_caches(fake_official, tmp_path, monkeypatch):
  src, md5 = fake_official
  monkeypatch.setenv('MAMMO_JAX_CACHE', str(tmp_path / 'cache'))
  params, metadata = vw.load_pretrained('keras_notop')
  cached = tmp_path / 'cache' / 'weights' / 'vgg16_keras_notop.msgpack'
  assert sorted(os.listdir(cached.parent)) == [cached.name, cached.name + '.json']
  assert metadata['source_url'] == f'file://{src}' and metadata['source_md5'] == md5
  assert metadata['num_params'] == NOTOP_PARAMS
  # Next time the cache is used: the URL is gone.
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      vw.Official(f'file://{tmp_path}/gone.h5', 'keras_h5', md5=md5))
  again, _ = vw.load_pretrained('keras_notop')
  assert np.array_equal(again['block3_conv1']['kernel'], params['block3_conv1']['kernel'])


def test_pretrained_keras_rejects_a_wrong_digest_and_a_failed_download(fake_official,
                                                                      tmp_path, monkeypatch):
  src, _ = fake_official
  cache = tmp_path / 'cache'
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      vw.Official(f'file://{src}', 'keras_h5', md5='0' * 32))
  with pytest.raises(ValueError, match='does not match its published digest'):
    vw.load_pretrained('keras_notop', cache_dir=str(cache))
  assert os.listdir(cache) == []  # neither the download nor a port is left behind
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      vw.Official(f'file://{tmp_path}/gone.h5', 'keras_h5', md5='0' * 32))
  with pytest.raises(ConnectionError, match=r'could not download file://.*gone\.h5'):
    vw.load_pretrained('keras_notop', cache_dir=str(cache))
  assert os.listdir(cache) == []
