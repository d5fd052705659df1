"""ResNet50 weight ports (mammo_jax.weights.resnet50, the port_weights CLI) against Keras and
torch, the family's loader (models.resnet.load) and models.pretrained.

Equivalence: a source model with random weights and random BatchNorm statistics is written in
each published layout, ported by the CLI, loaded with models.pretrained and run on random
inputs at 64 and 80 pixels; max |ours - source| / max |source| <= 1e-4. The .keras archive,
Keras's full-model .h5 save and torch's legacy serialization are `slow` (the readers' own
tests cover those containers).
"""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import models
from mammo_jax import port_weights
from mammo_jax.models import resnet
from mammo_jax.weights import resnet50 as rw
from mammo_jax.weights import vgg16 as vw
from tests.mammo_jax.weights import resnet50_sources

TOLERANCE = 1e-4
# The .keras archive holds the .weights.h5 file; torch's legacy format the zip's tensors.
KERAS_FILES = ('tf_keras', 'old', 'keras3', *(pytest.param(k, marks=pytest.mark.slow)
                                              for k in ('keras_archive', 'keras_full_h5')))
NOTOP_VARIABLES = 23_587_712  # keras.applications.ResNet50(include_top=False).count_params()

pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  return resnet50_sources.Sources(str(tmp_path_factory.mktemp('resnet50_sources')))


def _rel_err(out, ref):
  return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


def _port(src, out, *args):
  assert port_weights.main([src, str(out), *args]) == 0
  with open(f'{out}.json') as f:
    return json.load(f)


_FORWARDS = {}


def _features(path, x):
  """models.pretrained(path)'s feature map, jitted once per variant."""
  module, variables = models.pretrained(str(path))
  if module.variant not in _FORWARDS:
    _FORWARDS[module.variant] = jax.jit(module.apply)
  return np.asarray(_FORWARDS[module.variant](variables, jnp.asarray(x)))


@pytest.mark.parametrize('kind', KERAS_FILES)
def test_keras_port_matches_keras_at_two_sizes(sources, kind, tmp_path):
  model, files = sources.keras(include_top=False)
  metadata = _port(files[kind], tmp_path / 'r.msgpack')
  assert (metadata['architecture'], metadata['variant'], metadata['preprocess']) == (
      'resnet50', 'keras', 'caffe')
  assert metadata['format'] == ('keras3' if kind in ('keras3', 'keras_archive') else 'keras_h5')
  assert not metadata['include_top'] and metadata['num_params'] == NOTOP_VARIABLES
  for size in (64, 80):
    x = sources.inputs(size, scale=50.0)
    assert _rel_err(_features(tmp_path / 'r.msgpack', x), np.asarray(model(x))) <= TOLERANCE


def test_keras_top_is_ported_and_matches_keras_logits(sources, tmp_path):
  model, files = sources.keras(include_top=True)
  variables, metadata = rw.port_file(files['old'])
  assert metadata['include_top'] and metadata['num_classes'] == 10
  x = sources.inputs(64, scale=50.0)
  ours = resnet.ResNet50(include_top=True, num_classes=10).apply(variables, x)
  assert _rel_err(ours, np.asarray(model(x))) <= TOLERANCE
  metadata = _port(files['tf_keras'], tmp_path / 'notop.msgpack', '--notop')
  assert not metadata['include_top'] and metadata['num_params'] == NOTOP_VARIABLES


