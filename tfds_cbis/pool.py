"""The one worker-process policy of tfds_cbis, used by the builder and the synthetic generator.

How many workers (`worker_count`), how they start (`start_method`), the executor
(`executor`) and an ordered map over it (`imap`). Workers only run numpy, scipy, PIL and
pydicom code, never TensorFlow.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import sys
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


def executor(workers: int) -> concurrent.futures.ProcessPoolExecutor:
  """`workers` processes. Unlike multiprocessing.Pool, a worker that dies (e.g. killed for
  memory) breaks the executor, so the caller fails instead of hanging."""
  return concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context(start_method()))


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
