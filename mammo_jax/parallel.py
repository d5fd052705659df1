"""The one place where host batches meet local devices.

Steps are `jax.pmap`-ed over the axis AXIS. The train state is not replicated: it goes in
with `in_axes=None` and comes back once with `out_axes=None` (valid because gradients and
batch statistics are pmean'd), as in Flax's current imagenet example. Only batches are split,
here, from [global_batch, ...] to [devices, per_device, ...].
"""

import collections
from collections.abc import Iterable, Iterator
import functools
import itertools

import jax
import numpy as np

AXIS = 'batch'


def device_count() -> int:
  return jax.local_device_count()


def check_batch_size(batch_size: int, what: str = 'batch_size') -> None:
  """A global batch must be a positive multiple of the local device count."""
  n = device_count()
  if batch_size <= 0:
    raise ValueError(f'{what}={batch_size}: accepted values are positive multiples of the {n} '
                     f'local devices; set e.g. --config.{what}={n * 32}')
  if batch_size % n:
    raise ValueError(f'{what}={batch_size} does not split evenly over the {n} local devices; '
                     f'use a multiple of {n}, e.g. --config.{what}={-(-batch_size // n) * n}')


@functools.cache
def _leading_axis_sharding() -> jax.sharding.NamedSharding:
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))


def shard(batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """[B, ...] host arrays -> [devices, B / devices, ...] arrays placed on the devices."""
  n = device_count()

  def put(x):
    check_batch_size(x.shape[0])
    return jax.device_put(x.reshape((n, x.shape[0] // n) + x.shape[1:]),
                          _leading_axis_sharding())

  return jax.tree.map(put, batch)


def unshard(x: jax.Array) -> np.ndarray:
  """[devices, per_device, ...] step outputs -> one [B, ...] host array."""
  x = np.asarray(jax.device_get(x))
  return x.reshape((-1,) + x.shape[2:])


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
