"""ResNet50 (He et al. 2015) in its two published variants, with Keras's layer names.

`ResNet50` is `keras.applications.ResNet50` (variant 'keras', v1: the stride of a stage's
first block on its first 1x1 convolution, convolutions with bias, BatchNorm epsilon 1.001e-5)
or torchvision's `resnet50` (variant 'torchvision', v1.5: the stride on the 3x3 convolution,
no convolution bias, epsilon 1e-5). Both pad the 7x7/2 stem by 3 and the 3x3/2 max-pool by 1
(after a ReLU, zero and -inf padding pool alike). Parameter names are Keras's flat layer names
in both variants (`conv1_conv`, `conv2_block1_0_conv` for a projection shortcut,
`conv2_block1_1_bn`, ..., `predictions`), so torchvision weights are renamed once, when
ported (mammo_jax.weights.resnet50). BatchNorm parameters are `{scale, bias}` and its
running averages the `batch_stats` collection's `{mean, var}`.

A BatchNorm layer runs in inference mode (running averages, no update) when `train` is False
or when `trainable` (config.model.trainable) freezes it, as Keras does with a frozen layer:
feature extraction neither uses nor changes batch statistics in the base.

`ResNet50Classifier` is the report's feature extractor (docs/REFERENCE_STUDY.md §2.5): the
base without its top (submodule `resnet50`), global average pooling over the 2,048 maps,
[dropout], [Dense(fc, relu)], Dense(k) named `logits`. `check_pretrained` and `load` are the
family's loader for config.model.pretrained; `backbone(metadata)` builds the base a ported
file describes (mammo_jax.models.pretrained).
"""

import os
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mammo_jax import freezing
from mammo_jax.models import layers
from mammo_jax import preprocessing
from mammo_jax.config_lib.resnet50 import IMAGENET_TOP

# (stage, bottleneck width, blocks); a block's output is 4x its width.
STAGES = ((2, 64, 3), (3, 128, 4), (4, 256, 6), (5, 512, 3))
# Per variant: convolution bias, BatchNorm epsilon and momentum (Keras's 0.99; torch's 0.1
# is 0.9 in Keras/Flax terms), and whether a stage's stride sits on the 3x3 convolution.
VARIANTS = {
    'keras': dict(conv_bias=True, epsilon=1.001e-5, momentum=0.99, stride_on_3x3=False),
    'torchvision': dict(conv_bias=False, epsilon=1e-5, momentum=0.9, stride_on_3x3=True),
}
# The preprocessing each variant's published weights expect (model.preprocess).
PREPROCESS = {'keras': 'caffe', 'torchvision': 'torch'}
FEATURES = 2048
TOP_NAME = 'predictions'
# The ImageNet top of a with-top weight file, which the classifier's head replaces (the configs'
# model.dont_load, defined with them so that configs need not import this module).
TOP_PATTERN = IMAGENET_TOP


def block_names(stage: int, block: int) -> tuple[str, ...]:
  """Layer stems of one bottleneck block, projection (_0) first, as Keras creates them."""
  branches = (0, 1, 2, 3) if block == 1 else (1, 2, 3)
  return tuple(f'conv{stage}_block{block}_{i}' for i in branches)


def layer_stems() -> tuple[str, ...]:
  """Every conv+BN stem in creation order: conv1, conv2_block1_0, conv2_block1_1, ..."""
  return ('conv1',) + tuple(stem for stage, _, n in STAGES for b in range(1, n + 1)
                            for stem in block_names(stage, b))


CONV_NAMES = tuple(f'{s}_conv' for s in layer_stems())
BN_NAMES = tuple(f'{s}_bn' for s in layer_stems())

_glorot = nn.initializers.glorot_uniform()  # Keras's defaults (weights=None)


class ResNet50(nn.Module):
  """ResNet50 as a linen module; returns the conv5 feature map (NHWC), or logits with the top.

  Attributes:
    variant: 'keras' (v1) or 'torchvision' (v1.5), see the module docstring.
    include_top: add global average pooling and `predictions` (logits; Keras's softmax
      belongs to the loss here).
    num_classes: width of `predictions`.
    trainable: config.model.trainable; BatchNorm layers it freezes run in inference mode.
      Paths are matched as the root module sees them ('resnet50/conv1_bn' in a classifier).
    bn_axis_name: the pmap axis to sync batch statistics over, or None.
    dtype: computation dtype (bfloat16 for half precision); parameters stay float32.
    bn_momentum: the running averages' momentum; 0 keeps the variant's. Training from random
      initialisation for a few hundred steps wants less than Keras's 0.99, whose averages
      trail weights that move fast.
    zero_init_residual: start each residual branch's last BatchNorm scale at 0 (Goyal et al.
      2017), so that every block starts as the identity: random initialisation only; ported
      weights replace it.
  """

  variant: str = 'keras'
  include_top: bool = False
  num_classes: int = 1000
  trainable: str = 'all'
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = 0.0
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.variant not in VARIANTS:
      raise ValueError(f"ResNet50 variant must be one of {', '.join(VARIANTS)}, not "
                       f'{self.variant!r}')
    if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 32:
      raise ValueError(f'ResNet50 takes NHWC RGB inputs of at least 32x32, got {x.shape}')
    v = VARIANTS[self.variant]
    prefix = '/'.join(self.scope.path)

    def conv_bn(x, stem, features, kernel, stride=1, relu=True, last_of_branch=False):
      pad = (kernel - 1) // 2
      x = nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                  padding=((pad, pad), (pad, pad)), use_bias=v['conv_bias'],
                  kernel_init=_glorot, dtype=self.dtype, name=f'{stem}_conv')(x)
      bn_path = f'{prefix}/{stem}_bn' if prefix else f'{stem}_bn'
      frozen = not freezing.is_trainable(bn_path, self.trainable)
      zero = last_of_branch and self.zero_init_residual
      x = nn.BatchNorm(use_running_average=not train or frozen,
                       momentum=self.bn_momentum or v['momentum'], epsilon=v['epsilon'],
                       axis_name=self.bn_axis_name, dtype=self.dtype,
                       scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
                       name=f'{stem}_bn')(x)
      return nn.relu(x) if relu else x

    x = conv_bn(x.astype(self.dtype), 'conv1', 64, 7, stride=2)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, width, blocks in STAGES:
      for b in range(1, blocks + 1):
        stride = 2 if b == 1 and stage > 2 else 1
        stems = block_names(stage, b)
        shortcut = x
        if b == 1:
          shortcut = conv_bn(x, stems[0], 4 * width, 1, stride, relu=False)
        s1, s3 = (1, stride) if v['stride_on_3x3'] else (stride, 1)
        y = conv_bn(x, stems[-3], width, 1, s1)
        y = conv_bn(y, stems[-2], width, 3, s3)
        y = conv_bn(y, stems[-1], 4 * width, 1, relu=False, last_of_branch=True)
        x = nn.relu(shortcut + y)
    if not self.include_top:
      return x
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, kernel_init=_glorot, name=TOP_NAME)(x)


