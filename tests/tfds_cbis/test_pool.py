"""tfds_cbis.pool: the worker-process policy the builder and the synthetic generator share."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import time

import pytest

from tfds_cbis import pool
from tfds_cbis import synthetic
from tfds_cbis.synthetic import write

DIED = 'a test worker died'
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _square(x: int) -> int:
  return x * x


def _die(x):  # module level, so the forked workers find it by name
  os._exit(3)


def test_worker_count_defaults_to_every_core():
  assert pool.worker_count(None) == (os.cpu_count() or 1)
  assert pool.worker_count(3) == 3 and pool.worker_count(0) == 0


def test_fork_on_linux_spawn_elsewhere(monkeypatch):
  monkeypatch.setattr(pool.sys, 'platform', 'linux')
  assert pool.start_method() == 'fork'
  for platform in ('darwin', 'win32'):
    monkeypatch.setattr(pool.sys, 'platform', platform)
    assert pool.start_method() == 'spawn'


def test_executor_uses_the_start_method():
  with pool.executor(1) as ex:
    assert ex._mp_context.get_start_method() == pool.start_method()  # pylint: disable=protected-access
    assert ex.submit(_square, 4).result() == 16


class _CountingPool(concurrent.futures.Executor):
  """Runs each task at once and counts submissions."""

  def __init__(self):
    self.submitted = 0

  def submit(self, fn, /, *args, **kwargs):
    self.submitted += 1
    future = concurrent.futures.Future()
    future.set_result(fn(*args, **kwargs))
    return future


def test_imap_is_ordered_and_bounds_the_results_in_flight():
  fake = _CountingPool()
  out = []
  for result in pool.imap(_square, range(20), fake, 3, on_worker_death=DIED):
    assert fake.submitted - len(out) <= 2 * 3  # never more than 2 * workers ahead
    out.append(result)
  assert out == [x * x for x in range(20)] and fake.submitted == 20
  assert list(pool.imap(lambda x: -x, [1, 2], None, 4, on_worker_death=DIED)) == [-1, -2]


def test_map_ordered_inline_and_in_processes():
  assert pool.map_ordered(lambda x: x + 1, [1, 2, 3], 1, on_worker_death=DIED) == [2, 3, 4]
  assert pool.map_ordered(_square, range(9), 2, on_worker_death=DIED) == [x * x for x in range(9)]


def test_a_dead_worker_fails_instead_of_hanging():
  with pytest.raises(RuntimeError, match=DIED):
    pool.map_ordered(_die, range(4), 2, on_worker_death=DIED)


def test_synthetic_generation_fails_when_a_worker_dies(tmp_path, monkeypatch):
  """multiprocessing.Pool.map, used before, waited forever for a killed worker's result."""
  monkeypatch.setattr(write, 'render_and_write', _die)
  with pytest.raises(RuntimeError, match='worker process died while rendering'):
    synthetic.generate(tmp_path / 'tree', patients=3, image_shape=(128, 128), workers=2)


def _proc_stat(pid: int) -> list[str] | None:
  """/proc/PID/stat's fields after the command name (state, ppid, ...); None when gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()
  except OSError:
    return None


def _children(pid: int) -> list[int]:
  found = []
  for entry in os.listdir('/proc'):
    stat = _proc_stat(int(entry)) if entry.isdigit() else None
    if stat and int(stat[1]) == pid:
      found.append(int(entry))
  return found


def _running(pid: int) -> bool:
  stat = _proc_stat(pid)
  return stat is not None and stat[0] not in ('Z', 'X')  # a zombie has ended


@pytest.mark.skipif(not os.path.isdir('/proc'), reason='reads processes from /proc')
def test_workers_end_when_their_parent_is_killed(tmp_path):
  """Issue 11: after SIGKILL of a build, its workers lived on (PPID 1, blocked on a pipe)."""
  parent = subprocess.Popen(
      [sys.executable, '-m', 'tfds_cbis.synthetic', '--out', str(tmp_path / 'tree'),
       '--patients', '400', '--workers', '2'],
      cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.monotonic() + 60
    while len(workers := _children(parent.pid)) < 2:
      assert parent.poll() is None and time.monotonic() < deadline, 'no workers started'
      time.sleep(0.05)
    time.sleep(0.5)  # the workers are rendering
    assert all(_running(pid) for pid in workers)
  finally:
    parent.kill()
    parent.wait()
  deadline = time.monotonic() + 10
  while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  survivors = [pid for pid in workers if _running(pid)]
  for pid in survivors:  # leave nothing behind when the test fails
    os.kill(pid, signal.SIGKILL)
  assert not survivors, f'workers {survivors} outlived their killed parent'
