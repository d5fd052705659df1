"""One run per workdir: the lock (in-process and through the CLI) and the workdir checks."""

import json
import os
import signal
import subprocess
import sys

import pytest

from mammo_jax import config_checks
from mammo_jax import runners
from mammo_jax import workdir_lock
from tests.conftest import ROOT, load_config
from tests.mammo_jax.test_main import run_main

_HOLD = ('import sys, time; from mammo_jax import workdir_lock\n'
         'with workdir_lock.hold(sys.argv[1]):\n'
         '  print("locked", flush=True); time.sleep(600)\n')


@pytest.fixture
def holder(tmp_path):
  """Another process holding tmp_path/w's lock; yields (workdir, process)."""
  workdir = tmp_path / 'w'
  proc = subprocess.Popen([sys.executable, '-c', _HOLD, str(workdir)], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == 'locked'
    yield workdir, proc
  finally:
    proc.kill()
    proc.wait()


def _snapshot(folder) -> dict:
  return {p: (os.stat(p).st_mtime_ns, open(p, 'rb').read())
          for p in (os.path.join(d, n) for d, _, names in os.walk(folder) for n in names)}


def test_a_held_workdir_is_refused_naming_the_holder(holder):
  workdir, proc = holder
  with pytest.raises(workdir_lock.WorkdirInUseError,
                     match=rf'workdir {workdir} is in use by process {proc.pid} \(started '
                           r'.*\); wait for it or use another --workdir'):
    with workdir_lock.hold(str(workdir)):
      pass
  assert json.loads((workdir / '.lock').read_text())['pid'] == proc.pid


def test_a_sigkilled_holder_leaves_no_stale_lock(holder):
  workdir, proc = holder
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  with workdir_lock.hold(str(workdir)):
    assert json.loads((workdir / '.lock').read_text())['pid'] == os.getpid()


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
  workdir = str(tmp_path / 'w')
  with workdir_lock.hold(workdir):
    with workdir_lock.hold(workdir + '/'):  # the same folder: no second flock
      pass
    with workdir_lock.hold(os.path.join(workdir, 'members', 'm')):  # a member's own lock
      pass
  done = subprocess.run([sys.executable, '-c', _HOLD.replace('600', '0'), workdir], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0 and 'locked' in done.stdout, done.stderr


def test_runners_run_takes_the_lock_before_anything(holder, monkeypatch):
  workdir, proc = holder
  before = _snapshot(workdir)
  checked = []
  monkeypatch.setattr(config_checks, 'check', checked.append)
  with pytest.raises(workdir_lock.WorkdirInUseError, match=f'process {proc.pid}'):
    runners.run(load_config('scratch2', 'smoke'), str(workdir))
  assert not checked and _snapshot(workdir) == before


def test_cli_on_a_held_workdir_exits_with_one_line_and_changes_nothing(holder):
  workdir, proc = holder
  (workdir / 'results.json').write_text('{"a": 1}')
  before = _snapshot(workdir)
  done = run_main(workdir.parent, '--config=configs/default.py:smoke', f'--workdir={workdir}')
  assert done.returncode == 1, done.stderr[-3000:]
  errors = [l for l in done.stderr.splitlines() if l.startswith('mammo_jax: error:')]
  assert errors == [f'mammo_jax: error: workdir {workdir} is in use by process {proc.pid} '
                    f'(started {json.loads((workdir / ".lock").read_text())["started"]}); '
                    f'wait for it or use another --workdir']
  assert done.stderr.rstrip().endswith(errors[0]) and 'Traceback' not in done.stderr
  assert _snapshot(workdir) == before and not (workdir / 'error.log').exists()


@pytest.mark.parametrize('make,match', [
    (lambda p: p.write_text('x'), 'is a file, not a folder'),
    (lambda p: p.parent.joinpath('f').write_text('x'), 'cannot be created: .*/f is a file'),
])
def test_a_workdir_that_cannot_be_a_folder_is_refused(tmp_path, make, match):
  workdir = tmp_path / 'w'
  make(workdir)
  target = workdir if workdir.exists() else tmp_path / 'f' / 'w'
  with pytest.raises(workdir_lock.WorkdirError, match=match):
    with workdir_lock.hold(str(target)):
      pass


@pytest.mark.parametrize('exists', [True, False])
def test_a_read_only_workdir_is_refused(tmp_path, monkeypatch, exists):
  workdir = tmp_path / 'w'
  if exists:
    workdir.mkdir()
  read_only = str(workdir if exists else tmp_path)
  real_access = os.access
  monkeypatch.setattr(os, 'access', lambda p, mode: p != read_only and real_access(p, mode))
  with pytest.raises(workdir_lock.WorkdirError, match='not writable .read-only.'):
    with workdir_lock.hold(str(workdir)):
      pass
  assert exists or not workdir.exists()
