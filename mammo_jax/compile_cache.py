"""Compiled programs: JAX's persistent compilation cache in the project's cache folder (on by
default), and releasing the compiled programs a long process no longer needs.

Short runs spend much of their time compiling: the train and eval steps, the evaluation and
the augmentation are compiled again by every process. With the cache on, a re-run, a resumed
run, an ensemble's next member or pipeline stage with the same shapes, and the test suite load
the compiled executables from CACHE/jax_compilation instead of compiling them again, where
CACHE is `data.cache_dir`, else $MAMMO_JAX_CACHE, else ~/.cache/mammo_jax (the folder that also
holds the synthetic data and the ported weights).

An entry never changes a result: JAX keys it by a hash of the program, the compile options
(JAX_DISABLE_MOST_OPTIMIZATIONS included), the XLA flags, the jax/jaxlib versions and the
devices, and it holds the very executable a fresh compilation would build
(tests/mammo_jax/test_compile_cache.py checks that a warm run's metrics equal a cold one's).
A corrupt or unreadable entry is reported as a warning and compiled again. The folder only
grows; deleting it is always safe. Keep it private: JAX runs what it finds there.

MAMMO_JAX_COMPILATION_CACHE in the environment overrides the folder, or turns the cache off
with 0 (main, the test suite and the benchmarks honour it; the test suite sets it for the runs
it starts in subprocesses). `python -m mammo_jax.main --nocompilation_cache ...` turns it off
for one run.

Releasing: XLA:CPU maps each compiled program's machine code into the process (three memory
mappings per compiled object file, some thousands for one training run's steps) and keeps it
as long as JAX's in-memory caches hold the program, which is until the process ends. A process
that trains many models one after the other (an ensemble's members, a pipeline's stages, cv
folds, repeats, a long test session) reached Linux's limit on memory mappings per process
(vm.max_map_count, 65,530 by default) after about fifteen runs and died with a segmentation
fault inside the compiler. `runners.run` therefore calls `release_if_crowded()` when a run
ends: past 40 % of the limit it drops JAX's in-memory caches, so the next run compiles again
(or loads from the persistent cache) instead of crashing. (Two such crashes in the slow test
suite, one of them while the persistent cache wrote an entry, had this cause, not the cache.)
"""

from __future__ import annotations

import gc
import os

import jax

FOLDER = 'jax_compilation'
ENV = 'MAMMO_JAX_COMPILATION_CACHE'  # a folder, or '0' for no cache
# Only compilations that took at least this long are written. On the 2-core CPU machine,
# loading an entry takes 5-10 ms and the steps take 0.3-10 s to compile, while each eager
# operation compiles in about 10-30 ms; a lower threshold would write thousands of entries
# that save almost nothing. JAX's own default (1 s) misses most of the test suite's programs.
MIN_COMPILE_SECS = 0.1
# No size threshold: what a hit saves is compile time, and small entries are cheap to read
# from a local disk.
MIN_ENTRY_BYTES = -1
# Fraction of vm.max_map_count past which release_if_crowded drops the compiled programs. One
# training run adds 2,000-10,000 mappings on the 2-core machine (a smoke run about 3,000), so
# 40 % leaves room for several runs before the limit.
CROWDED_FRACTION = 0.4


def enable(cache_root: str) -> str | None:
  """Turns the cache on in CACHE_ROOT/jax_compilation (or $MAMMO_JAX_COMPILATION_CACHE);
  returns the folder, or None when that variable is 0. Call it before the first compilation:
  JAX opens the cache once per process."""
  path = os.environ.get(ENV) or os.path.join(cache_root, FOLDER)
  if path == '0':
    return None
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', MIN_COMPILE_SECS)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', MIN_ENTRY_BYTES)
  return path


def memory_mappings() -> int | None:
  """How many memory mappings this process holds (None where /proc is not there)."""
  try:
    with open('/proc/self/maps', 'rb') as maps:
      return sum(1 for _ in maps)
  except OSError:
    return None


def mapping_limit() -> int | None:
  """The kernel's limit on memory mappings per process (None where it cannot be read)."""
  try:
    with open('/proc/sys/vm/max_map_count') as limit:
      return int(limit.read())
  except (OSError, ValueError):
    return None


def release_if_crowded(fraction: float = CROWDED_FRACTION) -> bool:
  """Drops JAX's in-memory caches of compiled programs (jax.clear_caches) when this process
  holds more than `fraction` of the kernel's limit on memory mappings; True when it did. Arrays
  and results are untouched; a dropped program is compiled again (or loaded from the
  persistent cache) when it is next called."""
  in_use, limit = memory_mappings(), mapping_limit()
  if in_use is None or limit is None or in_use <= fraction * limit:
    return False
  jax.clear_caches()
  gc.collect()  # executables held only by reference cycles go now, not at some later collection
  return True
