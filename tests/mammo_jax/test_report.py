"""The report: rendered from finished workdirs (ensemble, single run), self-contained HTML,
the synthetic-data warning, and the study's numbers beside ours on real data."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mammo_jax import ensemble, report, train
from tests.conftest import ROOT, load_config
from tests.mammo_jax.test_ensemble import fake_train_and_evaluate, write_run


def fake_ensemble(workdir, monkeypatch, synthetic):
  """configs/ensemble4.py:smoke with instant fake training: a finished ensemble workdir."""
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train_and_evaluate([], synthetic))
  return ensemble.run(load_config('ensemble4', 'smoke'), str(workdir))


def test_report_renders_from_a_finished_ensemble_workdir(tmp_path, monkeypatch):
  summary = fake_ensemble(tmp_path / 'e', monkeypatch, synthetic=True)
  for name in ('report.md', 'report.html'):  # the run wrote them; the CLI writes them again
    os.remove(tmp_path / 'e' / name)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, '-m', 'mammo_jax.report', f'--workdir={tmp_path}/e'],
                        cwd=ROOT, env=env, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert f'{tmp_path}/e/report.html' in done.stdout
  md = (tmp_path / 'e' / 'report.md').read_text()
  page = (tmp_path / 'e' / 'report.html').read_text()
  assert 'SYNTHETIC DATA' in md and 'class="warning">SYNTHETIC DATA' in page
  assert '| model | config | task |' in md and '<table>' in page
  for member in ('m1', 'm2', 'm3', 'vgg'):
    assert f'<td>{member}</td>' in page
  for method in summary['methods']:
    assert f'<td>{method["name"]}</td>' in page
    assert f'{100 * method["test"]["accuracy"]:.2f}' in md
  assert 'study test acc' not in md  # no comparison on synthetic data
  # Self-contained: every image is a data URI, nothing is fetched.
  sources = re.findall(r'src="([^"]*)"', page)
  assert len(sources) == 8  # confusion + ROC of the four methods (fake members have none)
  assert all(s.startswith('data:image/png;base64,') for s in sources)
  assert 'href=' not in page
  assert md.count('](methods/') == 8  # markdown links the PNGs relative to the workdir


def test_real_data_report_puts_the_studys_numbers_beside_ours(tmp_path, monkeypatch):
  fake_ensemble(tmp_path / 'e', monkeypatch, synthetic=False)
  md = (tmp_path / 'e' / 'report.md').read_text()
  assert 'SYNTHETIC' not in md and 'study test acc %' in md
  rows = {line.split(' | ')[0].strip('| '): line for line in md.splitlines()
          if line.startswith('| ')}
  assert '57.74' in rows['m1'] and '61.01' in rows['m3'] and '59.23' in rows['vgg']
  assert '59.82' in rows['vote:m1+m2+m3'] and '61.31' in rows['average:m1+m2+m3+vgg']
  assert '62.50' in rows['weighted:m1+m2+m3+vgg'] and 'D3' in rows['weighted:m1+m2+m3+vgg']


def test_report_of_a_single_run_and_of_nothing(tmp_path):
  ids = {'validation': np.array(['a', 'b']), 'test': np.array(['c', 'd'])}
  label4 = {'validation': np.array([0, 2]), 'test': np.array([1, 3])}
  probs = {s: np.eye(2)[label4[s] // 2] for s in ids}
  write_run(str(tmp_path / 'run'), 'mass_vs_calc', ids, label4, probs)
  md_path, html_path = report.write_report(str(tmp_path / 'run'))
  md = open(md_path).read()
  assert '| run | fake | mass_vs_calc | 1 / 1 | 100.00 |' in md and os.path.exists(html_path)
  with pytest.raises(FileNotFoundError, match='holds no finished run'):
    report.write_report(str(tmp_path))


def test_study_keys_follow_the_config_files():
  key = lambda name, arg, run_dir='x': report.study_key(load_config(name, arg).to_dict(), run_dir)
  assert key('scratch2', 'exp9') == 'scratch2:exp9' and key('scratch4', 'm2') == 'scratch4:m2'
  assert key('benmal', 'run3') == 'benmal:run3'
  assert key('vgg16_2', 'ft2', 'runs/v/ft2') == 'vgg16_2:ft2'
  assert key('vgg16_4', 'ft3', 'runs/v/ft3') == 'vgg16_4:ft3'
  assert all(k in report.STUDY_MODELS for m in report.STUDY_METHODS for k in m[1])
