"""Shen et al.'s whole-image classifier: a patch classifier's backbone on the whole mammogram,
Shen's convolutional top, global average pooling and a 2-way softmax output.

The backbone is the patch classifier's base without its head (`resnet50`: Keras's ResNet50,
conv5 output; `vgg16`: block5_pool; `small`: a small conv stack for CPU demos), as the
submodule of the same name, so that a finished S10 patch run's `resnet50` / `vgg16` parameters
load into it one to one (warm_start: `init_from` an S10 run loads the backbone only, strictly).
The top, as in Shen's code (lishen/end2end-all-conv, `add_top_layers`; docs/SHEN_2019.md §4):
  resnet  residual blocks of post-activation bottleneck units (conv1x1 -> BN -> ReLU ->
          dropout, conv3x3 -> BN -> ReLU -> dropout, conv1x1 x`enlarge` -> BN, + shortcut ->
          ReLU -> dropout); a block's first unit has stride 2 and a conv1x1 + BN projection
          shortcut; `[512-512-1024]x2` is blocks ((512, 2), (512, 2)), enlarge 2.
  vgg     blocks of `reps` x (conv3x3 -> BN -> ReLU -> dropout) then a 2x2/2 max-pool;
          `512x1` is ((512, 1), (512, 1)) (the block count is inferred, not read from a
          script).
then global average pooling -> dropout -> Dense(2) named `logits`. New layers use he_normal
kernels and Keras's BatchNorm (momentum 0.99, epsilon 1e-3). A BatchNorm layer that
`trainable` freezes runs in inference mode, as in the ResNet50 backbone.

`__call__(x, *, train, cam=False)`; with cam=True it returns (logits, cam): cam (N, h, w, K)
is the top's last feature map through the output Dense at every position (kernel and bias),
so that its mean over (h, w) is the logits (the Dense is linear and the pooling an average).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mammo_jax import freezing
from mammo_jax.models import layers
from mammo_jax.models.resnet import ResNet50
from mammo_jax.models.vgg16 import VGG16

BACKBONES = ('resnet50', 'vgg16', 'small')
TOPS = ('resnet', 'vgg')
# Shen's tops as (depth, repetitions) per block (docs/SHEN_2019.md §4).
RESNET_TOP = ((512, 2), (512, 2))
VGG_TOP = ((512, 1), (512, 1))
# The small demo backbone: a 2x2 average pool (half the resolution: a quarter of the work),
# then conv3x3 -> BN -> ReLU -> 2x2/2 max-pool per width; 288x224 -> 18x14.
SMALL_WIDTHS = (16, 32, 64)

_he = nn.initializers.he_normal()  # Shen's kernel_initializer='he_normal'


def backbone_of(model: nn.Module) -> str | None:
  """The parameter subtree an S10 patch run's backbone loads into, or None for a model that
  is not a whole-image classifier (warm_start)."""
  return model.backbone if isinstance(model, WholeImageClassifier) else None


class SmallBackbone(nn.Module):
  """A half-resolution input and a few conv -> BN -> ReLU -> max-pool blocks: a backbone
  that trains on 2 CPU cores."""

  widths: Sequence[int] = SMALL_WIDTHS
  trainable: str = 'all'
  bn_axis_name: str | None = None
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    conv, relu_pool = layers.conv_relu_pool(self.conv_impl)
    prefix = '/'.join(self.scope.path)
    x = nn.avg_pool(x.astype(self.dtype), (2, 2), strides=(2, 2))
    for i, width in enumerate(self.widths):
      x = conv(width, (3, 3), padding='SAME', use_bias=False, kernel_init=_he, dtype=self.dtype,
               name=f'conv{i}')(x)
      x = _batch_norm(x, f'{prefix}/bn{i}', f'bn{i}', train, self.trainable, self.bn_axis_name,
                      self.dtype)
      x = relu_pool(x)
    return x


def _batch_norm(x, path: str, name: str, train: bool, trainable: str, axis_name, dtype):
  """Keras's BatchNorm (momentum 0.99, epsilon 1e-3), in inference mode when frozen."""
  frozen = not freezing.is_trainable(path, trainable)
  return nn.BatchNorm(use_running_average=not train or frozen, momentum=0.99, epsilon=1e-3,
                      axis_name=axis_name, dtype=dtype, name=name)(x)