@pytest.mark.parametrize('kind', ['zip', pytest.param('legacy', marks=pytest.mark.slow)])
def test_torchvision_port_matches_torch_at_two_sizes(sources, kind, tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  model, files = sources.torch()
  metadata = _port(files[kind], tmp_path / 'r.msgpack')
  assert (metadata['variant'], metadata['format'], metadata['preprocess']) == (
      'torchvision', 'torchvision', 'torch')
  assert metadata['include_top'] and metadata['num_params'] == 25_557_032 - 990 * 2049 + 53_120
  for size in (64, 80):
    x = sources.inputs(size)
    with torch.no_grad():
      ref = model.features(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    assert _rel_err(_features(tmp_path / 'r.msgpack', x), ref.permute(0, 2, 3, 1).numpy()) \
        <= TOLERANCE
  variables, _ = rw.port_file(files[kind])
  x = sources.inputs(64)
  with torch.no_grad():
    logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
  ours = resnet.ResNet50('torchvision', include_top=True, num_classes=10).apply(variables, x)
  assert _rel_err(ours, logits) <= TOLERANCE


def test_name_tables_match_the_model_keras_and_torchvision(sources):
  model, _ = sources.torch()
  keys = {k.rsplit('.', 1)[0] for k in model.state_dict()}
  assert keys == set(rw.TORCHVISION_KEYS.values())
  keras_model, _ = sources.keras(include_top=True)
  weighted = {layer.name for layer in keras_model.layers if layer.get_weights()}
  assert weighted == set(resnet.CONV_NAMES + resnet.BN_NAMES + ('predictions',))
  assert rw.OLD_KERAS_NAMES['conv4_block6_3_bn'] == 'bn4f_branch2c'
  assert rw.OLD_KERAS_NAMES['conv3_block1_0_conv'] == 'res3a_branch1'


def test_files_are_recognised_by_their_own_family_only(sources, tmp_path):
  _, keras_files = sources.keras(include_top=False)
  _, torch_files = sources.torch()
  for path in (*keras_files.values(), *torch_files.values()):
    assert rw.recognises(path) and not vw.recognises(path), path
    assert port_weights.recognise(path) == 'resnet50'
  from tests.mammo_jax.weights import vgg16_sources  # pylint: disable=g-import-not-at-top
  vgg = str(tmp_path / 'vgg16.h5')
  vgg16_sources.write_keras_legacy_h5(vgg, vgg16_sources.numpy_vgg16_layers(False))
  assert vw.recognises(vgg) and not rw.recognises(vgg)


def test_keras3_without_recorded_names_is_recognised_and_mapped_by_order(sources, tmp_path):
  import h5py  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  _, files = sources.keras(include_top=False)
  path = str(tmp_path / 'unnamed.weights.h5')
  shutil.copy(files['keras3'], path)
  with h5py.File(path, 'r+') as f:
    for group in f['layers'].values():
      if 'vars' in group and 'name' in group['vars'].attrs:
        del group['vars'].attrs['name']
  assert rw.recognises(path) and not vw.recognises(path)
  want, _ = rw.port_file(files['keras3'])
  got, _ = rw.port_file(path)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_cli_errors_are_one_line(sources, tmp_path, capsys):
  _, files = sources.keras(include_top=False)
  out = tmp_path / 'r.msgpack'
  assert port_weights.main([str(tmp_path / 'nope.h5'), str(out)]) == 1
  assert capsys.readouterr().err == f'port_weights: error: {tmp_path}/nope.h5: no such file\n'
  _port(files['tf_keras'], out)
  assert port_weights.main([files['tf_keras'], str(out)]) == 1
  assert 'exists; pass --overwrite' in capsys.readouterr().err
  assert port_weights.main([files['tf_keras'], str(tmp_path / 'v.msgpack'), '--model',
                            'vgg16']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f"port_weights: error: {files['tf_keras']}: layer conv1_bn has weight "
                        "'conv1_bn/gamma:0', neither a kernel") and err.count('\n') == 1
  assert not os.path.exists(tmp_path / 'v.msgpack')
  junk = tmp_path / 'junk.h5'
  import h5py  # pylint: disable=g-import-not-at-top
  with h5py.File(junk, 'w') as f:
    f.attrs['layer_names'] = np.array([b'dense'])
  assert port_weights.main([str(junk), str(tmp_path / 'j.msgpack')]) == 1
  assert 'no known architecture (-) recognise this file; name it with --model' in \
      capsys.readouterr().err


def test_a_missing_family_module_is_skipped_only_when_it_is_absent(monkeypatch):
  monkeypatch.setitem(port_weights.FAMILIES, 'mobilenet', 'mammo_jax.weights.no_such_family')
  assert port_weights._module('mobilenet') is None  # pylint: disable=protected-access
  monkeypatch.setitem(port_weights.FAMILIES, 'mobilenet', 'no_such_package.weights')
  with pytest.raises(ModuleNotFoundError):
    port_weights._module('mobilenet')  # pylint: disable=protected-access


# ----------------------------------------------------------------------------------------
# The family's loader.


def _classifier_variables(variant='keras'):
  model = resnet.ResNet50Classifier(num_outputs=1, variant=variant)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_load_merges_params_and_batch_stats_and_skips_the_top(sources):
  _, files = sources.keras(include_top=True)
  source, _ = rw.port_file(files['tf_keras'])
  init = _classifier_variables()
  variables, metadata = resnet.load(init, files['tf_keras'], preprocess='caffe',
                                    dont_load=resnet.TOP_PATTERN)
  assert metadata['variant'] == 'keras'
  for collection in ('params', 'batch_stats'):
    base = variables[collection]['resnet50']
    assert set(base) == set(source[collection]) - {'predictions'}
    np.testing.assert_array_equal(base['conv3_block2_2_bn'][
        'scale' if collection == 'params' else 'var'],
        source[collection]['conv3_block2_2_bn']['scale' if collection == 'params' else 'var'])
  assert variables['params']['logits'] is init['params']['logits']
  with pytest.raises(ValueError, match=re.escape(
      "unexpected (in the weights, not in the model): predictions/bias, predictions/kernel")):
    resnet.load(init, files['tf_keras'], preprocess='caffe')


def test_load_names_the_model_for_another_variant(sources):
  _, files = sources.torch()
  with pytest.raises(ValueError, match=r'holds torchvision ResNet50 weights, not keras ones; '
                     r'set --config.model.name=resnet50_torchvision '
                     r'--config.model.preprocess=torch$'):
    resnet.load(_classifier_variables(), files['zip'], preprocess='caffe')
  with pytest.raises(FileNotFoundError, match='resnet50-0676ba61.pth'):
    resnet.check_pretrained('/no/such/file.h5')
  resnet.check_pretrained('keras_notop')


def test_official_sources_are_the_ones_keras_checks():
  from keras.src.applications import resnet as keras_resnet  # pylint: disable=g-import-not-at-top
  top, notop = keras_resnet.WEIGHTS_HASHES['resnet50']
  assert (rw.OFFICIAL['keras'].md5, rw.OFFICIAL['keras_notop'].md5) == (top, notop)
  assert rw.OFFICIAL['keras'].url == (keras_resnet.BASE_WEIGHTS_PATH
                                      + 'resnet50_weights_tf_dim_ordering_tf_kernels.h5')
  for name in ('torchvision', 'torchvision_v2'):
    source = rw.OFFICIAL[name]
    assert source.filename == f'resnet50-{source.sha256_prefix}.pth'


def test_pretrained_refuses_an_unknown_architecture(tmp_path):
  path = tmp_path / 'x.msgpack'
  path.write_bytes(b'\x80')
  (tmp_path / 'x.msgpack.json').write_text('{"architecture": "alexnet"}')
  with pytest.raises(ValueError, match="architecture 'alexnet'"):
    models.pretrained(str(path))


def test_warm_start_loads_params_and_batch_stats_into_the_train_state(sources, tmp_path):
  from mammo_jax import tasks, train, warm_start  # pylint: disable=g-import-not-at-top
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top
  _, files = sources.keras(include_top=True)
  config = load_config('resnet50_2', 'fe,smoke')
  config.model.pretrained = files['tf_keras']  # with its top, which model.dont_load skips
  model = train.create_model(config, tasks.get_task(config.task))
  state = train.create_train_state(jax.random.key(0), config, model, (32, 32, 1))
  state = warm_start.warm_start(config, str(tmp_path), state)
  source, _ = rw.port_file(files['tf_keras'], include_top=False)
  for collection, got in (('params', state.params), ('batch_stats', state.batch_stats)):
    jax.tree.map(np.testing.assert_array_equal, dict(got['resnet50']), source[collection])


def test_pretrained_refuses_a_file_that_does_not_fit_its_architecture(sources, tmp_path):
  _, files = sources.keras(include_top=False)
  out = tmp_path / 'r.msgpack'
  _port(files['tf_keras'], out)
  sidecar = json.loads((tmp_path / 'r.msgpack.json').read_text())
  (tmp_path / 'r.msgpack.json').write_text(json.dumps({**sidecar, 'variant': 'torchvision'}))
  with pytest.raises(ValueError, match=r'(?s)not a resnet50 backbone: .*unexpected .*'
                     r'conv1_conv/bias'):
    models.pretrained(str(out))
