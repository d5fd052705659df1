"""Transparent huge pages for XLA:CPU's buffers: a run restarts itself with glibc's tunable set.

XLA:CPU allocates each step's temporary buffers with malloc, and glibc serves allocations this
large with fresh mmap()s, so every step touches hundreds of megabytes of new pages, one page
fault per 4 KiB. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc 2.35 and later) glibc asks
the kernel for transparent huge pages on those mappings (madvise), one fault per 2 MiB: the
VGG16 fine-tuning step ran about 20 % faster on the 2-core machine of BENCHMARKS.md.

glibc reads its tunables once, when a process starts, so `python -m mammo_jax.main` re-executes
itself (same interpreter, same command line, same process id) with the tunable added, before
anything else is imported. Nothing happens where it cannot help: not Linux, glibc older than
2.35, huge pages disabled by the kernel ('never'), the tunable already set; or when
MAMMO_JAX_HUGEPAGES=0 turns it off.
"""

from __future__ import annotations

import os
import sys

TUNABLE = 'glibc.malloc.hugetlb=1'
ENV_OFF = 'MAMMO_JAX_HUGEPAGES'  # '0' keeps the default allocator
_THP = '/sys/kernel/mm/transparent_hugepage/enabled'


def _glibc_version() -> tuple[int, ...]:
  try:
    name, version = os.confstr('CS_GNU_LIBC_VERSION').split()  # e.g. 'glibc 2.36'
  except (AttributeError, OSError, ValueError):
    return ()
  return tuple(int(p) for p in version.split('.')[:2]) if name == 'glibc' else ()


def _huge_pages_possible() -> bool:
  try:
    with open(_THP) as f:
      return '[never]' not in f.read()
  except OSError:
    return False


def wanted(environ=None) -> bool:
  """Whether this process should restart with TUNABLE (see the module docstring)."""
  environ = os.environ if environ is None else environ
  return (sys.platform.startswith('linux') and environ.get(ENV_OFF, '1') != '0'
          and 'glibc.malloc.hugetlb' not in environ.get('GLIBC_TUNABLES', '')
          and _glibc_version() >= (2, 35) and _huge_pages_possible())


def environ_with_tunable(environ=None) -> dict:
  """A copy of environ (os.environ) with TUNABLE appended to GLIBC_TUNABLES."""
  env = dict(os.environ if environ is None else environ)
  env['GLIBC_TUNABLES'] = ':'.join(t for t in (env.get('GLIBC_TUNABLES', ''), TUNABLE) if t)
  return env


def invoked_as(module: str, orig_argv=None) -> bool:
  """Whether the interpreter's command line is `python [options] -m module [args]`: only then
  is a restart safe (not, e.g., inside a notebook kernel that runs the module)."""
  argv = list(getattr(sys, 'orig_argv', None) or []) if orig_argv is None else list(orig_argv)
  return any(argv[i] == '-m' and argv[i + 1] == module for i in range(len(argv) - 1))


def restart_with_huge_pages(module: str | None) -> None:
  """Re-executes this Python process with TUNABLE when wanted() and the process was started
  as `python -m module` (None: any command line); returns otherwise, also when the restart
  itself fails (the run then goes on with the default allocator)."""
  if not (wanted() and sys.executable and getattr(sys, 'orig_argv', None)):
    return
  if module is not None and not invoked_as(module):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  try:
    os.execve(sys.executable, sys.orig_argv, environ_with_tunable())
  except OSError:
    pass
