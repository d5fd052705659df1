"""JAX's persistent compilation cache in the project's cache folder (off unless asked for).

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

Off by default: in one full slow-suite run (jaxlib 0.10.2, XLA:CPU) a cache write segfaulted
the process while serialising an executable (jax's put_executable_and_time); the same test
alone passed, so the cause is not pinned down, and a crash costs more than compiling again.
`python -m mammo_jax.main --compilation_cache ...` turns it on for one run;
MAMMO_JAX_COMPILATION_CACHE=DIR turns it on in DIR for main, the test suite (which passes it
on to the runs it starts in subprocesses) and the benchmarks, and =0 turns it off.
"""

from __future__ import annotations

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


def wanted(flag: bool) -> bool:
  """Whether a run uses the cache: its flag, or a folder in $MAMMO_JAX_COMPILATION_CACHE."""
  return flag or os.environ.get(ENV, '0') != '0'


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
