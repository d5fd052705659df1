"""The port's command line, python -m mammo_jax.port_vgg16 SRC OUT [--format] [--notop]
[--overwrite]: its output files, messages and exit status."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mammo_jax import port_vgg16
from mammo_jax.weights import vgg16 as vw
from tests.conftest import ROOT
from tests.mammo_jax.weights.vgg16_sources import layers_to_params

NOTOP_PARAMS = 14_714_688  # docs/REFERENCE_STUDY.md §2.4


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
      'architecture': 'vgg16', 'format': 'keras_h5', 'source': os.path.basename(src),
      'source_sha256': sha256,
      'source_md5': hashlib.md5(open(src, 'rb').read()).hexdigest(), 'include_top': False,
      'preprocess': 'caffe', 'top_pool': None, 'fc_units': None, 'num_classes': None,
      'num_params': NOTOP_PARAMS, 'port_version': vw.PORT_VERSION,
      'mammo_jax_version': metadata['mammo_jax_version'],
      'params_sha256': hashlib.sha256(out.read_bytes()).hexdigest()}
  params, loaded_metadata = vw.load_params(str(out))
  assert loaded_metadata == metadata
  want = layers_to_params(layers)
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


def test_pretrained_gives_the_vgg16_base_of_new_and_older_ports(notop_h5, tmp_path, capsys):
  """models.pretrained: the sidecar's architecture, vgg16 when a file predates the field."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mammo_jax import models  # pylint: disable=g-import-not-at-top
  src, layers = notop_h5
  out = tmp_path / 'vgg16.msgpack'
  assert _run_cli(src, out, capsys=capsys)[0] == 0
  sidecar = json.loads(out.with_name('vgg16.msgpack.json').read_text())
  del sidecar['architecture']
  out.with_name('vgg16.msgpack.json').write_text(json.dumps(sidecar))
  module, variables = models.pretrained(str(out))
  assert not module.include_top
  x = jnp.ones((1, 32, 32, 3))
  want = module.apply({'params': layers_to_params(layers)}, x)
  np.testing.assert_array_equal(module.apply(variables, x), want)
