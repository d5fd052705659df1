"""The cv and repeat runners: member configs, summaries (mean ± SD, pooled predictions), config
checks, and smoke runs on the synthetic data whose second invocation reuses every member."""

import json
import os

import numpy as np
import pytest

from mammo_jax import config_checks
from mammo_jax import evaluators
from mammo_jax import input_pipeline
from mammo_jax import repeats
from mammo_jax import runners
from mammo_jax import train
from mammo_jax import workdir as workdir_lib
from mammo_jax.config_lib import repeats as repeat_configs
from tests.conftest import ROOT, load_config


def test_members_are_the_config_per_fold_or_seed_with_a_standalone_runs_identity():
  cv = load_config('cv', 'configs/scratch2.py:smoke')
  assert (cv.runner, cv.cv.folds) == ('cv', 5)
  members = repeat_configs.member_configs(cv)
  assert [n for n, _ in members] == [f'fold_{f}' for f in range(5)]
  for fold, (_, member) in enumerate(members):
    alone = load_config('scratch2', 'smoke')
    alone.data.protocol, alone.data.fold = 'kfold5', fold
    assert workdir_lib.config_hash(member) == workdir_lib.config_hash(alone)
    assert 'runner' not in member and 'cv' not in member
  repeat = load_config('repeat', 'configs/vgg16_2.py:pipeline,smoke')
  repeat.seed, repeat.repeat.seeds = 3, 2
  members = repeat_configs.member_configs(repeat)
  assert [(n, m.seed, m.pipeline, m.data.protocol) for n, m in members] == [
      ('seed_3', 3, repeat.pipeline, 'official'), ('seed_4', 4, repeat.pipeline, 'official')]
  assert runners.runner_name(members[0][1]) == 'stages'
  with pytest.raises(ValueError, match=r'^configs/cv.py:configs/lr_range.py:smoke: a cv run '
                                       r'trains a training config .* not a config of the '
                                       r'lr_range runner'):
    repeat_configs.wrap('cv', 'configs/lr_range.py:smoke', ROOT)


@pytest.mark.parametrize('name,field,value,message', [
    ('cv', 'cv.folds', 1, r'^config.cv.folds=1: accepted values are integers >= 2'),
    ('repeat', 'repeat.seeds', 0, r'^config.repeat.seeds=0: accepted values are integers >= 1'),
    ('cv', 'data.protocol', 'tfds', r"^config.data.protocol='tfds': the cv runner sets it"),
    ('repeat', 'batch_size', 0, r'^repeat member seed_0: config.batch_size=0: accepted values'),
    ('repeat', 'data.fold', 2, r'^repeat member seed_0: config.data.fold=2: accepted values '
                               r'are 0 \(protocol official has no folds\)'),
])
def test_bad_fields_are_refused_before_any_member_trains(name, field, value, message):
  config = load_config(name, 'configs/scratch2.py:smoke')
  node = config
  *parents, key = field.split('.')
  for part in parents:
    node = node[part]
  node[key] = value
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config)


