"""`python -m mammo_jax.main`: the synthetic-data path, reuse, and clear config errors."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run_main(tmp_path, *flags, **env_vars):
  env = dict(os.environ, MAMMO_JAX_CACHE=str(tmp_path / 'cache'), TF_CPP_MIN_LOG_LEVEL='3',
             NO_GCE_CHECK='true', TFDS_CBIS_WORKERS='1', **env_vars)
  return subprocess.run([sys.executable, '-m', 'mammo_jax.main', *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('main')
  first = run_main(tmp, '--config=configs/default.py:smoke', f'--workdir={tmp / "run1"}')
  return tmp, first


def test_smoke_run_builds_synthetic_data_and_says_so(smoke_run):
  tmp, done = smoke_run
  assert done.returncode == 0, done.stderr[-3000:]
  assert 'SYNTHETIC DATA' in done.stdout
  assert 'steps/s' in done.stdout and 'ETA' in done.stdout  # console progress
  results = json.loads((tmp / 'run1' / 'results.json').read_text())
  assert results['synthetic_data'] and results['test']['count'] == results['examples']['test']
  assert re.search(r'cbis_ddsm/roi150/\d+\.\d+\.\d+ in ', done.stdout) and 'train ' in done.stdout
  tree = next((tmp / 'cache' / 'synthetic').iterdir()) / 'cbis_ddsm'
  assert f'  CSVs from: {tree}\n' in done.stdout
  assert 'DICOM series in several copies' not in done.stdout  # none in a fresh tree
  report = json.loads((tmp / 'run1' / 'dataset_report.json').read_text())
  assert sum(report['examples'].values()) > 0
  config = json.loads((tmp / 'run1' / 'config.json').read_text())
  assert config['data']['synthetic']['patients'] == 12


def test_second_run_reuses_the_synthetic_tree_and_build(smoke_run):
  tmp, _ = smoke_run
  trees = list((tmp / 'cache' / 'synthetic').iterdir())
  manifest = trees[0] / 'cbis_ddsm' / 'synthetic_manifest.json'
  before = manifest.stat().st_mtime_ns
  again = run_main(tmp, '--config=configs/default.py:smoke', f'--workdir={tmp / "run2"}')
  assert again.returncode == 0, again.stderr[-3000:]
  assert manifest.stat().st_mtime_ns == before
  assert len(list((tmp / 'cache' / 'synthetic').iterdir())) == 1
  assert 'Downloading and preparing' in smoke_run[1].stdout
  assert 'Downloading and preparing' not in again.stdout  # TFDS reused the prepared dataset


def test_unknown_config_field_is_rejected(tmp_path):
  done = run_main(tmp_path, '--config=configs/default.py:smoke', '--config.data.manul_dir=/x',
                  f'--workdir={tmp_path / "w"}')
  assert done.returncode != 0
  assert 'manul_dir' in done.stderr


def test_manual_dir_without_cbis_ddsm_names_it(tmp_path):
  folder = tmp_path / 'not_cbis'
  folder.mkdir()
  (folder / 'readme.txt').write_text('holiday photos')
  done = run_main(tmp_path, '--config=configs/default.py:smoke',
                  f'--config.data.manual_dir={folder}', f'--config.data.data_dir={tmp_path}/d',
                  f'--workdir={tmp_path / "w"}')
  assert done.returncode != 0
  # The console ends with the error line, with no absl INFO line ('I1126 12:00:00.1 ...')
  # before it; those lines are kept in the log the message names.
  last = done.stderr.rstrip().splitlines()[-1]
  assert last.startswith(f'mammo_jax: error: manual_dir {folder} holds no CBIS-DDSM image')
  assert not re.search(r'^I\d{4} ', done.stderr, re.M), done.stderr
  log = (tmp_path / 'w' / 'error.log').read_text()
  assert last.endswith(f'(traceback in {tmp_path / "w" / "error.log"})')
  assert re.search(r'^I\d{4} .*cbis_ddsm: indexing DICOM headers under', log, re.M)
  assert log.index('indexing DICOM headers') < log.index('Traceback (most recent call last)')


def test_run_killed_by_sigkill_resumes_to_the_same_end(smoke_run):
  """SIGKILL after step 5 (checkpoints at steps 2, 3 and 4), then the same command again."""
  tmp, first = smoke_run
  assert first.returncode == 0, first.stderr[-3000:]
  flags = ('--config=configs/default.py:smoke', f'--workdir={tmp / "killed"}')
  killed = run_main(tmp, *flags, MAMMO_JAX_KILL_AFTER_STEP='5')
  assert killed.returncode == -9, killed.stderr[-3000:]
  assert not (tmp / 'killed' / 'results.json').exists()
  resumed = run_main(tmp, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resuming' in resumed.stdout and 'from step 4' in resumed.stdout
  for name in ('results.json', 'metrics.jsonl'):
    assert (tmp / 'killed' / name).read_text() == (tmp / 'run1' / name).read_text(), name