class ShenTop(nn.Module):
  """Shen's convolutional top (module docstring), as the submodule `top`."""

  kind: str = 'resnet'
  blocks: Sequence[Sequence[int]] = RESNET_TOP
  enlarge: int = 2
  dropout: float = 0.0
  trainable: str = 'all'
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.kind not in TOPS:
      raise ValueError(f"whole-image top must be 'resnet' or 'vgg', not {self.kind!r}")
    prefix = '/'.join(self.scope.path)

    def relu_dropout(x):
      x = nn.relu(x)
      return nn.Dropout(self.dropout, deterministic=not train)(x) if self.dropout else x

    def conv_bn(x, name, features, kernel, stride=1, relu=True):
      x = nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding='SAME',
                  kernel_init=_he, dtype=self.dtype, name=f'{name}_conv')(x)
      x = _batch_norm(x, f'{prefix}/{name}_bn', f'{name}_bn', train, self.trainable,
                      self.bn_axis_name, self.dtype)
      return relu_dropout(x) if relu else x

    for b, (depth, reps) in enumerate(self.blocks, 1):
      for u in range(1, reps + 1):
        name = f'block{b}_unit{u}'
        if self.kind == 'vgg':
          x = conv_bn(x, name, depth, 3)
          continue
        stride = 2 if u == 1 else 1
        shortcut = x
        if u == 1:
          shortcut = conv_bn(x, f'{name}_0', depth * self.enlarge, 1, stride, relu=False)
        y = conv_bn(x, f'{name}_1', depth, 1, stride)
        y = conv_bn(y, f'{name}_2', depth, 3)
        y = conv_bn(y, f'{name}_3', depth * self.enlarge, 1, relu=False)
        x = relu_dropout(shortcut + y)
      if self.kind == 'vgg':
        x = nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
    return x


class WholeImageClassifier(nn.Module):
  """Backbone -> Shen's top -> global average pooling -> dropout -> Dense(num_outputs).

  Parameters: the backbone's subtree (named as the backbone), `top` and `logits`, so that
  Shen's first stage trains model.trainable='top,logits'.

  Attributes:
    num_outputs: 2 (BENIGN, MALIGNANT; softmax).
    backbone: one of BACKBONES; also the name of its parameter subtree.
    top_kind: 'resnet' or 'vgg'.
    top_blocks: (depth, repetitions) per block of the top.
    enlarge: a bottleneck unit's output width over its depth (resnet top).
    dropout: after every ReLU of the top and before the output Dense (Shen's one rate).
    trainable: config.model.trainable; frozen BatchNorm layers run in inference mode.
    bn_axis_name, conv_impl, dtype: as the other families (dtype: the convolutions').
  """

  num_outputs: int = 2
  backbone: str = 'resnet50'
  top_kind: str = 'resnet'
  top_blocks: Sequence[Sequence[int]] = RESNET_TOP
  enlarge: int = 2
  dropout: float = 0.0
  trainable: str = 'all'
  bn_axis_name: str | None = None
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  def _features(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    common = dict(bn_axis_name=self.bn_axis_name, dtype=self.dtype, name=self.backbone)
    if self.backbone == 'resnet50':
      return ResNet50(trainable=self.trainable, **common)(x, train)
    if self.backbone == 'vgg16':
      return VGG16(include_top=False, conv_impl=self.conv_impl, dtype=self.dtype,
                   name='vgg16')(x, train)
    if self.backbone == 'small':
      return SmallBackbone(trainable=self.trainable, conv_impl=self.conv_impl, **common)(x, train)
    raise ValueError(f'whole-image backbone must be one of {", ".join(BACKBONES)}, not '
                     f'{self.backbone!r}')

  @nn.compact
  def __call__(self, x: jnp.ndarray, *, train: bool = False, cam: bool = False):
    x = self._features(x, train)
    features = ShenTop(self.top_kind, self.top_blocks, self.enlarge, self.dropout,
                       self.trainable, self.bn_axis_name, self.dtype, name='top')(x, train)
    features = features.astype(jnp.float32)
    pooled = features.mean(axis=(1, 2))
    if self.dropout:
      pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
    dense = nn.Dense(self.num_outputs, kernel_init=_he, name='logits')
    logits = dense(pooled)
    return (logits, dense(features)) if cam else logits
