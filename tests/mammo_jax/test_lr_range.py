"""The LR range test: its schedule, stop rule and suggestion rule, the config, and smoke runs."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mammo_jax import augment, input_pipeline, lr_range, optimizers
from tests.conftest import load_config


def smoke_config(arg, cache):
  config = load_config('lr_range', arg)
  config.data.cache_dir = cache
  config.data.num_workers = 1
  return config


def test_schedule_is_start_lr_times_factor_to_the_epoch_at_the_right_steps():
  steps = 7
  schedule = jax.jit(lr_range.epoch_schedule(1e-5, 1.1, steps))
  for step in (0, 1, 6, 7, 13, 14, 20, 21, 59 * steps, 59 * steps + 6, 299 * steps):
    expected = 1e-5 * 1.1**(step // steps)
    np.testing.assert_allclose(float(schedule(jnp.int32(step))), expected, rtol=1e-5)
  assert lr_range.epoch_lr(1e-5, 1.1, 2) == pytest.approx(1.21e-5)


@pytest.mark.parametrize('name,start_lr,epochs,last_lr', [
    ('sgd', 1e-3, 60, 0.2768), ('rmsprop', 1e-5, 50, 1.067e-3), ('adam', 1e-6, 83, 2.479e-3),
    ('nadam', 1e-6, 86, 3.299e-3)])
def test_epochs_are_zero_based_like_the_studys_table(name, start_lr, epochs, last_lr):
  """The study's 'epochs run' and 'last LR' agree with lr = start x 1.1^e, e from 0."""
  assert lr_range.epoch_lr(start_lr, 1.1, epochs - 1) == pytest.approx(last_lr, rel=1e-3)
  assert load_config('lr_range').published[name].epochs_run == epochs


