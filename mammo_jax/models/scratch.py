"""The reference study's from-scratch CNNs (docs/REFERENCE_STUDY.md §2.1-2.3) as one linen module.

Each experiment is a set of attributes: conv widths (one conv + 2x2 max-pool block each), the
first block's kernel and stride, the head's width, dropout, and optional batch norm. Keras
defaults the study relied on are explicit: 'valid' padding, Glorot-uniform kernels, zero
biases, BatchNorm epsilon 1e-3. The module returns logits; losses and thresholds live in the
task code.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mammo_jax.models import layers

_glorot = nn.initializers.glorot_uniform()


class ScratchCNN(nn.Module):
  """Conv blocks (conv [-> BN] -> ReLU -> max-pool), flatten, Dense-ReLU-[Dropout]-Dense."""

  filters: Sequence[int]
  dense: int
  num_outputs: int  # 1: a sigmoid logit (binary tasks); 4: softmax logits
  first_kernel: int = 3
  first_stride: int = 1
  dropout: float = 0.5  # 0 leaves the dropout layer out (Exp 0)
  batch_norm: bool = False
  bn_momentum: float = 0.99  # Keras semantics: running = momentum * running + (1 - m) * batch
  bn_epsilon: float = 1e-3  # Keras's default, not Flax's 1e-5
  bn_axis_name: str | None = None  # set to the pmap axis to sync batch statistics
  # 'xla': nn.Conv and nn.max_pool. 'cpu_fast': layers.Conv and layers.max_pool, the same
  # parameters and values with gradients written in forms XLA:CPU runs several times faster
  # (benchmarks/conv_backward.py).
  conv_impl: str = 'xla'
  # Computation dtype of the conv stack (bfloat16 = config.half_precision); parameters, batch
  # statistics and the dense head stay float32.
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv, relu_pool = layers.conv_relu_pool(self.conv_impl)
    x = x.astype(self.dtype)
    for i, width in enumerate(self.filters):
      k, s = (self.first_kernel, self.first_stride) if i == 0 else (3, 1)
      conv_kwargs = dict(features=width, kernel_size=(k, k), strides=(s, s), padding='VALID',
                         kernel_init=_glorot, dtype=self.dtype, name=f'conv{i}')
      if not self.batch_norm:
        x = layers.conv_relu_pool_block(self.conv_impl, x, **conv_kwargs)
        continue
      x = conv(**conv_kwargs)(x)
      x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                       epsilon=self.bn_epsilon, axis_name=self.bn_axis_name,
                       dtype=self.dtype, name=f'bn{i}')(x)
      x = relu_pool(x)
    x = x.astype(jnp.float32).reshape((x.shape[0], -1))  # NHWC flatten = Keras's H*W*C order
    x = nn.relu(nn.Dense(self.dense, kernel_init=_glorot, name='fc')(x))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=_glorot, name='logits')(x)
