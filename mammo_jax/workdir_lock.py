"""One run per workdir: an exclusive lock on WORKDIR/.lock, held for the whole run.

`hold(workdir)` checks that the workdir is a writable folder (or can be created), creates it,
and takes `fcntl.flock(LOCK_EX | LOCK_NB)` on WORKDIR/.lock before anything else is written
there; a second run on the same workdir fails at once with WorkdirInUseError, naming the
process that holds it (its pid and start time are written in the lock file). The kernel drops
the lock when its process ends, however it ends (SIGKILL included), so a lock is never stale:
the next run simply takes it and rewrites the file.

runners.run takes it for every runner, so nested runs are covered as follows:
- ensemble members run through runners.run in the ensemble's process, each taking the lock of
  its own folder (WORKDIR/members/NAME-HASH) as well: a `--workdir` pointed at a member's
  folder by another command is refused while the ensemble trains it;
- pipeline stages run in the same way (WORKDIR/STAGE has its own lock);
- a process asking again for a workdir it already holds (same real path) gets it without a
  second flock, which would conflict with its own first one (flock locks belong to the open
  file, not to the process).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator

LOCK_FILE = '.lock'

_held: dict[str, int] = {}  # real path of a workdir this process holds -> nesting depth


class WorkdirError(Exception):
  """The workdir cannot be used; the message is the whole story (nothing was written)."""


class WorkdirInUseError(WorkdirError):
  pass


def check_usable(workdir: str) -> None:
  """Raises WorkdirError unless workdir is a writable folder or can be created as one."""
  path = os.path.abspath(workdir)
  if os.path.exists(path):
    if not os.path.isdir(path):
      raise WorkdirError(f'workdir {workdir} is a file, not a folder; use another --workdir')
    if not os.access(path, os.W_OK | os.X_OK):
      raise WorkdirError(f'workdir {workdir} is not writable (read-only); make it writable '
                         f'or use another --workdir')
    return
  parent = os.path.dirname(path)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise WorkdirError(f'workdir {workdir} cannot be created: {parent} is a file; use another '
                       f'--workdir')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f'workdir {workdir} cannot be created: {parent} is not writable '
                       f'(read-only); use another --workdir')


def holder(workdir: str) -> dict:
  """What the lock file says about the process holding it ({} when unreadable)."""
  try:
    with open(os.path.join(workdir, LOCK_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def _in_use(workdir: str) -> WorkdirInUseError:
  info = holder(workdir)
  who = f'process {info["pid"]}' if 'pid' in info else 'another process'
  started = f' (started {info["started"]})' if 'started' in info else ''
  return WorkdirInUseError(f'workdir {workdir} is in use by {who}{started}; wait for it or use '
                           f'another --workdir')


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds workdir's lock (creating the folder) for the duration of the block."""
  key = os.path.realpath(workdir)
  if key in _held:  # re-entrant within this process
    _held[key] += 1
    try:
      yield
    finally:
      _held[key] -= 1
    return
  check_usable(workdir)
  os.makedirs(workdir, exist_ok=True)
  # O_RDWR without O_TRUNC: a refused run leaves the holder's file (and its mtime) untouched.
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise _in_use(workdir) from None
    os.ftruncate(fd, 0)
    started = time.strftime('%Y-%m-%d %H:%M:%S %Z', time.localtime())
    os.write(fd, json.dumps({'pid': os.getpid(), 'started': started}).encode() + b'\n')
    _held[key] = 1
    try:
      yield
    finally:
      del _held[key]
  finally:
    os.close(fd)  # releases the lock
