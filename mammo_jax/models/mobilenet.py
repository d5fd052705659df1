"""MobileNet v1 (Howard et al. 2017) with Keras's layer names, and the study's classifier on it.

`MobileNet` is the network of `keras.applications.MobileNet`: a strided 3x3 convolution, then
thirteen depthwise-separable blocks (3x3 depthwise convolution, 1x1 pointwise convolution),
each convolution without bias and followed by BatchNorm (epsilon 1e-3, momentum 0.99) and
ReLU6; the width multiplier `alpha` scales every layer's channels. Strided depthwise
convolutions pad one zero row and column at the bottom and right and then run 'valid', as
Keras's ZeroPadding2D(((0, 1), (0, 1))) does; the first convolution is 'same', as in Keras 3.
Parameter names equal Keras's layer names (`conv1`, `conv1_bn`, `conv_dw_{i}`,
`conv_dw_{i}_bn`, `conv_pw_{i}`, `conv_pw_{i}_bn`, `conv_preds`), flat, so ported weights map
one to one (`mammo_jax.weights.mobilenet`); BatchNorm moving statistics are `batch_stats`.

BatchNorm runs in inference mode when `train` is False or when its layer is frozen under
`trainable` (config.model.trainable, paths as the classifier sees them, e.g.
'mobilenet/conv_pw_13_bn'), as Keras runs a frozen BatchNorm: feature extraction neither uses
nor updates batch statistics in the frozen base.

`MobileNetClassifier` is the study's MobileNet feature extractor (docs/REFERENCE_STUDY.md
§2.5): the base (submodule `mobilenet`) on inputs resized to `input_size`, global average
pooling, optional dropout, an optional Dense(fc, relu) and the output layer. `check_pretrained`,
`load` and `backbone` are the family's weight loader.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mammo_jax import freezing
from mammo_jax.models import layers

# (pointwise filters at alpha 1, stride) of the thirteen depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
          (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
STEM_FILTERS = 32
CONV_NAMES = ('conv1',) + tuple(f'conv_{kind}_{i}' for i in range(1, len(BLOCKS) + 1)
                                for kind in ('dw', 'pw'))
BN_NAMES = tuple(f'{name}_bn' for name in CONV_NAMES)
TOP_NAME = 'conv_preds'
BN_EPSILON, BN_MOMENTUM = 1e-3, 0.99  # Keras's BatchNormalization defaults

_glorot = nn.initializers.glorot_uniform()  # Keras's defaults (weights=None)


def widths(alpha: float) -> tuple[int, ...]:
  """Output channels of conv1 and of each block at width multiplier alpha (Keras's int())."""
  return (int(STEM_FILTERS * alpha),) + tuple(int(f * alpha) for f, _ in BLOCKS)


class MobileNet(nn.Module):
  """keras.applications.MobileNet (v1) as a linen module: the last feature map, or top logits.

  Attributes:
    alpha: width multiplier (Keras's published weights: 0.25, 0.5, 0.75, 1.0).
    depth_multiplier: output channels per input channel of the depthwise convolutions.
    include_top: add Keras's top: global average pool, conv_preds (a 1x1 convolution with
      bias); `__call__` then returns logits [N, num_classes] (Keras's dropout before
      conv_preds, rate 1e-3, and its softmax are left out).
    num_classes: width of conv_preds.
    trainable: config.model.trainable; a BatchNorm whose path it freezes runs in inference mode.
    bn_axis_name: pmap axis over which training-mode BatchNorm statistics are averaged.
    dtype: computation dtype (bfloat16 for half precision); parameters stay float32.

  Returns NHWC features (no pooling) of 1024 * alpha channels without the top.
  """

  alpha: float = 1.0
  depth_multiplier: int = 1
  include_top: bool = False
  num_classes: int = 1000
  trainable: str = 'all'
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  def _bn_relu6(self, x: jnp.ndarray, name: str, train: bool) -> jnp.ndarray:
    # Batch statistics only in training, and only where the layer trains (Keras runs a frozen
    # BatchNorm in inference mode); the path is the whole model's, e.g. 'mobilenet/conv1_bn'.
    use_batch = train and freezing.is_trainable('/'.join(self.scope.path + (name,)),
                                                self.trainable)
    x = nn.BatchNorm(use_running_average=not use_batch, momentum=BN_MOMENTUM,
                     epsilon=BN_EPSILON, axis_name=self.bn_axis_name, dtype=self.dtype,
                     name=name)(x)
    return jnp.clip(x, 0.0, 6.0)  # ReLU6

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 32:
      raise ValueError(f'MobileNet takes NHWC RGB inputs of at least 32x32, got shape {x.shape}')
    stem, *block_widths = widths(self.alpha)
    x = x.astype(self.dtype)
    x = nn.Conv(stem, (3, 3), strides=(2, 2), padding='SAME', use_bias=False,
                kernel_init=_glorot, dtype=self.dtype, name='conv1')(x)
    x = self._bn_relu6(x, 'conv1_bn', train)
    for i, ((_, stride), filters) in enumerate(zip(BLOCKS, block_widths), 1):
      channels = x.shape[-1]
      # Keras: ZeroPadding2D(((0, 1), (0, 1))) then 'valid' before a strided depthwise conv.
      padding = 'SAME' if stride == 1 else ((0, 1), (0, 1))
      x = nn.Conv(channels * self.depth_multiplier, (3, 3), strides=(stride, stride),
                  padding=padding, feature_group_count=channels, use_bias=False,
                  kernel_init=_glorot, dtype=self.dtype, name=f'conv_dw_{i}')(x)
      x = self._bn_relu6(x, f'conv_dw_{i}_bn', train)
      x = nn.Conv(filters, (1, 1), use_bias=False, kernel_init=_glorot, dtype=self.dtype,
                  name=f'conv_pw_{i}')(x)
      x = self._bn_relu6(x, f'conv_pw_{i}_bn', train)
    if not self.include_top:
      return x
    x = x.mean(axis=(1, 2), keepdims=True)
    x = nn.Conv(self.num_classes, (1, 1), kernel_init=_glorot, dtype=self.dtype,
                name=TOP_NAME)(x)
    return x.reshape((x.shape[0], -1)).astype(jnp.float32)


class MobileNetClassifier(nn.Module):
  """The study's MobileNet model: resize -> MobileNet base -> global average pool ->
  [dropout] -> [Dense(fc, relu)] -> Dense(num_outputs).

  input_size: the side the inputs are bilinearly resized to before the base (the study fed
  its 150x150 patches at 160x160); None feeds them as they are. The resize is part of the
  model, so training, evaluation and prediction all see the same input. The head runs in
  float32 even when the base runs in bfloat16.
  """

  num_outputs: int
  alpha: float = 0.5
  dropout: float = 0.0
  fc: int = 0
  input_size: int | None = None
  trainable: str = 'all'
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.input_size is not None and self.input_size < 32:
      raise ValueError(f'model.input_size={self.input_size}: MobileNet takes inputs of at '
                       'least 32x32; set --config.model.input_size=160 (the study\'s size) or '
                       '0 (the stored patches\' size)')
    if self.input_size and x.shape[1:3] != (self.input_size, self.input_size):
      x = jax.image.resize(x, (x.shape[0], self.input_size, self.input_size, x.shape[3]),
                           'bilinear')
    x = MobileNet(alpha=self.alpha, trainable=self.trainable, bn_axis_name=self.bn_axis_name,
                  dtype=self.dtype, name='mobilenet')(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    return layers.transfer_head(x, self.num_outputs, self.fc, self.dropout, train)


# ----------------------------------------------------------------------------------------
# The family's weight loader (models.REGISTRY's `family`); weights are read lazily, so that
# importing the model imports no file readers.


def check_pretrained(spec: str) -> None:
  """Fails fast, before any data is built, when config.model.pretrained cannot be found.

  spec is an official name (weights.mobilenet.OFFICIAL) or a file; otherwise
  FileNotFoundError says where the official files are and how to port them.
  """
  from mammo_jax.weights import mobilenet as weights  # pylint: disable=g-import-not-at-top
  if spec not in weights.OFFICIAL and not os.path.isfile(os.path.expanduser(spec)):
    raise FileNotFoundError(weights.missing_message(spec))


def load(init_variables: Mapping, spec: str, *, preprocess: str, cache_dir: str | None = None,
         dont_load: str = '') -> tuple[dict, dict]:
  """init_variables of a MobileNetClassifier (or a bare MobileNet) with its base replaced by
  pretrained weights.

  Args:
    init_variables: {'params': ..., 'batch_stats': ...} of the model; the base is the
      'mobilenet' submodule when there is one, else the whole tree.
    spec: config.model.pretrained (see weights.mobilenet.load_pretrained).
    preprocess: config.model.preprocess; must be what the weights were trained with.
    cache_dir: where official files are cached once ported.
    dont_load: regex (re.search) over the file's '/'-joined entries not to load, e.g.
      weights.mobilenet.TOP_PATTERN for a file with the ImageNet top.

  Returns:
    (variables, the file's sidecar metadata). The merge is strict: every base parameter and
    moving statistic comes from the file, with its shape, and every entry of the file not in
    dont_load is used.
  """
  from mammo_jax.weights import merge  # pylint: disable=g-import-not-at-top
  from mammo_jax.weights import mobilenet as weights  # pylint: disable=g-import-not-at-top
  loaded, metadata = weights.load_pretrained(spec, cache_dir=cache_dir)
  if metadata.get('preprocess', preprocess) != preprocess:
    raise ValueError(f'{spec} holds weights trained on {metadata["preprocess"]!r}-preprocessed '
                     f'inputs, but model.preprocess is {preprocess!r}; set '
                     f'--config.model.preprocess={metadata["preprocess"]}')
  nested = 'mobilenet' in init_variables['params']
  out = {}
  for collection in ('params', 'batch_stats'):
    target = init_variables[collection]
    try:
      base = merge.merge_params(target['mobilenet'] if nested else target, loaded[collection],
                                skip=dont_load or None)
    except merge.MergeError as e:
      fix = (f'The file holds a MobileNet with alpha {metadata.get("alpha")}: set '
             f'--config.model.alpha to it, or port the weights of the MobileNet you want '
             f'({weights.PORT_COMMAND}).')
      if e.skip_hint:
        fix += f" Or leave the extra layers out: --config.model.dont_load='{e.skip_hint}'"
      raise ValueError(f'model.pretrained={spec}: {collection}: {e}\n{fix}') from None
    out[collection] = {**target, 'mobilenet': base} if nested else base
  return {**init_variables, **out}, metadata


def backbone(metadata: Mapping) -> nn.Module:
  """The headless MobileNet a ported file's variables fit, from its sidecar metadata: its
  `apply(variables, x)` returns the last feature map in inference mode."""
  return MobileNet(alpha=metadata['alpha'],
                   depth_multiplier=metadata.get('depth_multiplier', 1), include_top=False)
