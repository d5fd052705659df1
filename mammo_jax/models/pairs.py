"""The study's pair networks, fed an abnormality patch with its healthy baseline patch.

Dual CNN (docs/REFERENCE_STUDY.md §2.6): two unshared conv branches, their feature maps
concatenated on the channel axis (abnormality first). Siamese CNN (§2.7): one shared encoder,
the signed difference of the two feature vectors. Both end in Dense(96, relu), Dropout 0.5 and
one logit, with Keras's defaults made explicit ('valid' padding, Glorot-uniform kernels, zero
biases).

A pair arrives as ONE tensor [N, H, W, 2]: channel 0 the abnormality, channel 1 its baseline
(input_pipeline.load_inputs with data.inputs='image+baseline'). Train and eval steps,
preprocessing and augmentation therefore stay those of single-image models; augmentation
resamples every channel at the same coordinates, so both members of a pair get the same
random transform, as the study's two lock-step Keras iterators with one seed did.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mammo_jax.models import layers

_glorot = nn.initializers.glorot_uniform()


class ConvEncoder(nn.Module):
  """Conv(3x3, valid) -> ReLU -> 2x2 max-pool blocks; returns the NHWC feature map."""

  filters: Sequence[int]
  conv_impl: str = 'xla'  # 'xla' | 'cpu_fast', as in ScratchCNN
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(self.dtype)
    for i, width in enumerate(self.filters):
      x = layers.conv_relu_pool_block(self.conv_impl, x, features=width, kernel_size=(3, 3),
                                      padding='VALID', kernel_init=_glorot, dtype=self.dtype,
                                      name=f'conv{i}')
    return x


def _split_pair(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  if x.ndim != 4 or x.shape[-1] != 2:
    raise ValueError(f'pair models take [N, H, W, 2] inputs (abnormality, baseline), got shape '
                     f'{x.shape}; set --config.data.inputs=image+baseline')
  return x[..., :1], x[..., 1:]


def _head(x: jnp.ndarray, dense: int, num_outputs: int, dropout: float,
          train: bool) -> jnp.ndarray:
  """Flatten -> Dense(relu) -> Dropout -> Dense logits, built inside the caller's compact
  method, so that its layers are the caller's children 'fc' and 'logits' as in ScratchCNN
  (model.trainable paths such as 'fc,logits' mean the same in both families)."""
  x = x.astype(jnp.float32).reshape((x.shape[0], -1))  # NHWC flatten = Keras's H*W*C order
  x = nn.relu(nn.Dense(dense, kernel_init=_glorot, name='fc')(x))
  if dropout:
    x = nn.Dropout(dropout, deterministic=not train)(x)
  return nn.Dense(num_outputs, kernel_init=_glorot, name='logits')(x)


class DualCNN(nn.Module):
  """Two unshared branches, channel concat (abnormality first), flatten, dense head."""

  filters: Sequence[int] = (32, 64, 128)
  dense: int = 96
  num_outputs: int = 1
  dropout: float = 0.5
  # No batch norm; accepted because train.create_model passes it to every registered model.
  bn_axis_name: str | None = None
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    abnormality, baseline = _split_pair(x)
    encoder = dict(filters=self.filters, conv_impl=self.conv_impl, dtype=self.dtype)
    a = ConvEncoder(**encoder, name='abnormality_branch')(abnormality)
    b = ConvEncoder(**encoder, name='baseline_branch')(baseline)
    features = jnp.concatenate([a, b], axis=-1)  # Keras concatenate(): channels, abn first
    return _head(features, self.dense, self.num_outputs, self.dropout, train)


class SiameseCNN(nn.Module):
  """One shared encoder applied to both members; signed difference abnormality - baseline."""

  filters: Sequence[int] = (32, 64, 128)
  dense: int = 96
  num_outputs: int = 1
  dropout: float = 0.5
  bn_axis_name: str | None = None  # no batch norm; see DualCNN
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    abnormality, baseline = _split_pair(x)
    encoder = ConvEncoder(self.filters, conv_impl=self.conv_impl, dtype=self.dtype,
                          name='encoder')
    # One call on both members stacked on the batch axis: the same shared weights as two
    # calls, in one larger convolution per layer.
    n = abnormality.shape[0]
    features = encoder(jnp.concatenate([abnormality, baseline], axis=0)).astype(jnp.float32)
    # Keras's Subtract(): a signed difference, not a distance.
    return _head(features[:n] - features[n:], self.dense, self.num_outputs, self.dropout,
                 train)
