"""The one place where host batches meet devices, on one process or several.

Steps are `jax.pmap`-ed over the axis AXIS. The train state is not replicated: it goes in
with `in_axes=None` and comes back once with `out_axes=None` (valid because gradients and
batch statistics are pmean'd), as in Flax's current imagenet example. Only batches are split,
here, from [global_batch, ...] to [devices, per_device, ...].

Several processes (mammo_jax.distributed): pmap lays the devices out process by process (all
of process 0's local devices first, then process 1's, ...), so a process's devices hold one
contiguous block of every global batch, `process_rows`, and each example sits at the position
in the global batch that it would hold on one process with all the devices (augmentation keys
derive from it). A process reads and feeds only that block; evaluation outputs are gathered
back in global order (`gather_shares`); Orbax saves global arrays (`to_global`, `to_local`).
"""

import collections
from collections.abc import Iterable, Iterator
import functools
import itertools

import jax
from jax.experimental import multihost_utils
import numpy as np

AXIS = 'batch'


def device_count() -> int:
  """Devices a global batch is split over: those of every process."""
  return jax.device_count()


def check_batch_size(batch_size: int, what: str = 'batch_size') -> None:
  """A global batch must be a positive multiple of the device count (of all processes)."""
  n = device_count()
  where = (f'{n} devices ({jax.process_count()} processes x {jax.local_device_count()})'
           if jax.process_count() > 1 else f'{n} local devices')
  if batch_size <= 0:
    raise ValueError(f'{what}={batch_size}: accepted values are positive multiples of the '
                     f'{where}; set e.g. --config.{what}={n * 32}')
  if batch_size % n:
    raise ValueError(f'{what}={batch_size} does not split evenly over the {where}; use a '
                     f'multiple of {n}, e.g. --config.{what}={-(-batch_size // n) * n}')


def process_rows(batch_size: int) -> slice:
  """This process's rows of a global batch of `batch_size` (all of it with one process)."""
  share = batch_size // jax.process_count()
  return slice(jax.process_index() * share, (jax.process_index() + 1) * share)


@functools.cache
def _leading_axis_sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def shard(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's [B / processes, ...] share of a global batch (the whole batch with one
  process) -> [local devices, B / devices, ...] arrays placed on the local devices."""
  n = jax.local_device_count()

  def put(x):
    check_batch_size(x.shape[0] * jax.process_count())
    return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]),
                          _leading_axis_sharding())

  return jax.tree.map(put, batch)


def unshard(x: jax.Array) -> np.ndarray:
  """[local devices, per_device, ...] step outputs -> this process's [rows, ...] host array."""
  x = np.asarray(jax.device_get(x))
  return x.reshape((-1,) + x.shape[2:])


def gather_shares(tree, num_batches: int):
  """Host arrays [num_batches * rows, ...]: this process's shares of `num_batches` global
  batches, one after the other -> [num_batches * batch_size, ...], those global batches in
  order, on every process (collective; unchanged with one process)."""
  if jax.process_count() == 1:
    return tree

  def gather(x):
    x = np.asarray(multihost_utils.process_allgather(x))  # [processes, num_batches * rows, ...]
    x = x.reshape((x.shape[0], num_batches, -1) + x.shape[2:]).swapaxes(0, 1)
    return x.reshape((-1,) + x.shape[3:])

  return jax.tree.map(gather, tree)


@functools.cache
def _replicated() -> jax.sharding.NamedSharding:
  """Every device of every process, in pmap's order."""
  devices = [d for p in range(jax.process_count()) for d in jax.local_devices(p)]
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                    jax.sharding.PartitionSpec())


def to_global(tree):
  """A train state as each process holds it -> one array replicated over all processes' devices,
  as multi-process Orbax saves it (unchanged with one process)."""
  if jax.process_count() == 1:
    return tree
  sharding = _replicated()
  tree = jax.tree.map(lambda x: x if isinstance(x, jax.Array) else np.asarray(x), tree)
  return multihost_utils.host_local_array_to_global_array(tree, sharding.mesh, sharding.spec)


def to_local(tree):
  """The reverse of to_global: this process's copy of each replicated array."""
  if jax.process_count() == 1:
    return tree
  sharding = _replicated()
  return multihost_utils.global_array_to_host_local_array(tree, sharding.mesh, sharding.spec)


def prefetch(batches: Iterable[dict[str, np.ndarray]],
             size: int = 2) -> Iterator[dict[str, jax.Array]]:
  """Shards batches ahead of use so host-to-device copies overlap the running step."""
  queue = collections.deque()
  batches = iter(batches)
  for batch in itertools.islice(batches, size):
    queue.append(shard(batch))
  while queue:
    yield queue.popleft()
    for batch in itertools.islice(batches, 1):
      queue.append(shard(batch))
