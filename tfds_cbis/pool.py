"""The one worker-process policy of tfds_cbis, used by the builder and the synthetic generator.

How many workers (`worker_count`), how they start (`start_method`), the executor
(`executor`) and an ordered map over it (`imap`). Workers only run numpy, scipy, PIL and
pydicom code, never TensorFlow. Workers end within a second of their parent's death, however
it dies (`_watch_parent`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def worker_count(requested: int | None) -> int:
  """`requested`, or every core when it is None; <= 1 means run inline."""
  return (os.cpu_count() or 1) if requested is None else requested


def start_method() -> str:
  """Fork where the platform has it (Linux), spawn elsewhere.

  Spawn and forkserver re-import the caller's main module in every worker, which breaks
  scripts without an `if __name__ == '__main__'` guard and stdin or notebook sessions.
  Forking a process that runs TensorFlow or JAX threads is safe here because the workers never
  call into them.
  """
  return 'fork' if sys.platform.startswith('linux') else 'spawn'


PARENT_POLL_S = 0.5


def _watch_parent(parent: int) -> None:
  """Executor initializer: the worker exits once its parent is no longer `parent`.

  A SIGKILLed parent runs no cleanup, and its forked workers would wait for work forever
  (each holds the others' ends of the task pipe, so none sees it close). A daemon thread
  compares os.getppid() with the pid that started the pool every PARENT_POLL_S, which also
  covers a parent that died before this ran. Linux's PR_SET_PDEATHSIG is not used: it fires
  when the forking *thread* ends, and the pool forks from whichever thread submits first.
  """
  def watch():
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_S)
    os._exit(1)  # pylint: disable=protected-access  (no cleanup: nobody is left to get results)

  threading.Thread(target=watch, name='tfds_cbis-watch-parent', daemon=True).start()


def executor(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` processes that end with this one. Unlike multiprocessing.Pool, a worker that
  dies (e.g. killed for memory) breaks the executor, so the caller fails instead of hanging."""
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context(start_method()),
      initializer=_watch_parent, initargs=(os.getpid(),))


def imap(fn: Callable[[Any], Any], items: Iterable[Any],
         pool: concurrent.futures.Executor | None, workers: int, *,
         on_worker_death: str) -> Iterator[Any]:
  """Ordered map, inline when pool is None, else with at most 2 * workers results in flight,
  so memory stays flat when the consumer is slower than the workers.

  Raises RuntimeError(on_worker_death) when a worker process dies.
  """
  if pool is None:
    yield from map(fn, items)
    return
  pending = collections.deque()
  try:
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  except concurrent.futures.process.BrokenProcessPool as e:
    raise RuntimeError(on_worker_death) from e


def map_ordered(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, *,
                on_worker_death: str) -> list[Any]:
  """All results of fn over items, in order: inline for workers <= 1, else in a fresh pool
  that is shut down before returning."""
  if workers <= 1:
    return list(map(fn, items))
  pool = executor(workers)
  try:
    return list(imap(fn, items, pool, workers, on_worker_death=on_worker_death))
  finally:
    pool.shutdown(cancel_futures=True)
