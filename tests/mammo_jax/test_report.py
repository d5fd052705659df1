"""The report: rendered from finished workdirs (ensemble, single run), self-contained HTML,
the synthetic-data warning, and the study's numbers beside ours on real data."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mammo_jax import ensemble, pipeline, report, train
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
  assert '57.74' in rows['m1'] and '61.01' in rows['m3'] and '56.85' in rows['vgg']
  assert '59.82' in rows['vote:m1+m2+m3'] and '61.31' in rows['average:m1+m2+m3+vgg']
  assert '62.50' in rows['weighted:m1+m2+m3+vgg'] and 'D3' in rows['weighted:m1+m2+m3+vgg']
  # The study's accuracies with their Wilson intervals: n = 336, the weighted one's 168.
  assert '61.31 (56.0–66.4)' in rows['m2']
  assert '62.50 (55.0–69.5)' in rows['weighted:m1+m2+m3+vgg']
  # Ours with their bootstrap intervals: 'acc % (lo–hi)'.
  assert re.search(r' \| \d+\.\d \(\d+\.\d–\d+\.\d\) \| ', rows['vote:m1+m2+m3'])


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


def test_published_numbers_come_from_the_config_files():
  published = lambda name, arg: load_config(name, arg).published.to_dict()
  assert published('scratch2', 'exp9') == {'validation_accuracy': 88.22, 'test_accuracy': 88.10,
                                          'test_auc': 0.948}
  assert published('scratch4', 'm2')['test_accuracy'] == 61.31
  assert published('benmal', 'run3,smoke')['test_accuracy'] == 69.05
  assert published('default', None) == published('scratch2', 'exp5')
  # A pipeline stage's config (its config.json) holds that stage's numbers.
  stages = dict(pipeline.stage_configs(load_config('vgg16_2', 'pipeline')))
  assert stages['ft2'].published.test_accuracy == 91.37 == published('vgg16_2', 'ft2')[
      'test_accuracy']
  assert stages['fe_hardaug'].published.validation_accuracy == 87.48
  assert published('ensemble4', 'study')['weighted:m1+m2+m3+vgg']['test_accuracy'] == 62.5
  assert 'product:type+severity' not in published('composite4', 'demo')


def test_ensemble_json_holds_the_published_numbers_of_members_and_methods(tmp_path,
                                                                           monkeypatch):
  summary = fake_ensemble(tmp_path / 'e', monkeypatch, synthetic=False)
  assert summary['members']['m2']['published']['test_accuracy'] == 61.31
  assert summary['members']['vgg']['published']['test_accuracy'] == 56.85  # demo's one stage
  methods = {m['name']: m['published'] for m in summary['methods']}
  assert methods['vote:m1+m2+m3'] == {'test_accuracy': 59.82, 'note': ''}
  # A member reused from a config.json written before config.published: numbers still shown.
  for name in ('report.md', 'report.html'):
    os.remove(tmp_path / 'e' / name)
  for root, _, files in os.walk(tmp_path / 'e' / 'members'):
    if 'config.json' in files:
      path = os.path.join(root, 'config.json')
      config = json.load(open(path))
      config.pop('published', None)
      json.dump(config, open(path, 'w'))
  report.write_report(str(tmp_path / 'e'))
  assert '57.74' in (tmp_path / 'e' / 'report.md').read_text()


def test_workdirs_written_before_published_existed_get_it_back_on_a_rerun(tmp_path, monkeypatch,
                                                                         capsys):
  """A reused member whose results hold a null AUC prints 'n/a'; an old member config.json
  (no `published`) is named in the report and refreshed by running the command again."""
  workdir = tmp_path / 'e'
  summary = fake_ensemble(workdir, monkeypatch, synthetic=False)
  m1 = workdir / summary['members']['m1']['run_dir']
  results = json.loads((m1 / 'results.json').read_text())
  results['test']['auc'] = None  # as strict JSON stores an undefined AUC
  (m1 / 'results.json').write_text(json.dumps(results))
  config = json.loads((m1 / 'config.json').read_text())
  del config['published']  # as a run written before the field existed
  (m1 / 'config.json').write_text(json.dumps(config))
  ensemble_json = json.loads((workdir / 'ensemble.json').read_text())
  for member in ensemble_json['members'].values():
    del member['published']
  (workdir / 'ensemble.json').write_text(json.dumps(ensemble_json))
  report.write_report(str(workdir))
  md = (workdir / 'report.md').read_text()
  assert 'm1: written before runs recorded the study\'s published numbers' in md
  assert '57.74' not in md.split('| m1 |')[1].split('\n')[0]
  capsys.readouterr()
  ensemble.run(load_config('ensemble4', 'smoke'), str(workdir))  # reuses every member
  out = capsys.readouterr().out
  assert 'member m1: finished' in out and re.search(r'member m1\s+\S+\s+\S+\s+n/a', out)
  assert json.loads((m1 / 'config.json').read_text())['published']['test_accuracy'] == 57.74
  md = (workdir / 'report.md').read_text()
  assert 'written before runs recorded' not in md and '57.74' in md