class ResNet50Classifier(nn.Module):
  """The report's feature extractor: ResNet50 base -> global average pool -> [dropout] ->
  [Dense(fc, relu)] -> Dense(num_outputs). The head runs in float32."""

  num_outputs: int
  variant: str = 'keras'
  dropout: float = 0.0
  fc: int = 0  # 0: the logits sit directly on the 2,048 pooled features, as in the report
  trainable: str = 'all'
  bn_axis_name: str | None = None
  dtype: jnp.dtype = jnp.float32
  bn_momentum: float = 0.0  # ResNet50's
  zero_init_residual: bool = False  # ResNet50's

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = ResNet50(variant=self.variant, trainable=self.trainable,
                 bn_axis_name=self.bn_axis_name, dtype=self.dtype,
                 bn_momentum=self.bn_momentum, zero_init_residual=self.zero_init_residual,
                 name='resnet50')(x, train)
    x = x.astype(jnp.float32).mean(axis=(1, 2))
    return layers.transfer_head(x, self.num_outputs, self.fc, self.dropout, train)


def backbone(metadata: Mapping) -> nn.Module:
  """The base a ported file's sidecar describes, without its top (models.pretrained)."""
  return ResNet50(variant=metadata.get('variant', 'keras'))


def check_pretrained(spec: str) -> None:
  """Fails fast, before any data is built, when config.model.pretrained cannot be found."""
  from mammo_jax.weights import resnet50 as resnet50_weights  # pylint: disable=g-import-not-at-top
  if spec not in resnet50_weights.OFFICIAL and not os.path.isfile(os.path.expanduser(spec)):
    raise FileNotFoundError(resnet50_weights.missing_message(spec))


def load(init_variables: Mapping, spec: str, *, preprocess: str, cache_dir: str | None = None,
         dont_load: str = '') -> tuple[dict, dict]:
  """init_variables of a ResNet50Classifier with its 'resnet50' base from pretrained weights.

  Args:
    init_variables: the classifier's {'params': ..., 'batch_stats': ...}.
    spec: config.model.pretrained (see weights.resnet50.load_pretrained).
    preprocess: config.model.preprocess; must be what the weights were trained with, which
      also tells the variant (caffe: Keras's v1, torch: torchvision's v1.5).
    cache_dir: where official files are cached once ported.
    dont_load: regex (re.search) over the file's '/'-joined entries not to load, e.g.
      TOP_PATTERN for a file with the ImageNet top.

  Returns:
    (variables, the file's sidecar metadata); the merge of params and batch_stats is strict.
  """
  from mammo_jax.weights import merge  # pylint: disable=g-import-not-at-top
  from mammo_jax.weights import resnet50 as resnet50_weights  # pylint: disable=g-import-not-at-top
  if 'resnet50' not in init_variables.get('params', {}):
    raise ValueError(f'{spec}: ResNet50 weights go into the resnet50 base of a '
                     f'ResNet50Classifier; these params have '
                     f'{", ".join(sorted(init_variables.get("params", {})))}')
  loaded, metadata = resnet50_weights.load_pretrained(spec, cache_dir=cache_dir)
  variant = metadata.get('variant')
  wanted = preprocessing.weights_preprocess(preprocess)
  ours = next((v for v, p in PREPROCESS.items() if p == wanted), None)
  if variant != ours:
    name = 'resnet50' if variant == 'keras' else f'resnet50_{variant}'
    raise ValueError(f'{spec} holds {variant} ResNet50 weights, not {ours} ones; set '
                     f'--config.model.name={name} '
                     f'--config.model.preprocess={PREPROCESS.get(variant)}')
  out = dict(init_variables)
  for collection in ('params', 'batch_stats'):
    try:
      out[collection] = {**init_variables[collection], 'resnet50': merge.merge_params(
          init_variables[collection]['resnet50'], loaded[collection],
          skip=dont_load or None)}
    except merge.MergeError as e:
      fix = 'Port the weights of a ResNet50 (python -m mammo_jax.port_weights SRC OUT).'
      if e.skip_hint:
        fix += f" Or leave the extra layers out: --config.model.dont_load='{e.skip_hint}'"
      raise ValueError(f'model.pretrained={spec} ({collection}): {e}\n{fix}') from None
  return out, metadata