def _finished_run(run_dir, test_ids, seed):
  """A finished two-class run whose test probabilities are seeded noise."""
  os.makedirs(run_dir)
  rng = np.random.default_rng(seed)
  ids = {'validation': np.array(['P_90000/v', 'P_90001/v', 'P_90002/v']),
         'test': np.array(test_ids)}
  label4 = {s: np.arange(len(v)) % 4 for s, v in ids.items()}
  outputs = {s: (rng.dirichlet(np.ones(2), len(v)).astype(np.float32), label4[s] // 2)
             for s, v in ids.items()}
  workdir_lib.write_predictions(run_dir, ids, outputs, label4)
  evaluator = evaluators.get_evaluator()
  results = {s: evaluator.evaluate(*outputs[s], ('MASS', 'CALCIFICATION')) for s in ids}
  workdir_lib.write_results(run_dir, {'task': 'mass_vs_calc', 'best_step': 2,
                                      'synthetic_data': True, **results})
  return outputs['test']


def test_summary_is_mean_sd_and_the_metrics_of_the_pooled_predictions(tmp_path):
  dirs = {'fold_0': str(tmp_path / 'fold_0'), 'fold_1': str(tmp_path / 'fold_1')}
  t = [f'P_{i:05d}/abnorm_1' for i in range(8)]  # bootstrap intervals need patients
  a = _finished_run(dirs['fold_0'], t[:4], 0)
  b = _finished_run(dirs['fold_1'], t[4:7], 1)
  evaluator = evaluators.get_evaluator()
  summary = repeats.summarise('cv', str(tmp_path), dirs, {'fold_0': True, 'fold_1': False},
                              evaluator, (2000, 0))
  accuracies = [workdir_lib.read_results(d)['test']['accuracy'] for d in dirs.values()]
  assert summary['mean_sd']['test']['accuracy'] == {
      'mean': pytest.approx(np.mean(accuracies)), 'sd': pytest.approx(np.std(accuracies, ddof=1)),
      'n': 2, 'values': accuracies}
  pooled = evaluator.evaluate(np.concatenate([a[0], b[0]]), np.concatenate([a[1], b[1]]),
                              ('MASS', 'CALCIFICATION'))
  intervals = summary['pooled']['test'].pop('ci95')
  assert summary['pooled']['test'].pop('ci_resamples') == 2000
  assert 'patient' in summary['pooled']['test'].pop('ci_method')
  assert 0 < summary['pooled']['test'].pop('ci_auc_skipped') < 2000  # 7 patients: one class
  assert summary['pooled']['test'] == pooled
  for metric in ('accuracy', 'balanced_accuracy', 'macro_f1', 'auc'):
    lo, hi = intervals[metric]
    assert lo <= pooled[metric] <= hi
  assert summary['pooled']['examples'] == 7 and summary['pooled']['kind'] == 'out-of-fold'
  with np.load(tmp_path / repeats.POOLED_NPZ) as f:
    assert f['test_ids'].tolist() == t[:7]
    assert f['test_member'].tolist() == ['fold_0'] * 4 + ['fold_1'] * 3
    np.testing.assert_array_equal(f['test_probs'], np.concatenate([a[0], b[0]]))
  assert [m['trained_now'] for m in summary['members'].values()] == [True, False]
  dirs['fold_2'] = str(tmp_path / 'fold_2')
  _finished_run(dirs['fold_2'], t[6:8], 2)
  with pytest.raises(ValueError, match=r'^1 test examples \(e.g. P_00006/abnorm_1\) are in the '
                                       'test split of more than one fold'):
    repeats.summarise('cv', str(tmp_path), dirs, dict.fromkeys(dirs, False), evaluator,
                      (2000, 0))
  seeds = repeats.summarise('repeat', str(tmp_path), dirs, dict.fromkeys(dirs, False), evaluator,
                            (2000, 0))
  assert seeds['pooled']['examples'] == 9 and seeds['pooled']['kind'] == 'all seeds'
  assert repeats.mean_and_sd([0.5, None])['sd'] is None


def _smoke(name, data_cache, count):
  config = load_config(name, 'configs/scratch2.py:smoke')
  config.data.cache_dir, config.data.num_workers, config.num_epochs = data_cache, 1, 1
  config[name]['folds' if name == 'cv' else 'seeds'] = count
  return config


def _refuse_training(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError('a finished member was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', refuse)


@pytest.mark.slow
def test_cv_smoke_run_holds_every_example_out_once_and_reuses_its_folds(tmp_path, data_cache,
                                                                        monkeypatch):
  config, workdir = _smoke('cv', data_cache, 2), str(tmp_path / 'cv')
  first = runners.run(config, workdir)
  assert all(m['trained_now'] for m in first['members'].values())
  member_tests = [workdir_lib.read_predictions(os.path.join(workdir, f'fold_{f}'))['test_ids']
                  for f in range(2)]
  assert not set(member_tests[0]) & set(member_tests[1])
  builder = input_pipeline.prepare_builder(config.data)
  every = {i.decode() for s in builder.info.splits
           for i in input_pipeline.load_split(builder, s, ('id',))['id']}
  assert set(member_tests[0]) | set(member_tests[1]) == every
  assert first['pooled']['examples'] == len(member_tests[0]) + len(member_tests[1])
  assert first['pooled']['test']['count'] == first['pooled']['examples']
  assert json.load(open(os.path.join(workdir, 'cv.json')))['mean_sd']['test']['accuracy'][
      'n'] == 2
  _refuse_training(monkeypatch)
  again = runners.run(config, workdir)
  assert not any(m['trained_now'] for m in again['members'].values())
  assert again['pooled'] == first['pooled'] and again['mean_sd'] == first['mean_sd']


@pytest.mark.slow
def test_repeat_smoke_run_trains_each_seed_and_reuses_them(tmp_path, data_cache, monkeypatch):
  config, workdir = _smoke('repeat', data_cache, 2), str(tmp_path / 'repeat')
  first = runners.run(config, workdir)
  assert list(first['members']) == ['seed_0', 'seed_1']
  assert all(m['trained_now'] for m in first['members'].values())
  seeds = [workdir_lib.read_config(os.path.join(workdir, n))['seed'] for n in first['members']]
  assert seeds == [0, 1]
  tests = [workdir_lib.read_predictions(os.path.join(workdir, n))['test_ids']
           for n in first['members']]
  np.testing.assert_array_equal(tests[0], tests[1])  # the same test split, twice
  assert first['pooled']['examples'] == 2 * len(tests[0])
  _refuse_training(monkeypatch)
  again = runners.run(config, workdir)
  assert not any(m['trained_now'] for m in again['members'].values())
  assert again['pooled'] == first['pooled']
