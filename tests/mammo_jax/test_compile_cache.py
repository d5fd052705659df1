"""The persistent compilation cache: where it goes, how it is turned off, and that a warm cache
gives bit-identical results to a cold one."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import pytest

from mammo_jax import compile_cache
from tests.conftest import ROOT

# The real train and eval steps of the 4-class M2 smoke config on a fixed batch, in a fresh
# process: their outputs, and the keys of the compilations the persistent cache served (JAX logs
# each hit at DEBUG level).
_STEPS = r'''
import json, logging, sys
import jax, numpy as np
hits = []
class Hits(logging.Handler):
  def emit(self, record):
    if record.getMessage().startswith('Persistent compilation cache hit'):
      hits.append(record.args[1])
compiler_log = logging.getLogger('jax._src.compiler')
compiler_log.setLevel(logging.DEBUG)
compiler_log.addHandler(Hits())
from mammo_jax import compile_cache, parallel, tasks, train
from mammo_jax.config_lib import loader
print(json.dumps({'folder': compile_cache.enable('unused')}))
config = loader.load_config('configs/scratch4.py:m2,smoke', '.')
config.batch_size = 4
task = tasks.get_task(config.task)
state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                 (40, 40, 1))
rng = np.random.default_rng(0)
batch = parallel.shard({'image': rng.integers(0, 65535, (4, 40, 40, 1), dtype=np.uint16),
                        'label': rng.integers(0, 4, (4,), dtype=np.int32)})
step = train.make_train_step(config, task)
losses = []
for _ in range(2):
  state, metrics = step(state, batch, jax.random.key(1))
  losses.append(float(metrics['loss']))
probs = train.make_eval_step(task)(state, batch)['probs']
print(json.dumps({'losses': losses, 'probs': np.asarray(probs).tolist(),
                  'params': [np.asarray(p).tolist() for p in jax.tree.leaves(state.params)],
                  'hits': hits}))
'''


def _run_steps(folder: str) -> dict:
  env = dict(os.environ, MAMMO_JAX_COMPILATION_CACHE=folder, TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, '-c', _STEPS], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  lines = done.stdout.strip().splitlines()
  assert json.loads(lines[0])['folder'] == folder
  return json.loads(lines[-1])


def test_warm_cache_serves_the_steps_with_identical_results(tmp_path):
  folder = str(tmp_path / 'compiled')
  cold = _run_steps(folder)
  # The train step is the largest executable; its entry is named by its key. The pmapped step
  # is compiled on its first and second call (the state comes back placed otherwise), so a
  # cold run already loads the second from the cache; a warm run loads both.
  entries = {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}
  train_step = max(entries, key=entries.get).removesuffix('-cache')
  warm = _run_steps(folder)
  assert warm['hits'].count(train_step) > cold['hits'].count(train_step)
  assert len(warm['hits']) >= len(entries) > 0
  for key in ('losses', 'probs', 'params'):
    assert warm[key] == cold[key], key  # bit-identical, not close


@pytest.fixture
def restore_cache_dir():
  before = jax.config.jax_compilation_cache_dir
  yield
  jax.config.update('jax_compilation_cache_dir', before)


def test_enable_uses_the_cache_root_or_the_environment(tmp_path, monkeypatch,
                                                       restore_cache_dir):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  folder = compile_cache.enable(str(tmp_path))
  assert folder == str(tmp_path / 'jax_compilation')
  assert jax.config.jax_compilation_cache_dir == folder
  assert jax.config.jax_persistent_cache_min_compile_time_secs == compile_cache.MIN_COMPILE_SECS
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / 'elsewhere'))
  assert compile_cache.enable(str(tmp_path)) == str(tmp_path / 'elsewhere')
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / 'elsewhere')


def test_zero_in_the_environment_turns_it_off(tmp_path, monkeypatch, restore_cache_dir):
  jax.config.update('jax_compilation_cache_dir', None)
  monkeypatch.setenv(compile_cache.ENV, '0')
  assert compile_cache.enable(str(tmp_path)) is None
  assert jax.config.jax_compilation_cache_dir is None


def test_the_test_suite_shares_its_cache_with_its_subprocesses():
  assert os.environ.get(compile_cache.ENV) in (jax.config.jax_compilation_cache_dir, '0')


@pytest.mark.skipif(compile_cache.memory_mappings() is None or compile_cache.mapping_limit()
                    is None, reason='needs /proc (Linux)')
def test_release_drops_compiled_programs_only_past_the_fraction_of_the_mapping_limit():
  assert 0 < compile_cache.memory_mappings() < compile_cache.mapping_limit()
  add_one = jax.jit(lambda x: x + 1)
  add_one(1.0)
  assert add_one._cache_size() == 1  # pylint: disable=protected-access
  assert not compile_cache.release_if_crowded(fraction=1.0)
  assert add_one._cache_size() == 1  # pylint: disable=protected-access
  assert compile_cache.release_if_crowded(fraction=0.0)
  assert add_one._cache_size() == 0  # pylint: disable=protected-access
  assert add_one(1.0) == 2.0  # compiled again on its next call


def test_release_does_nothing_without_proc(monkeypatch):
  monkeypatch.setattr(compile_cache, 'memory_mappings', lambda: None)
  add_one = jax.jit(lambda x: x + 1)
  add_one(1.0)
  assert not compile_cache.release_if_crowded(fraction=0.0)
  assert add_one._cache_size() == 1  # pylint: disable=protected-access


@pytest.mark.parametrize('fails', [False, True])
def test_every_run_ends_by_releasing_crowded_programs(tmp_path, monkeypatch, fails):
  from mammo_jax import runners  # pylint: disable=g-import-not-at-top
  calls = []

  def runner(config, workdir):
    del config, workdir
    calls.append('run')
    if fails:
      raise ValueError('bad data')
    return 'done'

  monkeypatch.setattr(runners, 'get_runner', lambda name: runner)
  monkeypatch.setattr(runners.config_checks, 'check', lambda config: None)
  monkeypatch.setattr(compile_cache, 'release_if_crowded', lambda: calls.append('release'))
  config = ml_collections.ConfigDict({'runner': 'train'})
  if fails:
    with pytest.raises(ValueError, match='bad data'):
      runners.run(config, str(tmp_path))
  else:
    assert runners.run(config, str(tmp_path)) == 'done'
  assert calls == ['run', 'release']
