"""Runs of several processes: each process's share of the global batches, the gathering of
evaluation outputs, the flags that join processes, and 2 processes over localhost against 1
process with 2 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mammo_jax import distributed, input_pipeline, parallel, workdir_lock
from tests.conftest import ROOT


def as_process(monkeypatch, index: int, count: int) -> None:
  monkeypatch.setattr(jax, 'process_index', lambda: index)
  monkeypatch.setattr(jax, 'process_count', lambda: count)


def test_process_shares_tile_every_global_batch(monkeypatch):
  data = {'image': np.arange(30)[:, None] * 10, 'label': np.arange(30)}
  whole_train = list(zip(range(5), input_pipeline.train_batches(data, 8, seed=3, start_step=2)))
  whole_eval = list(input_pipeline.eval_batches(data, 8))  # 4 batches, the last with 6 real
  shares_train, shares_eval = [], []
  for i in range(4):
    as_process(monkeypatch, i, 4)
    rows = parallel.process_rows(8)
    assert rows == slice(2 * i, 2 * i + 2)
    batches = input_pipeline.train_batches(data, 8, seed=3, start_step=2, rows=rows)
    shares_train.append([next(batches) for _ in range(5)])
    shares_eval.append(list(input_pipeline.eval_batches(data, 8, rows)))
  for step, whole in whole_train:  # across an epoch boundary (3 steps per epoch)
    for name in whole:
      np.testing.assert_array_equal(
          np.concatenate([s[step][name] for s in shares_train]), whole[name])
  for b, whole in enumerate(whole_eval):
    for name in ('image', 'label', 'mask'):
      np.testing.assert_array_equal(
          np.concatenate([s[b][name] for s in shares_eval]), whole[name])
  # The last process's share of the last batch is all padding.
  assert [s[3]['mask'].tolist() for s in shares_eval] == [[True, True], [True, True],
                                                          [True, True], [False, False]]


def test_gather_shares_puts_every_process_s_rows_back_in_batch_order(monkeypatch):
  # 3 global batches of 4 rows over 2 processes: process p holds rows 2p, 2p+1 of each.
  whole = np.arange(12 * 3).reshape(12, 3)
  shares = [np.concatenate([whole[4 * b + 2 * p:4 * b + 2 * p + 2] for b in range(3)])
            for p in range(2)]
  as_process(monkeypatch, 0, 2)
  monkeypatch.setattr(parallel.multihost_utils, 'process_allgather',
                      lambda x: np.stack([x, shares[1]]))
  gathered = parallel.gather_shares({'x': shares[0]}, num_batches=3)
  np.testing.assert_array_equal(gathered['x'], whole)


def test_batch_size_counts_the_devices_of_every_process(monkeypatch):
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'local_device_count', lambda: 4)
  monkeypatch.setattr(parallel, 'device_count', lambda: 8)
  parallel.check_batch_size(24)
  with pytest.raises(ValueError, match=r'batch_size=20 does not split evenly over the 8 '
                     r'devices \(2 processes x 4\); use a multiple of 8, e\.g\. '
                     r'--config\.batch_size=24'):
    parallel.check_batch_size(20)


@pytest.mark.parametrize('args,message', [
    (('localhost:1234', 2, None), '--process_id missing'),
    ((None, 2, 0), '--coordinator_address missing'),
    (('localhost:1234', 2, 2), '--process_id=2 with --num_processes=2: accepted ids are 0 to 1'),
    (('localhost:1234', 0, 0), '--num_processes=0: a run has at least 1 process'),
])
def test_initialize_refuses_incomplete_or_wrong_flags(monkeypatch, args, message):
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a: pytest.fail('initialized'))
  with pytest.raises(ValueError, match=message):
    distributed.initialize(*args)


@pytest.mark.parametrize('args,detected,expected', [
    ((None, None, None), False, None),  # no cluster: one process
    ((None, None, None), True, ()),  # a TPU pod slice, SLURM, ...: JAX finds the parameters
    ((None, 1, None), True, None),  # one process asked for: no detection
    (('localhost:1234', 2, 1), False, ('localhost:1234', 2, 1)),
])
def test_initialize_joins_only_runs_of_several_processes(monkeypatch, args, detected, expected):
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda *a: calls.append(a))
  monkeypatch.setattr(distributed, '_cluster_detected', lambda: detected)
  distributed.initialize(*args)
  assert calls == ([] if expected is None else [expected])


def test_one_process_runs_writes_itself_and_raises_its_own_errors(tmp_path):
  written = []
  distributed.on_main(written.append, 'x')
  assert written == ['x']
  with pytest.raises(ZeroDivisionError):
    distributed.on_main(lambda: 1 / 0)
  assert distributed.main_first(lambda a: a + 1, 1) == 2
  with distributed.hold_workdir(str(tmp_path / 'run')):
    assert workdir_lock.holder(str(tmp_path / 'run'))['pid'] == os.getpid()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _communicate(procs: list[subprocess.Popen], timeout: int = 600) -> list[tuple[str, str]]:
  """Each process's (stdout, stderr) once all have ended; none outlives a failure (a process
  whose peer died would otherwise wait in a collective)."""
  try:
    return [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def test_two_processes_give_what_one_process_with_two_devices_gives(tmp_path):
  """The first update, the padded evaluation and a resumption from a multi-process Orbax
  checkpoint: 2 processes with 1 CPU device each (over localhost, JAX's gloo CPU
  collectives) against 1 process with 2 devices; process 0 holds the lock and writes."""
  script = os.path.join(ROOT, 'tests', 'mammo_jax', 'multi_process_steps.py')

  def start(devices, name, *extra):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
               TF_CPP_MIN_LOG_LEVEL='3')
    return subprocess.Popen([sys.executable, script, str(tmp_path / f'{name}_workdir'),
                             str(tmp_path / name), *extra],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)

  address = f'localhost:{_free_port()}'
  procs = [start(2, 'one'), *(start(1, 'two', address, '2', str(i)) for i in (0, 1))]
  for p, (_, err) in zip(procs, _communicate(procs, timeout=300)):
    assert p.returncode == 0, err[-3000:]
  runs = {n: (np.load(tmp_path / f'{n}.npz'), json.load(open(tmp_path / f'{n}.json')))
          for n in ('one', 'two')}
  (ref_arrays, ref), (arrays, out) = runs['one'], runs['two']
  assert (ref['processes'], ref['devices'], out['processes'], out['devices']) == (1, 2, 2, 2)
  np.testing.assert_allclose(out['loss'], ref['loss'], rtol=1e-6)
  assert sorted(arrays.files) == sorted(ref_arrays.files)
  for key in ref_arrays.files:  # step1/, continued/, resumed/ params and BN statistics; probs
    np.testing.assert_allclose(arrays[key], ref_arrays[key], rtol=1e-6, atol=1e-7,
                               err_msg=key)
  assert arrays['probs'].shape == (12, 2)
  assert out['eval']['count'] == 12
  assert out['eval']['confusion_matrix'] == ref['eval']['confusion_matrix']
  np.testing.assert_allclose(out['eval']['loss'], ref['eval']['loss'], rtol=1e-6)
  for a, r in ((arrays, out), (ref_arrays, ref)):  # the resumed step is the uninterrupted one
    assert r['resumed_step'] == 2 and r['loop'] == {'epoch': 1}
    for key in a.files:
      if key.startswith('resumed/'):
        np.testing.assert_array_equal(a[key], a['continued/' + key[len('resumed/'):]])
    for key in a.files:  # the best checkpoint, read back as init_from reads it
      if key.startswith('best/'):
        np.testing.assert_array_equal(a[key], a['step1/' + key[len('best/'):]])
  # Process 0 took the workdir's lock and wrote the outputs.
  assert out['lock_pid'] == procs[1].pid
  assert workdir_lock.holder(str(tmp_path / 'two_workdir'))['pid'] == procs[1].pid
  assert os.listdir(tmp_path / 'two_workdir' / 'checkpoints' / 'latest') == ['1']


def run_main(tmp_path, workdir, devices, *flags):
  env = dict(os.environ, MAMMO_JAX_CACHE=str(tmp_path / 'cache'), TF_CPP_MIN_LOG_LEVEL='3',
             NO_GCE_CHECK='true', TFDS_CBIS_WORKERS='1',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen([sys.executable, '-m', 'mammo_jax.main',
                           '--config=configs/default.py:smoke', f'--workdir={workdir}', *flags],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def run_two_processes(tmp_path, workdir):
  """`python -m mammo_jax.main` as 2 processes over localhost; their (returncode, stderr)."""
  address = f'--coordinator_address=localhost:{_free_port()}'
  procs = [run_main(tmp_path, workdir, 1, address, '--num_processes=2', f'--process_id={i}')
           for i in (0, 1)]
  outputs = _communicate(procs)
  return [(p.returncode, err) for p, (_, err) in zip(procs, outputs)]


def test_a_workdir_in_use_stops_both_processes_with_process_0_s_message(tmp_path):
  workdir = tmp_path / 'busy'
  with workdir_lock.hold(str(workdir)):
    (rc0, err0), (rc1, err1) = run_two_processes(tmp_path, workdir)
  line = f'workdir {workdir} is in use by process {os.getpid()}'
  assert rc0 == 1 and f'mammo_jax: error: {line}' in err0, err0[-2000:]
  assert rc1 == 1 and f'mammo_jax: error: process 0 failed: WorkdirInUseError: {line}' in err1, (
      err1[-2000:])
  assert sorted(os.listdir(workdir)) == ['.lock']  # nothing else was written


@pytest.mark.slow
def test_main_as_two_processes_writes_what_one_process_with_two_devices_writes(tmp_path):
  """The whole run (data, training, checkpoints, final evaluation, files) through main."""
  one = run_main(tmp_path, tmp_path / 'one', 2)
  _, err = one.communicate(timeout=600)
  assert one.returncode == 0, err[-3000:]  # and the synthetic data are built
  for rc, err in run_two_processes(tmp_path, tmp_path / 'two'):
    assert rc == 0, err[-3000:]
  for name in ('results.json', 'metrics.jsonl', 'config.json'):
    assert (tmp_path / 'one' / name).read_text() == (tmp_path / 'two' / name).read_text(), name
  with np.load(tmp_path / 'one' / 'predictions.npz') as a, \
       np.load(tmp_path / 'two' / 'predictions.npz') as b:
    assert a.files == b.files
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert sorted(os.listdir(tmp_path / 'one')) == sorted(os.listdir(tmp_path / 'two'))
  partial = run_main(tmp_path, tmp_path / 'three', 1, '--num_processes=2')
  _, err = partial.communicate(timeout=600)
  assert partial.returncode == 1
  assert err.strip().endswith('mammo_jax: error: --coordinator_address, --process_id missing: '
                              'a run of several processes takes --coordinator_address=HOST:PORT'
                              ' (process 0\'s), --num_processes=N and --process_id=0..N-1 '
                              'together (none on a TPU pod slice)')
