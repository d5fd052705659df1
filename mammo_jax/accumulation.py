"""Gradient accumulation: one optimizer update from a device's batch in micro-batches.

config.grad_accum_steps = A splits each device's slice of the global batch into A equal
micro-batches, run one after the other (lax.scan), so that only a micro-batch's activations are
alive at a time (a 1152x896 ResNet50 batch does not fit one GPU whole). The gradients, losses
and logits of the micro-batches are averaged and concatenated: with per-example losses that do
not depend on the rest of the batch, the update equals the one of the whole batch at once, up
to float32 rounding. What the split does change:
  * BatchNorm in training mode normalises each micro-batch with its own statistics (as a
    smaller per-device batch would), and its running averages take one momentum update per
    micro-batch, A per step; frozen BatchNorm layers (inference mode) are unaffected;
  * dropout draws one key per micro-batch (folded from the step's key).
Class-balance weights and augmentation keys are computed on the whole batch before the split,
so they are those of the unsplit step.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax
import jax.numpy as jnp

def check(per_device_batch: int, steps: int) -> None:
  """A device's batch must split into `steps` equal micro-batches."""
  if steps < 1 or per_device_batch % steps:
    raise ValueError(f'config.grad_accum_steps={steps} must be >= 1 and divide the per-device '
                     f'batch ({per_device_batch}); set config.batch_size to a multiple of '
                     f'devices x grad_accum_steps')


def accumulate(grad_fn: Callable, steps: int, train_params, batch_stats, images: jnp.ndarray,
               labels: jnp.ndarray, weights: jnp.ndarray | None, dropout_rng: jax.Array):
  """grad_fn(train_params, batch_stats, images, labels, weights, dropout_rng) -> (grads,
  (loss, logits, batch_stats)) over `steps` micro-batches, in the same form: the mean gradients
  and loss, every example's logits, the batch statistics after the last micro-batch."""
  check(labels.shape[0], steps)

  def split(x):
    return None if x is None else x.reshape((steps, x.shape[0] // steps) + x.shape[1:])

  def body(carry, micro):
    grads_sum, stats = carry
    index, micro_images, micro_labels, micro_weights = micro
    rng = jax.random.fold_in(dropout_rng, index)
    grads, (loss, logits, stats) = grad_fn(train_params, stats, micro_images, micro_labels,
                                           micro_weights, rng)
    return (jax.tree.map(jnp.add, grads_sum, grads), stats), (loss, logits)

  zeros = jax.tree.map(jnp.zeros_like, train_params)
  micro = (jnp.arange(steps), split(images), split(labels), split(weights))
  (grads, batch_stats), (losses, logits) = lax.scan(body, (zeros, batch_stats), micro)
  grads = jax.tree.map(lambda g: g / steps, grads)
  return grads, (losses.mean(), logits.reshape((-1,) + logits.shape[2:]), batch_stats)
