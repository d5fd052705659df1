"""One run as several processes: TPU pod slices, multi-node GPUs, or CPU processes on one host.

Every process runs the same program (SPMD): the same config, the same steps in the same order.
`initialize` joins them (jax.distributed) before anything touches a device. Then:
- each process feeds only its share of every global batch, and the pmapped steps' collectives
  span the devices of all processes (mammo_jax.parallel), so a run computes what one process
  with all the devices would;
- process 0 alone takes the workdir's lock (`hold_workdir`) and writes the run's files
  (`on_main`: logs, metrics, results, predictions, plots, JSON), between barriers, so that no
  process reads a file while it is being written, and a failure there stops every process;
- all processes write the Orbax checkpoints together (mammo_jax.checkpointing).
With one process every function here is the plain single-process path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from mammo_jax import workdir_lock

_MESSAGE_BYTES = 2000  # how much of a failure's message reaches the other processes


class OtherProcessError(Exception):
  """Another process of the run failed; its message says which and why."""


def _cluster_detected() -> bool:
  """True where jax.distributed.initialize() finds its parameters by itself (a Cloud TPU pod
  slice, SLURM, Open MPI, Kubernetes): the detection JAX itself runs."""
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  return any(not env.opt_in_only_method and env.is_env_present()
             for env in clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
  """Joins the run's processes; call before anything uses a device.

  With --coordinator_address, --num_processes and --process_id (all three): those. With none,
  JAX's cluster detection decides (a TPU pod slice needs no flags); no cluster found means one
  process. --num_processes=1 alone is one process without detection.
  """
  given = {'coordinator_address': coordinator_address, 'num_processes': num_processes,
           'process_id': process_id}
  if num_processes == 1 and coordinator_address is None and process_id in (None, 0):
    return
  if all(v is None for v in given.values()):
    if _cluster_detected():
      jax.distributed.initialize()
    return
  missing = [f'--{k}' for k, v in given.items() if v is None]
  if missing:
    raise ValueError(f'{", ".join(missing)} missing: a run of several processes takes '
                     '--coordinator_address=HOST:PORT (process 0\'s), --num_processes=N and '
                     '--process_id=0..N-1 together (none on a TPU pod slice)')
  if num_processes < 1:
    raise ValueError(f'--num_processes={num_processes}: a run has at least 1 process')
  if not 0 <= process_id < num_processes:
    raise ValueError(f'--process_id={process_id} with --num_processes={num_processes}: '
                     f'accepted ids are 0 to {num_processes - 1}')
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def is_main() -> bool:
  """True on process 0, the one that writes the run's files."""
  return jax.process_index() == 0


def _encode(error: BaseException | None) -> np.ndarray:
  text = b'' if error is None else f'{type(error).__name__}: {error}'.encode()
  out = np.zeros(_MESSAGE_BYTES, np.uint8)
  out[:len(text[:_MESSAGE_BYTES])] = np.frombuffer(text[:_MESSAGE_BYTES], np.uint8)
  return out


def agree(error: BaseException | None) -> None:
  """A barrier at which processes tell each other whether they failed: raises `error` where it
  happened, and OtherProcessError (naming the process and its message) everywhere else."""
  if jax.process_count() == 1:
    if error is not None:
      raise error
    return
  messages = np.asarray(multihost_utils.process_allgather(_encode(error)))
  if error is not None:
    raise error
  for process, message in enumerate(messages):
    if message.any():
      text = bytes(message).rstrip(b'\0').decode(errors='replace')
      raise OtherProcessError(f'process {process} failed: {text}')


def on_main(fn, *args, **kwargs) -> None:
  """fn(*args, **kwargs) on process 0 only (a write of a run's file), after every process has
  reached this point (so none is still reading the file) and before any goes on (so all see
  it); a failure is raised on every process."""
  if jax.process_count() == 1:
    fn(*args, **kwargs)
    return
  agree(None)
  error = None
  if is_main():
    try:
      fn(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except  (raised again, everywhere)
      error = e
  agree(error)


def main_first(fn, *args, **kwargs):
  """fn(*args, **kwargs) on process 0, then on the others: what it builds in a cache that the
  processes share (a dataset) is built once and found by the rest. Returns fn's result."""
  result = None
  for first in (True, False):
    error = None
    if is_main() == first:
      try:
        result = fn(*args, **kwargs)
      except Exception as e:  # pylint: disable=broad-except  (raised again, everywhere)
        error = e
    agree(error)
  return result


@contextlib.contextmanager
def hold_workdir(workdir: str) -> Iterator[None]:
  """workdir_lock.hold(workdir) for the run: process 0 takes the lock, the others wait for it
  and, when it is refused, fail with its message, before any of them writes a thing."""
  with contextlib.ExitStack() as stack:
    error = None
    if is_main():
      try:
        stack.enter_context(workdir_lock.hold(workdir))
      except workdir_lock.WorkdirError as e:
        error = e
    try:
      agree(error)
    except OtherProcessError as e:
      raise workdir_lock.WorkdirError(str(e)) from None
    yield
