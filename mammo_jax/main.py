"""Runs a mammo_jax experiment: `python -m mammo_jax.main --config=configs/X.py --workdir=DIR`.

This file is intentionally thin: it parses flags and hands the config to the runner it
names (mammo_jax.runners: train, stages, ensemble, lr_range). Re-running the same command on
the same workdir resumes an interrupted run exactly. A run of several processes (a TPU pod
slice, multi-node GPUs) is the same command on every host (mammo_jax.distributed). A failure
ends with one line, `mammo_jax: error: ...`, naming the log file that holds its traceback.
On Linux it first restarts itself once with glibc's huge-page tunable (mammo_jax/hugepages.py).

The console shows the run's own output (stdout) and log warnings and errors; INFO log lines
(TFDS, JAX, the build's progress notes) are kept in memory and written into that log file
before the traceback, so a failure ends with what a person needs and loses nothing.
"""

if __name__ == '__main__':
  # First, before JAX allocates anything: glibc reads its tunables at start-up only.
  from mammo_jax import hugepages  # pylint: disable=g-import-not-at-top
  hugepages.restart_with_huge_pages('mammo_jax.main')

import collections  # pylint: disable=g-import-not-at-top,wrong-import-position
import errno
import logging as std_logging
import os
import sys
import tempfile
import time
import traceback

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mammo_jax import compile_cache
from mammo_jax import distributed
from mammo_jax import input_pipeline
from mammo_jax import runners
from mammo_jax import workdir as workdir_lib
from mammo_jax import workdir_lock

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for this run\'s checkpoints and outputs.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                'configs/scratch2.py:exp5', lock_config=True)
flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, in a run of several '
                    'processes (not needed on a TPU pod slice, SLURM or Open MPI).')
flags.DEFINE_integer('num_processes', None, 'How many processes the run has (1: one, without '
                     'looking for a cluster).')
flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 to num_processes - 1.')
flags.DEFINE_bool('compilation_cache', True, 'Keep compiled steps in CACHE/jax_compilation '
                  'for later runs (mammo_jax.compile_cache); --nocompilation_cache: off.')
flags.mark_flags_as_required(['config', 'workdir'])


# Failures a user can meet: a bad config, data or data folder (ValueError, FileNotFoundError,
# TFDS's AssertionError on an empty manual_dir, KeyError from config access), an unwritable or
# full disk (OSError), diverged training (FloatingPointError), a missing optional package.
# Each ends with one `mammo_jax: error:` line; the traceback goes to WORKDIR/error.log.
KNOWN_ERRORS = (ValueError, KeyError, AssertionError, OSError, FloatingPointError, ImportError,
                distributed.OtherProcessError)


def _orbax_info_filter(record) -> bool:
  """Drops Orbax's INFO lines (about 20 per checkpoint save or restore); keeps warnings."""
  return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


class _RecentRecords(std_logging.Handler):
  """The last `capacity` log lines of every level, formatted as absl does, for error.log."""

  def __init__(self, capacity: int = 2000):
    super().__init__(std_logging.INFO)
    self.lines = collections.deque(maxlen=capacity)
    self.setFormatter(logging.PythonFormatter())

  def emit(self, record) -> None:
    try:
      self.lines.append(self.format(record))
    except Exception:  # pylint: disable=broad-except  (as logging.Handler.handleError)
      self.handleError(record)


_RECENT = _RecentRecords()


def _quiet_console() -> None:
  """INFO off the console, kept in _RECENT; Orbax's INFO dropped from both."""
  console = logging.get_absl_handler()
  console.addFilter(_orbax_info_filter)
  console.setLevel(std_logging.WARNING)
  _RECENT.addFilter(_orbax_info_filter)
  std_logging.getLogger().addHandler(_RECENT)


def _one_line(e: BaseException) -> str:
  """An exception as one line: its message, named by its type where the message alone is not
  enough (KeyError's is just the key, AssertionError's may be empty)."""
  text = ' '.join(str(e).split())
  if isinstance(e, (ValueError, FloatingPointError, OSError, workdir_lock.WorkdirError,
                    distributed.OtherProcessError)):
    return text or type(e).__name__
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _write_traceback(workdir: str) -> str:
  """The run's recent log lines and the current exception's traceback in WORKDIR/error.log (a
  temporary file when the workdir cannot take it: absent, or the disk is full); returns the
  path."""
  text = (f'{time.strftime("%Y-%m-%d %H:%M:%S %Z")} {" ".join(sys.argv)}\n'
          + ''.join(line + '\n' for line in _RECENT.lines) + traceback.format_exc())
  if os.path.isdir(workdir) and distributed.is_main():  # process 0's; the others' go to /tmp
    path = os.path.join(workdir, workdir_lib.ERROR_LOG)
    try:
      with open(path, 'w') as f:
        f.write(text)
      return path
    except OSError:
      pass
  try:
    fd, path = tempfile.mkstemp(prefix='mammo_jax-error-', suffix='.log')
    with os.fdopen(fd, 'w') as f:
      f.write(text)
    return path
  except OSError:
    return 'no file (none could be written)'


def _fail(message: str) -> None:
  print(f'mammo_jax: error: {message}', file=sys.stderr, flush=True)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  _quiet_console()
  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  except ValueError as e:
    _fail(_one_line(e))
  processes = (f' (process {jax.process_index()} of {jax.process_count()})'
               if jax.process_count() > 1 else '')
  print(f'JAX devices: {jax.local_devices()}{processes}', flush=True)  # console, not the log
  if FLAGS.compilation_cache:
    compile_cache.enable(input_pipeline.cache_dir(FLAGS.config.data))
  try:
    runners.run(FLAGS.config, FLAGS.workdir)
  except workdir_lock.WorkdirError as e:  # the line says it all; the folder is not ours
    _fail(_one_line(e))
  except KNOWN_ERRORS as e:
    log = _write_traceback(FLAGS.workdir)
    hint = ('; free some space and run the same command again: it resumes'
            if isinstance(e, OSError) and e.errno == errno.ENOSPC else '')
    _fail(f'{_one_line(e)}{hint} (traceback in {log})')
  except Exception as e:  # pylint: disable=broad-except  (a bug: still one line, and the log)
    log = _write_traceback(FLAGS.workdir)
    _fail(f'unexpected {_one_line(e)}; please report it with {log}')


if __name__ == '__main__':
  app.run(main)