@pytest.mark.parametrize('name', ['sgd', 'rmsprop', 'adam', 'nadam'])
def test_keras_optimizers_apply_the_epoch_rate_from_the_first_update(name):
  """Scheduled updates = schedule(n) x the same optimizer's updates at rate 1, update by
  update (the rate only scales Keras's step), compiled once for every epoch."""
  steps = 3
  schedule = lr_range.epoch_schedule(1e-2, 1.1, steps)
  scheduled = optimizers.keras_optimizer(name, schedule)
  unit = optimizers.keras_optimizer(name, 1.0)
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  s_state, u_state = scheduled.init(params), unit.init(params)
  s_update, u_update = jax.jit(scheduled.update), jax.jit(unit.update)
  for n in range(3 * steps + 1):
    grads = {'w': jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    s_out, s_state = s_update(grads, s_state, params)
    u_out, u_state = u_update(grads, u_state, params)
    np.testing.assert_allclose(s_out['w'], 1e-2 * 1.1**(n // steps) * u_out['w'], rtol=2e-5)
  assert s_update._cache_size() == 1  # pylint: disable=protected-access


def test_keras_optimizer_checks_its_arguments():
  with pytest.raises(ValueError, match='unknown optimizer'):
    optimizers.keras_optimizer('adagrad', 1e-3)
  with pytest.raises(ValueError, match='sgd only'):
    optimizers.keras_optimizer('adam', 1e-3, momentum=0.9)
  with pytest.raises(ValueError, match='fold it into the schedule'):
    optimizers.keras_rmsprop(lambda count: 1e-3, decay=1e-3)


@pytest.mark.parametrize('losses,stop', [
    ([0.70, 0.65, 0.59, 0.62, 0.68, 0.70, 0.50], 5),  # below 0.60, later above 0.69
    ([0.80, 0.55, 0.95], 2),
    ([0.59, 0.69, 0.6901], 2),  # 0.69 itself does not stop
    ([0.70, 0.65, 0.61, 0.75, 0.90, 2.0], None),  # never below 0.60: no stop
    ([0.60, 0.70, 0.80], None),  # 0.60 itself does not arm the rule
    ([0.75, 0.70, 0.58, 0.55], None),  # above 0.69 only before going below 0.60
    ([0.70, 0.65, float('nan'), 0.5], 2),  # non-finite: stop at once
    ([0.50, float('inf')], 1),
    ([], None),
])
def test_stop_rule_on_hand_made_losses(losses, stop):
  assert lr_range.stop_epoch(losses, 0.60, 0.69) == stop


def test_stop_rule_gives_a_reason():
  rule = lr_range.StopRule(0.60, 0.69)
  assert rule.update(0.7) is None and rule.update(0.5) is None
  assert '> 0.69' in rule.update(0.8)
  assert 'non-finite' in lr_range.StopRule(0.6, 0.69).update(math.nan)


def test_running_median_is_centred_and_keeps_the_ends():
  values = [5.0, 1.0, 2.0, 9.0, 3.0, 4.0, 0.0]
  # Windows: [5], [5 1 2], [5 1 2 9 3], [1 2 9 3 4], [2 9 3 4 0], [3 4 0], [0].
  np.testing.assert_array_equal(lr_range.running_median(values, 5),
                                [5.0, 2.0, 3.0, 3.0, 3.0, 3.0, 0.0])
  np.testing.assert_array_equal(lr_range.running_median(values, 1), values)


def _synthetic_sweep(minimum_lr=3e-4, epochs=100, seed=0):
  """A study-like curve: flat, a dip centred on `minimum_lr`, a rise, a final spike."""
  lrs = lr_range.epoch_lr(1e-6, 1.1, np.arange(epochs))
  x = np.log10(lrs / minimum_lr)
  losses = 0.69 - 0.3 * np.exp(-(x / 0.8)**2) + np.random.default_rng(seed).normal(
      0, 0.01, epochs)
  losses[-1] = 7.5  # the diverged epoch the stop rule ends on
  losses[20] = 0.05  # one freak epoch early on
  return lrs, losses


def test_suggestion_is_the_smoothed_minimum_divided_by_the_divisor():
  lrs, losses = _synthetic_sweep()
  out = lr_range.suggest(lrs, losses, window=5, divisor=3.0)
  # The raw minimum is the freak epoch; the running median ignores it.
  assert out['lr_at_min_loss'] == lrs[20] and out['min_loss'] == 0.05
  assert 3e-4 / 1.1**3 <= out['lr_at_min_smoothed_loss'] <= 3e-4 * 1.1**3
  assert out['suggested_lr'] == pytest.approx(out['lr_at_min_smoothed_loss'] / 3.0)
  assert out['steepest_lr'] < out['lr_at_min_smoothed_loss']
  assert out['minimum_at_end'] is False
  assert lr_range.suggest(lrs, losses, 5, 10.0)['suggested_lr'] == pytest.approx(
      out['lr_at_min_smoothed_loss'] / 10.0)


def test_suggestion_edge_cases():
  lrs = lr_range.epoch_lr(1e-3, 1.1, np.arange(6))
  falling = lr_range.suggest(lrs, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4], 5, 3.0)
  assert falling['minimum_at_end'] is True  # a lower bound, flagged
  with_nan = lr_range.suggest(lrs, [0.7, 0.6, 0.5, 0.55, 0.65, math.nan], 3, 3.0)
  assert with_nan['lr_at_min_smoothed_loss'] == lrs[2]  # the NaN epoch is left out
  none = lr_range.suggest(lrs[:2], [math.nan, math.nan], 5, 3.0)
  assert none['suggested_lr'] is None and none['steepest_lr'] is None
  single = lr_range.suggest(lrs[:1], [0.7], 5, 3.0)
  assert single['suggested_lr'] == pytest.approx(lrs[0] / 3) and single['steepest_lr'] is None


def test_config_holds_the_studys_settings():
  config = load_config('lr_range')
  cfg = config.lr_range
  assert config.runner == 'lr_range' and config.task == 'mass_vs_calc'
  assert cfg.optimizers == 'sgd,rmsprop,adam,nadam'
  assert dict(cfg.start_lrs) == {'sgd': 1e-3, 'rmsprop': 1e-5, 'adam': 1e-6, 'nadam': 1e-6}
  assert (cfg.factor, cfg.max_epochs, cfg.stop_below, cfg.stop_above) == (1.1, 300, 0.6, 0.69)
  assert config.num_epochs == 300 and cfg.dropout == 0.0 and config.batch_size == 128
  assert config.model.name == 'scratch2_exp4'
  spec = augment.AugmentSpec.from_config(config.augment)
  assert spec == augment.STUDY_SETTINGS['E']
  assert load_config('lr_range', 'adam').lr_range.optimizers == 'adam'
  smoke = load_config('lr_range', 'nadam,smoke')
  assert smoke.lr_range.max_epochs == smoke.num_epochs == 3 and smoke.batch_size == 4
  with pytest.raises(ValueError, match='takes one of'):
    load_config('lr_range', 'adagrad')


def test_optimizer_names_are_checked():
  config = ml_collections.ConfigDict({'lr_range': {'optimizers': 'adam, sgd,adam',
                                                   'start_lrs': {'adam': 1e-6, 'sgd': 1e-3}}})
  assert lr_range.optimizer_names(config) == ['adam', 'sgd']
  config.lr_range.optimizers = 'adam,adagrad'
  with pytest.raises(ValueError, match='comma-separated subset'):
    lr_range.optimizer_names(config)
  config.lr_range.optimizers = 'rmsprop'
  with pytest.raises(ValueError, match='no start LR for rmsprop'):
    lr_range.optimizer_names(config)


def _records(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_smoke_run_writes_the_sweep_plots_and_suggestion(tmp_path, data_cache, capsys):
  workdir = str(tmp_path / 'lr')
  result = lr_range.run(smoke_config('rmsprop,smoke', data_cache), workdir)
  for f in ('config.json', 'lr_range.json', 'lr_range.png', 'rmsprop/lr_range.jsonl',
            'rmsprop/lr_range.png'):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  with open(os.path.join(workdir, 'lr_range.json')) as f:
    assert json.load(f) == json.loads(json.dumps(result))
  assert list(result['optimizers']) == ['rmsprop'] and result['synthetic_data'] is True
  summary = result['optimizers']['rmsprop']
  assert summary['total_params'] == 1_868_385  # Exp 4 without dropout, as in the study
  records = _records(os.path.join(workdir, 'rmsprop', 'lr_range.jsonl'))
  assert [r['epoch'] for r in records] == [0, 1, 2] == list(range(summary['epochs_run']))
  steps = summary['steps_per_epoch']
  for r in records:
    assert r['learning_rate'] == pytest.approx(1e-5 * 1.1**r['epoch'])
    assert r['step'] == (r['epoch'] + 1) * steps and np.isfinite(r['loss'])
  assert summary['stop_reason'] == 'reached max_epochs=3'
  assert summary['suggested_lr'] == pytest.approx(summary['lr_at_min_smoothed_loss'] / 3.0)
  assert summary['study']['chosen_lr'] == 1e-4
  assert 'rmsprop    1e-05' in capsys.readouterr().out  # the summary table


def test_sweep_reads_the_train_split_of_the_protocol_at_the_image_size(tmp_path, data_cache):
  """What training would read: the train split of data.protocol and data.fold, resized to
  data.image_size (the official split at the built size was read before, whatever the config)."""
  config = smoke_config('rmsprop,smoke', data_cache)
  config.lr_range.max_epochs = 1
  config.data.protocol, config.data.image_size = 'kfold3', 32
  builder = input_pipeline.prepare_builder(config.data)
  official = len(input_pipeline.load_split(builder, 'train')['label'])
  sizes = {}
  for fold in range(3):  # a fold whose train split differs in size from the official one
    config.data.fold = fold
    sizes[fold] = len(input_pipeline.load_splits(builder, config.data)[0]['train']['label'])
  config.data.fold = next(f for f, n in sizes.items() if n != official)
  result = lr_range.run(config, str(tmp_path / 'lr'))
  examples = sizes[config.data.fold]
  assert result['train_examples'] == examples
  assert (result['protocol'], result['fold'], result['image_shape']) == (
      'kfold3', config.data.fold, [32, 32, 1])
  summary = result['optimizers']['rmsprop']
  assert summary['steps_per_epoch'] == input_pipeline.steps_per_epoch(examples, config.batch_size)
  assert summary['total_params'] != 1_868_385  # Exp 4's dense layer sees 32x32 inputs


@pytest.mark.slow
def test_all_optimizers_sweep_deterministically(tmp_path, data_cache):
  """A sweep from the same seed logs the same epochs whether it runs alone or after others."""
  config = smoke_config('smoke', data_cache)
  every = lr_range.run(config, str(tmp_path / 'all'))
  assert list(every['optimizers']) == ['sgd', 'rmsprop', 'adam', 'nadam']
  assert os.path.getsize(tmp_path / 'all' / 'lr_range.png') > 0
  config.unlock().lr_range.optimizers = 'nadam'
  alone = lr_range.run(config, str(tmp_path / 'nadam'))
  assert (_records(tmp_path / 'all' / 'nadam' / 'lr_range.jsonl')
          == _records(tmp_path / 'nadam' / 'nadam' / 'lr_range.jsonl'))
  for summary in (every, alone):
    summary['optimizers']['nadam'].pop('seconds')
  assert every['optimizers']['nadam'] == alone['optimizers']['nadam']
