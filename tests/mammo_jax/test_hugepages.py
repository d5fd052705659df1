"""mammo_jax.hugepages: when a run restarts itself with glibc's huge-page tunable, and that it
does so exactly once."""

import os
import subprocess
import sys

import pytest

from mammo_jax import hugepages

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wanted_respects_the_switch_and_an_existing_tunable(monkeypatch):
  monkeypatch.setattr(hugepages, '_glibc_version', lambda: (2, 36))
  monkeypatch.setattr(hugepages, '_huge_pages_possible', lambda: True)
  monkeypatch.setattr(sys, 'platform', 'linux')
  assert hugepages.wanted({})
  assert hugepages.wanted({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'})
  assert not hugepages.wanted({hugepages.ENV_OFF: '0'})
  assert not hugepages.wanted({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})  # the user's
  monkeypatch.setattr(hugepages, '_glibc_version', lambda: (2, 34))  # no such tunable
  assert not hugepages.wanted({})
  monkeypatch.setattr(hugepages, '_glibc_version', lambda: (2, 36))
  monkeypatch.setattr(hugepages, '_huge_pages_possible', lambda: False)  # THP 'never'
  assert not hugepages.wanted({})


def test_environ_with_tunable_appends_to_existing_tunables():
  assert hugepages.environ_with_tunable({})['GLIBC_TUNABLES'] == hugepages.TUNABLE
  env = hugepages.environ_with_tunable({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'A': '1'})
  assert env == {'GLIBC_TUNABLES': f'glibc.malloc.arena_max=2:{hugepages.TUNABLE}', 'A': '1'}


_PROGRAM = ('import os, sys; from mammo_jax import hugepages; '
            'print("start", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:]); '
            'hugepages.restart_with_huge_pages(None); print("run", os.getpid())')


@pytest.mark.parametrize('switch', ['1', '0'])
def test_a_process_restarts_once_with_the_tunable_and_its_arguments(switch):
  if not hugepages.wanted({}):
    pytest.skip('this machine cannot use the tunable (not Linux, old glibc or THP never)')
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  env[hugepages.ENV_OFF] = switch
  out = subprocess.run([sys.executable, '-c', _PROGRAM, 'a b', '--x=1'], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=True).stdout.split('\n')
  pid = out[0].split()[1]
  if switch == '1':  # restarted in place (same process id), with the arguments, once
    assert out[:3] == [f"start {pid} None ['a b', '--x=1']",
                       f"start {pid} {hugepages.TUNABLE} ['a b', '--x=1']", f'run {pid}']
  else:
    assert out[:2] == [f"start {pid} None ['a b', '--x=1']", f'run {pid}']


def test_only_a_python_dash_m_command_line_of_the_module_restarts():
  main = 'mammo_jax.main'
  assert hugepages.invoked_as(main, ['python', '-m', main, '--config=c.py'])
  assert hugepages.invoked_as(main, ['/usr/bin/python3', '-X', 'dev', '-m', main])
  assert not hugepages.invoked_as(main, ['python', '-c', 'import runpy'])  # a notebook, runpy
  assert not hugepages.invoked_as(main, ['ipykernel_launcher.py', '-f', 'k.json'])
  assert not hugepages.invoked_as(main, ['python', '-m', 'pytest', main])
  # Such a process is not restarted: the program goes on in the same process.
  out = subprocess.run([sys.executable, '-c', _PROGRAM.replace('(None)', f'({main!r})')],
                       env={k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'},
                       cwd=ROOT, capture_output=True, text=True, check=True).stdout.split('\n')
  assert out[0].startswith('start') and out[1].startswith('run'), out
