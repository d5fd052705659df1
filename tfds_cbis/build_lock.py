"""One build per dataset folder, and no folder left behind by a killed build.

TFDS builds DATA_DIR/NAME/CONFIG/VERSION in a sibling `incomplete.XXXXXX_VERSION` folder and
renames it at the end, but takes no lock: two builds of the same dataset both run to the end
and the second fails on the rename, and a killed build leaves its incomplete folder forever.

`hold(data_dir)` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on CONFIG/VERSION.lock (which records
the holder's pid and start time); a second build fails at once with BuildInUseError, naming
the holder. The kernel drops the lock when its process ends, SIGKILL included, so it is never
stale. Holding it, no other build of this dataset version runs, so every incomplete folder of
that version was left by a killed build: they are removed. Other configs and versions are not
touched. Remote data_dirs (gs://...) cannot be flocked, nor can files on Windows: there,
neither happens.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import time
from collections.abc import Iterator

from absl import logging

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None

INCOMPLETE_PREFIX = 'incomplete.'  # tensorflow_datasets.core.constants.INCOMPLETE_PREFIX


class BuildInUseError(OSError):
  """Another process is building the same dataset; the message is one line saying so."""


def lock_path(data_dir: str) -> str:
  return f'{data_dir.rstrip(os.sep)}.lock'


def _is_local(data_dir: str) -> bool:
  return '://' not in data_dir


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      info = json.load(f)
    return f'process {info["pid"]} (started {info["started"]})'
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process'


def remove_incomplete(data_dir: str) -> list[str]:
  """Removes the incomplete folders of data_dir's version; returns them. Call only under
  `hold`, where none of them belongs to a running build."""
  parent, version = os.path.split(data_dir.rstrip(os.sep))
  pattern = os.path.join(glob.escape(parent), f'{INCOMPLETE_PREFIX}*_{glob.escape(version)}')
  removed = sorted(p for p in glob.glob(pattern) if os.path.isdir(p))
  for path in removed:
    shutil.rmtree(path, ignore_errors=True)
  if removed:
    logging.warning('cbis_ddsm: removed %d incomplete folder(s) left by a killed build: %s',
                    len(removed), ', '.join(removed))
  return removed


@contextlib.contextmanager
def hold(data_dir: str) -> Iterator[None]:
  """Holds the build lock of data_dir (DATA_DIR/NAME/CONFIG/VERSION) for the block, after
  removing the incomplete folders that killed builds of it left."""
  data_dir = os.fspath(data_dir)
  if fcntl is None or not _is_local(data_dir):
    yield
    return
  path = lock_path(data_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # O_RDWR without O_TRUNC: a refused build leaves the holder's record untouched.
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise BuildInUseError(
          f'cbis_ddsm: {data_dir} is being built by {_holder(path)}; wait for it to end, then '
          'run again (its dataset is reused), or use another data_dir') from None
    os.ftruncate(fd, 0)
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime())
    os.write(fd, json.dumps({'pid': os.getpid(), 'started': started}).encode() + b'\n')
    remove_incomplete(data_dir)
    yield
  finally:
    os.close(fd)  # releases the lock
