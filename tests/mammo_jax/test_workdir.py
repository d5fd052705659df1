"""The workdir contract: strict JSON, config fingerprints, the same-config check, readers."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from mammo_jax import workdir
from tests.conftest import load_config


def _refuse(constant):
  raise ValueError(f'{constant} is not standard JSON')


def test_write_json_turns_undefined_metrics_into_null(tmp_path):
  path = str(tmp_path / 'results.json')
  workdir.write_json(path, {'test': {'auc': float('nan'), 'loss': np.float32(0.5),
                                     'bounds': [math.inf, -math.inf, np.float64('nan')]}})
  assert json.loads(open(path).read(), parse_constant=_refuse) == {
      'test': {'auc': None, 'bounds': [None, None, None], 'loss': 0.5}}


def test_metrics_log_writes_strict_lines_and_drops_what_followed_the_checkpoint(tmp_path):
  log = workdir.MetricsLog(str(tmp_path), resume_step=0)
  log.write(1, 'validation', {'loss': 0.7, 'auc': float('nan')}, epoch=0)
  log.write(2, 'validation', {'loss': 0.6, 'auc': 0.5}, epoch=1)
  lines = open(log.path).read().splitlines()
  assert [json.loads(line, parse_constant=_refuse)['metrics']['auc'] for line in lines] == [
      None, 0.5]
  workdir.MetricsLog(str(tmp_path), resume_step=1)  # a resumed run at step 1
  assert [json.loads(line)['step'] for line in open(log.path)] == [1]


def test_fingerprint_leaves_out_resumable_and_added_fields():
  config = load_config('scratch2', 'smoke')
  before = workdir.config_hash(config)
  config.unlock()
  config.data.num_workers = 7  # resumable
  config.evaluator = 'classification'  # fields added after runs were first written
  config.published = ml_collections.ConfigDict({'test_accuracy': 88.69})
  config.divergence_factor = 0.0  # only stops runs; existing workdirs must resume
  assert workdir.config_hash(config) == before
  config.optimizer.learning_rate = 0.5
  assert workdir.config_hash(config) != before
  flat = workdir.config_fingerprint({'published': {'x': 1}, 'divergence_factor': 100.0,
                                     'model': {'dont_load': 'fc', 'name': 'm'}})
  assert flat == {'model.name': 'm'}
  assert workdir.config_fingerprint({'ensemble': {'root': '/here', 'methods': 'vote:a+b'}}) == {
      'ensemble.methods': 'vote:a+b'}


def test_same_config_check_and_refusal(tmp_path):
  run = str(tmp_path)
  config = load_config('scratch2', 'smoke')
  assert workdir.config_differences(config, run) is None  # no config.json yet
  workdir.check_and_write_config(config, run, resuming=False)
  assert workdir.same_config(config, run)
  assert not workdir.finished_with(config, run)  # no results.json
  changed = load_config('scratch2', 'smoke')
  changed.optimizer.decay = 0.5
  assert workdir.config_differences(changed, run) == ['optimizer.decay']
  with pytest.raises(ValueError, match='different config .fields optimizer.decay.'):
    workdir.check_and_write_config(changed, run, resuming=True)
  workdir.check_and_write_config(changed, run, resuming=False)  # a fresh run may replace it
  assert workdir.same_config(changed, run)


def test_results_predictions_and_identity_round_trip(tmp_path):
  run = str(tmp_path)
  config = load_config('scratch2', 'smoke')
  workdir.write_config(config, run)
  probs = np.array([[0.2, 0.8], [0.9, 0.1]], np.float32)
  with pytest.raises(FileNotFoundError, match='predates predictions.npz'):
    workdir.read_predictions(run)
  workdir.write_predictions(run, {'test': np.array(['a', 'b'])},
                            {'test': (probs, np.array([1, 0]))}, {'test': np.array([2, 0])})
  workdir.write_results(run, {'task': 'mass_vs_calc', 'best_step': 6})
  assert workdir.finished_with(config, run)
  arrays = workdir.read_predictions(run)
  assert arrays['task'] == 'mass_vs_calc' and arrays['test_ids'].tolist() == ['a', 'b']
  np.testing.assert_array_equal(arrays['test_probs'], probs)
  identity = workdir.run_identity(run)
  assert identity['best_step'] == 6 and len(identity['config_sha256']) == 64
  other = str(tmp_path / 'next')
  os.makedirs(other)
  assert workdir.read_init_from(other) is None
  workdir.write_init_from(other, run)
  assert workdir.read_init_from(other) == {'init_from': run, **identity}
