"""The training core: smoke runs per family, device-count invariance, exact masked evaluation,
non-finite and diverged loss handling, and workdir/config checks."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import checkpointing, evaluation, input_pipeline, optimizers, parallel
from mammo_jax import preprocessing, tasks, train
from mammo_jax import workdir as workdir_lib
import tfds_cbis
from tests.conftest import ROOT, load_config


def smoke_config(name, arg, cache):
  config = load_config(name, arg)
  config.data.cache_dir = cache
  config.data.num_workers = 1
  return config


@pytest.mark.parametrize('name,arg,task,outputs', [
    ('scratch2', 'exp7,smoke', 'mass_vs_calc', 2),
    ('scratch4', 'smoke', 'four_class', 4),
    ('benmal', 'smoke', 'benign_vs_malignant', 2),
])
def test_smoke_run_per_family_writes_every_output(tmp_path, data_cache, name, arg, task,
                                                  outputs):
  workdir = str(tmp_path / 'run')
  state, summary = train.train_and_evaluate(smoke_config(name, arg, data_cache), workdir)
  assert int(state.step) == summary['steps_run'] > 0
  assert summary['task'] == task and summary['synthetic_data'] is True
  assert summary['test']['count'] == summary['examples']['test'] > 0  # every example, once
  assert np.array(summary['test']['confusion_matrix']).shape == (outputs, outputs)
  for f in ('config.json', 'metrics.jsonl', 'results.json', 'predictions.npz',
            'learning_curves.png', 'confusion_test.png', 'roc_test.png',
            'reliability_validation.png', 'reliability_test.png'):
    assert os.path.getsize(os.path.join(workdir, f)) > 0, f
  for split in ('validation', 'test'):  # intervals and calibration (mammo_jax.bootstrap)
    assert set(summary[split]['ci95']) == {'accuracy', 'balanced_accuracy', 'macro_f1', 'auc'}
    lo, hi = summary[split]['ci95']['accuracy']
    assert lo <= summary[split]['accuracy'] <= hi and summary[split]['ci_resamples'] == 2000
    assert 0 <= summary[split]['ece'] <= 1 and 'temperature_scaled' not in summary[split]
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir + '/tensorboard'))
  records = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  assert {r['split'] for r in records} == {'train', 'validation', 'test'}
  assert [r['epoch'] for r in records if r['split'] == 'validation'] == [0, 1]
  predictions = np.load(os.path.join(workdir, 'predictions.npz'))
  assert predictions['test_probs'].shape == (summary['examples']['test'], outputs)
  assert predictions['test_ids'].shape == predictions['test_label4'].shape == (
      summary['examples']['test'],)
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['best_step'] in {r['step'] for r in records if r['split'] == 'validation'}
  assert_strict_json(workdir)


def _refuse(constant):
  raise ValueError(f'{constant} is not standard JSON')


def assert_strict_json(workdir: str) -> None:
  """Every .json / .jsonl file under workdir parses without NaN or Infinity."""
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      if name.endswith('.json'):
        json.loads(open(path).read(), parse_constant=_refuse)
      elif name.endswith('.jsonl'):
        for line in open(path):
          json.loads(line, parse_constant=_refuse)


def test_same_global_batch_gives_same_update_on_1_2_and_8_devices(tmp_path):
  """Subprocesses with 1, 2 and 8 fake CPU devices run the same steps and evaluation."""
  procs = {}
  for n in (1, 2, 8):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={n}',
               TF_CPP_MIN_LOG_LEVEL='3')
    procs[n] = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tests', 'mammo_jax', 'multi_device_steps.py'),
         str(tmp_path / f'd{n}.npz')], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  for n, p in procs.items():
    assert p.wait(timeout=600) == 0, p.stderr.read()[-3000:]
  runs = {n: (np.load(tmp_path / f'd{n}.npz'), json.load(open(tmp_path / f'd{n}.npz.json')))
          for n in procs}
  ref_arrays, ref = runs[1]
  for n in (2, 8):
    arrays, out = runs[n]
    assert out['devices'] == n
    np.testing.assert_allclose(out['losses'], ref['losses'], rtol=1e-5)
    for key in ref_arrays.files:  # params after the update, BatchNorm statistics, eval probs
      np.testing.assert_allclose(arrays[key], ref_arrays[key], rtol=1e-5, atol=1e-6,
                                 err_msg=f'{key} on {n} devices')
    assert out['eval']['count'] == 11
    assert out['eval']['confusion_matrix'] == ref['eval']['confusion_matrix']
    np.testing.assert_allclose(out['eval']['loss'], ref['eval']['loss'], rtol=1e-5)


class ConstantLogits(nn.Module):
  """Ignores its input: the evaluation arithmetic can then be computed by hand."""
  logits: tuple

  @nn.compact
  def __call__(self, x, train=False):
    del train
    bias = self.param('bias', lambda *_: jnp.asarray(self.logits, jnp.float32))
    return jnp.broadcast_to(bias, (x.shape[0], len(self.logits)))


@pytest.mark.parametrize('task_name,logits', [('four_class', (0.5, 2.0, -1.0, 0.0)),
                                              ('mass_vs_calc', (0.7,))])
def test_masked_evaluation_counts_every_example_once(task_name, logits):
  task = tasks.get_task(task_name)
  model = ConstantLogits(logits)
  config = load_config('default')
  state = train.create_train_state(jax.random.key(0), config, model, (8, 8, 1))
  labels = np.array([0, 1, 2, 3, 1, 1, 0, 3, 2, 1, 1], np.int32)  # 11: the last batch is padded
  data = {'image': np.zeros((11, 8, 8, 1), np.uint16), 'label': labels}
  values, probs, target = evaluation.evaluate(train.make_eval_step(task), state, data, 4, task)
  y = np.asarray(task.target(labels))
  if task.num_outputs == 1:
    p = 1 / (1 + np.exp(-logits[0]))
    expected_loss = -np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))
    predicted = int(p > 0.5)
  else:
    log_softmax = np.array(logits) - np.log(np.sum(np.exp(logits)))
    expected_loss = -np.mean(log_softmax[y])
    predicted = int(np.argmax(logits))
  assert values['count'] == 11 and len(probs) == 11 and list(target) == list(y)
  np.testing.assert_allclose(values['loss'], expected_loss, rtol=1e-6)
  assert values['accuracy'] == pytest.approx(np.mean(y == predicted))
  confusion = np.array(values['confusion_matrix'])
  assert confusion.sum() == 11 and confusion[:, predicted].sum() == 11
  assert list(confusion[:, predicted]) == list(np.bincount(y, minlength=len(confusion)))


def test_epoch_order_is_a_function_of_seed_and_epoch():
  a = input_pipeline.epoch_order(10, 3, seed=0, epoch=4)
  assert a.shape == (3, 3) and len(set(a.ravel())) == 9
  np.testing.assert_array_equal(a, input_pipeline.epoch_order(10, 3, seed=0, epoch=4))
  assert not np.array_equal(a, input_pipeline.epoch_order(10, 3, seed=0, epoch=5))
  data = {'label': np.arange(10)}
  stream = input_pipeline.train_batches(data, 3, seed=0)
  batches = [next(stream)['label'] for _ in range(7)]  # 3 steps per epoch
  resumed = input_pipeline.train_batches(data, 3, seed=0, start_step=4)
  np.testing.assert_array_equal(next(resumed)['label'], batches[4])
  with pytest.raises(ValueError, match='fewer than batch_size=16'):
    input_pipeline.steps_per_epoch(10, 16)


def test_eval_batches_pad_and_mask():
  data = {'image': np.ones((5, 2, 2, 1), np.uint16), 'label': np.arange(5)}
  batches = list(input_pipeline.eval_batches(data, 4))
  assert [b['mask'].tolist() for b in batches] == [[True] * 4, [True, False, False, False]]
  assert batches[1]['label'].tolist() == [4, 0, 0, 0]


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_cache):
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.optimizer.learning_rate = 1e30  # the first update blows the weights up
  config.checkpoint_every_steps = 1
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError, match=r'training loss is (nan|inf) at step 2; '
                     r'stopped\. The last good checkpoint \(step 1\)'):
    train.train_and_evaluate(config, workdir)
  ckpt = checkpointing.Checkpoints(workdir)
  assert ckpt.latest_step() == 1
  model = train.create_model(config, tasks.get_task(config.task))
  target = train.create_train_state(jax.random.key(0), config, model, (150, 150, 1))
  state, loop = ckpt.restore_latest(target, {})
  assert int(state.step) == 1 and loop['epoch'] == 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_non_finite_loss_is_caught_between_sparse_metric_reads(tmp_path, data_cache):
  """Metrics are read back only at logs, epoch ends and checkpoints; the first bad step is
  still the one named, and nothing after it is saved."""
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.optimizer.learning_rate = 1e30
  config.checkpoint_every_steps = 0
  config.log_every_steps = 100  # the first read is at the end of epoch 0 (step 3)
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError, match=r'training loss is (nan|inf) at step 2; '
                     r'stopped\. No checkpoint had been written yet'):
    train.train_and_evaluate(config, workdir)
  assert checkpointing.Checkpoints(workdir).latest_step() is None


def test_loss_stop_message_names_non_finite_and_diverged_losses():
  stop = train.loss_stop_message
  assert stop(float('nan'), 4, 0.7, 100.0, 0.69) == 'training loss is nan at step 4; stopped.'
  assert stop(float('inf'), 4, None, 0.0, 0.69) == 'training loss is inf at step 4; stopped.'
  assert stop(69.0, 5, 0.5, 100.0, 0.69) is None  # under 100 x max(0.5, 0.69)
  assert stop(70.0, 5, 0.5, 100.0, 0.69) == (
      'training loss is 70 at step 5, over divergence_factor=100 times its early level 0.69: '
      'diverged; stopped.')
  assert stop(130.0, 5, 1.4, 100.0, 0.69) is None  # the early level, when above the floor
  assert 'over divergence_factor=100 times its early level 1.4:' in stop(150.0, 5, 1.4, 100.0,
                                                                          0.69)
  assert stop(1e9, 5, 0.5, 0.0, 0.69) is None  # factor 0: only NaN/inf stops
  assert stop(1e9, 1, None, 100.0, 0.69) is None  # the first step has no early level yet


def test_diverging_loss_stops_and_keeps_the_last_sane_checkpoint(tmp_path, data_cache):
  """A negative learning rate climbs 0.6, 33, 333, ...: step 3 is over 100 x ln 2, and the
  checkpoint of step 2 (checkpoint_every_steps=2) is the one kept."""
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.optimizer.learning_rate = -1e-2
  assert config.divergence_factor == 100  # the default: the study's runs stay far below it
  workdir = str(tmp_path / 'run')
  with pytest.raises(FloatingPointError, match=r'training loss is [\d.e+]+ at step 3, over '
                     r'divergence_factor=100 times its early level 0\.6931: diverged; stopped\. '
                     r'The last good checkpoint \(step 2\)'):
    train.train_and_evaluate(config, workdir)
  ckpt = checkpointing.Checkpoints(workdir)
  assert ckpt.latest_step() == 2 and not os.listdir(ckpt.best_dir)
  # The loop state written before early_loss existed still resumes; factor 0 then lets the same
  # config run to its end, so the check is what stopped it.
  model = train.create_model(config, tasks.get_task(config.task))
  target = train.create_train_state(jax.random.key(0), config, model, (150, 150, 1))
  state, loop = ckpt.restore_latest(target, {})
  assert loop['early_loss'] == {'lowest': pytest.approx(0.625, abs=0.05), 'steps': 2}
  del loop['early_loss']
  shutil.rmtree(ckpt.latest_dir)
  checkpointing.Checkpoints(workdir).save_latest(2, state, loop)
  config.divergence_factor = 0.0  # not part of the fingerprint: the workdir resumes
  _, summary = train.train_and_evaluate(config, workdir)
  assert summary['steps_run'] == 6 and summary['stop_reason'] == 'reached num_epochs=2'


def test_resuming_a_workdir_with_another_config_is_refused(tmp_path, data_cache):
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.num_epochs = 1
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  config.optimizer.learning_rate = 0.5
  with pytest.raises(ValueError, match=r'different config \(fields optimizer.learning_rate\)'):
    train.train_and_evaluate(config, workdir)


def test_a_run_that_failed_on_its_config_can_be_fixed_in_the_same_workdir(tmp_path, data_cache):
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.batch_size = 64
  workdir = str(tmp_path / 'run')
  with pytest.raises(ValueError, match='fewer than batch_size=64; lower --config.batch_size'):
    train.train_and_evaluate(config, workdir)
  config.batch_size = 4
  config.num_train_steps = 1
  _, summary = train.train_and_evaluate(config, workdir)
  assert summary['steps_run'] == 1 and summary['stop_reason'] == 'reached num_train_steps=1'


def test_config_arguments_and_unknown_fields():
  assert load_config('scratch2').model.name == 'scratch2_exp5'
  assert load_config('scratch2', 'exp9').l2 > 0
  assert load_config('scratch2', 'exp8').optimizer.name == 'adam'
  assert load_config('scratch4').optimizer.decay == 5e-4
  assert load_config('benmal', 'run3').seed == 3
  for name, bad in (('scratch2', 'exp12'), ('scratch4', 'm4'), ('benmal', 'run1,exp5')):
    with pytest.raises(ValueError, match='takes one of'):
      load_config(name, bad)
  config = load_config('scratch2', 'smoke')
  with pytest.raises(AttributeError, match='lerning_rate'):
    config.optimizer.lerning_rate = 1.0
  with pytest.raises(ValueError, match='unknown optimizer.name'):
    config.optimizer.name = 'adagrad'
    optimizers.create_optimizer(config.optimizer)


def test_every_registered_model_matches_a_task_in_some_config():
  for name, arg in (('scratch2', f'exp{i}') for i in range(12)):
    config = load_config(name, arg)
    train.create_model(config, tasks.get_task(config.task))
  config = load_config('scratch2')
  config.task = 'four_class'
  with pytest.raises(ValueError, match='has 1 outputs but task four_class needs 4'):
    train.create_model(config, tasks.get_task(config.task))


def test_l2_penalty_covers_every_kernel():
  params = {'conv0': {'kernel': jnp.ones((3, 3, 1, 2)), 'bias': jnp.ones(2)},
            'fc': {'kernel': 2 * jnp.ones((4, 1))}}
  assert float(train.l2_penalty(params, 0.1)) == pytest.approx(0.1 * (18 + 16))


def test_standardize_normalises_each_image_on_its_own():
  rng = np.random.default_rng(0)
  grey = rng.integers(10000, 20000, (3, 8, 8, 1)).astype(np.uint16)
  grey[2] = 15000  # a flat patch stays zeros, not amplified noise
  out = np.asarray(preprocessing.preprocess(jnp.asarray(grey), 'standardize'))
  assert out.shape == (3, 8, 8, 3) and np.all(out[..., 0] == out[..., 2])
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  g = grey[:2].astype(np.float64) * 255 / 65535
  std = g.std(axis=(1, 2, 3))
  np.testing.assert_allclose(out[:2].std(axis=(1, 2, 3)), std / (std + 1.0), rtol=1e-5)
  assert np.abs(out[2]).max() < 1e-4  # float32 rounding of mean - pixel
  # A brighter copy of an image (every pixel + 5000) gives the same input.
  brighter = np.asarray(preprocessing.preprocess(jnp.asarray(grey[:1] + 5000), 'standardize'))
  np.testing.assert_allclose(brighter, out[:1], atol=1e-5)
  # Augmentation works in the same 0..255 grey space as Shen's.
  np.testing.assert_array_equal(preprocessing.scale(jnp.asarray(grey), 'standardize'),
                                preprocessing.scale(jnp.asarray(grey), 'shen'))


def test_preprocess_scales_uint16_to_unit_interval():
  x = jnp.array([0, 32768, 65535], jnp.uint16)
  np.testing.assert_allclose(preprocessing.preprocess(x, 'unit'), [0, 32768 / 65535, 1])
  with pytest.raises(ValueError, match='unknown model.preprocess'):
    preprocessing.preprocess(x, 'imagenet')


def test_batch_sizes_must_split_over_devices(monkeypatch):
  monkeypatch.setattr(parallel, 'device_count', lambda: 8)
  parallel.check_batch_size(16)
  with pytest.raises(ValueError, match='batch_size=12 does not split evenly over the 8'):
    parallel.check_batch_size(12)


def _files(workdir):
  return {os.path.join(r, n): open(os.path.join(r, n), 'rb').read()
          for r, _, names in os.walk(workdir) for n in names}


def test_a_run_records_its_data_and_another_dataset_is_refused(tmp_path, data_cache):
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  config.num_train_steps = 1
  workdir = str(tmp_path / 'run')
  _, summary = train.train_and_evaluate(config, workdir)
  report_path = os.path.join(workdir, 'dataset_report.json')
  report = json.load(open(report_path))
  prov = report['provenance']
  assert 'synthetic' in prov['source']
  assert summary['data_provenance'] == prov['provenance_id']
  assert json.load(open(os.path.join(workdir, 'results.json')))['data_provenance'] == \
      prov['provenance_id']
  # The workdir's run was on another dataset: refused, naming both, nothing touched.
  report['provenance'] = dict(prov, provenance_id='0123456789ab',
                              source={'manual_dir': '/data/elsewhere'})
  with open(report_path, 'w') as f:
    json.dump(report, f)
  before = _files(workdir)
  with pytest.raises(ValueError, match=r'another dataset \(provenance 0123456789ab: manual_dir '
                     r'/data/elsewhere\) than this one \(provenance \w+: synthetic data'):
    train.train_and_evaluate(config, workdir)
  assert _files(workdir) == before
  # A workdir from before provenance existed: accepted, and its provenance recorded.
  del report['provenance']
  with open(report_path, 'w') as f:
    json.dump(report, f)
  train.train_and_evaluate(config, workdir)
  report = json.load(open(report_path))
  assert report['provenance'] == prov
  # The dataset's name and version are recorded; a run on another version is refused to
  # resume, and is not reused as finished.
  assert report['dataset'] == f'{config.data.name}/{tfds_cbis.VERSION}'
  assert workdir_lib.finished_with(config, workdir)
  report['dataset'] = f'{config.data.name}/1.0.0'
  with open(report_path, 'w') as f:
    json.dump(report, f)
  before = _files(workdir)
  assert not workdir_lib.finished_with(config, workdir)
  with pytest.raises(ValueError, match=f'holds a run on {config.data.name}/1.0.0, not '
                     f'{config.data.name}/{tfds_cbis.VERSION} \\(another version'):
    train.train_and_evaluate(config, workdir)
  assert _files(workdir) == before


def test_a_build_of_another_source_in_data_dir_is_not_reused(data_cache, tmp_path):
  config = smoke_config('scratch2', 'exp0,smoke', data_cache)
  tree = input_pipeline.synthetic_tree(config.data)
  data_dir = os.path.join(os.path.dirname(tree), 'tensorflow_datasets')
  input_pipeline.prepare_builder(config.data)  # the synthetic build, in data_dir
  with config.unlocked():
    config.data.manual_dir, config.data.data_dir = tree, data_dir
  input_pipeline.prepare_builder(config.data)  # the same source: reused
  other = tmp_path / 'download'
  other.mkdir()
  config.data.manual_dir = str(other)
  with pytest.raises(ValueError, match=rf'{data_dir}.* holds a build of synthetic data \(.*\), '
                     rf'not of manual_dir {other}; use another data_dir \(tfds build --data_dir, '
                     rf'mammo_jax --config.data.data_dir\) or delete'):
    input_pipeline.prepare_builder(config.data)
