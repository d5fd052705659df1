"""VGG16 (Simonyan & Zisserman 2014) with Keras's layer names, and the study's classifier on it.

`VGG16` is the network of `keras.applications.VGG16`: thirteen 3x3 'same' convolutions with
ReLU in five blocks, each block ending in a 2x2/2 max-pool, then optionally the ImageNet top
(flatten, fc1, fc2, predictions). Parameter names equal Keras's layer names
(`block{b}_conv{i}`, `fc1`, `fc2`, `predictions`), so ported weights map one to one
(`mammo_jax.weights.vgg16`). The modules do no preprocessing and no I/O: inputs are NHWC,
already in the weights' expected form (Keras "caffe": BGR minus the ImageNet means, or
torchvision's normalisation). `check_pretrained` and `load` are the family's loader for
config.model.pretrained: they merge a weights file into the initialised parameters.

`VGG16Classifier` is the study's `create_vgg16` (docs/REFERENCE_STUDY.md §2.4): the base without
its top, flatten, optional dropout, Dense(fc, relu), Dense(k). The base is the submodule
`vgg16`, as Keras nests it, so freezing is a matter of parameter paths (`vgg16/block5_conv3`).
"""

import os
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mammo_jax.config_lib.vgg16 import IMAGENET_TOP
from mammo_jax import preprocessing
from mammo_jax.models import layers

# (filters, convolutions) per block.
BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
CONV_NAMES = tuple(f'block{b}_conv{i}' for b, (_, n) in enumerate(BLOCKS, 1)
                   for i in range(1, n + 1))
TOP_NAMES = ('fc1', 'fc2', 'predictions')
# The ImageNet top of a with-top file, which VGG16Classifier has no place for: the VGG16
# configs' model.dont_load (defined with them, so that configs need not import this module).
TOP_PATTERN = IMAGENET_TOP

_glorot = nn.initializers.glorot_uniform()  # Keras's defaults (weights=None)


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
  """torch.nn.AdaptiveAvgPool2d on NHWC: bin i spans [floor(i*H/o), ceil((i+1)*H/o))."""
  (h, w), (oh, ow) = x.shape[1:3], output_size
  if (h, w) == (oh, ow):
    return x
  rows = []
  for i in range(oh):
    r0, r1 = (i * h) // oh, -((-(i + 1) * h) // oh)
    cols = []
    for j in range(ow):
      c0, c1 = (j * w) // ow, -((-(j + 1) * w) // ow)
      cols.append(x[:, r0:r1, c0:c1].mean(axis=(1, 2)))
    rows.append(jnp.stack(cols, axis=1))
  return jnp.stack(rows, axis=1)


class VGG16(nn.Module):
  """keras.applications.VGG16 as a linen module; returns block5_pool features or top logits.

  Attributes:
    include_top: add flatten, fc1, fc2 and predictions; `__call__` then returns logits
      (Keras applies a softmax, which belongs to the loss here).
    num_classes: width of `predictions`.
    fc_units: width of fc1 and fc2 (4096 in the published weights).
    top_pool: None flattens block5_pool as is (Keras: fc1's input width then follows the
      input size, 8192 at 150x150). (7, 7) first average-pools to 7x7 the way torchvision's
      AdaptiveAvgPool2d does, so torchvision's 25088-wide fc1 applies at any input size.
    conv_impl: 'xla' (nn.Conv, nn.max_pool) or 'cpu_fast' (mammo_jax.models.layers: same
      parameters and values, faster gradients on XLA:CPU).
    dtype: computation dtype of the convolutions (bfloat16 for half precision); parameters
      stay float32.
  """

  include_top: bool
  num_classes: int = 1000
  fc_units: int = 4096
  top_pool: tuple[int, int] | None = None
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train  # no dropout or batch norm in VGG16
    if self.conv_impl not in ('xla', 'cpu_fast'):
      raise ValueError(f"conv_impl must be 'xla' or 'cpu_fast', not {self.conv_impl!r}")
    if x.ndim != 4 or min(x.shape[1:3]) < 32:
      raise ValueError(f'VGG16 takes NHWC inputs of at least 32x32, got shape {x.shape}')
    conv = layers.Conv if self.conv_impl == 'cpu_fast' else nn.Conv
    x = x.astype(self.dtype)
    for b, (filters, n) in enumerate(BLOCKS, 1):
      for i in range(1, n + 1):
        conv_kwargs = dict(features=filters, kernel_size=(3, 3), padding='SAME',
                           kernel_init=_glorot, dtype=self.dtype, name=f'block{b}_conv{i}')
        if i < n:
          x = nn.relu(conv(**conv_kwargs)(x))
        else:  # the block's 2x2/2 max-pool (fused into the convolution for cpu_fast)
          x = layers.conv_relu_pool_block(self.conv_impl, x, **conv_kwargs)
    if not self.include_top:
      return x
    if self.top_pool is not None:
      x = adaptive_avg_pool(x, tuple(self.top_pool))
    x = x.reshape((x.shape[0], -1))  # NHWC flatten, Keras's order (torch ports permute fc1)
    x = nn.relu(nn.Dense(self.fc_units, kernel_init=_glorot, dtype=self.dtype, name='fc1')(x))
    x = nn.relu(nn.Dense(self.fc_units, kernel_init=_glorot, dtype=self.dtype, name='fc2')(x))
    x = nn.Dense(self.num_classes, kernel_init=_glorot, dtype=self.dtype,
                 name='predictions')(x)
    return x.astype(jnp.float32)


class VGG16Classifier(nn.Module):
  """The study's transfer model: VGG16 base -> flatten -> [dropout] -> Dense(fc, relu) -> Dense.

  The dropout sits before the FC layer, where the study put it. The head runs in float32 even
  when the base runs in bfloat16. pooling='avg' with fc=0 is Shen et al.'s patch classifier
  (docs/SHEN_2019.md): global average pooling -> [dropout] -> Dense(k), no 'fc' layer.
  """

  num_outputs: int
  fc: int = 256  # 0: no FC layer
  dropout: float = 0.0
  pooling: str = 'flatten'  # or 'avg': global average pooling of block5_pool
  conv_impl: str = 'xla'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if self.pooling not in ('flatten', 'avg'):
      raise ValueError(f"model.pooling must be 'flatten' or 'avg', not {self.pooling!r}")
    x = VGG16(include_top=False, conv_impl=self.conv_impl, dtype=self.dtype, name='vgg16')(x)
    x = x.astype(jnp.float32)
    x = x.mean(axis=(1, 2)) if self.pooling == 'avg' else x.reshape((x.shape[0], -1))
    return layers.transfer_head(x, self.num_outputs, self.fc, self.dropout, train)


def backbone(metadata: Mapping) -> nn.Module:
  """The base a ported file describes, without its top (models.pretrained)."""
  del metadata  # every VGG16 port has the same base
  return VGG16(include_top=False)


def check_pretrained(spec: str) -> None:
  """Fails fast, before any data is built, when config.model.pretrained cannot be found.

  spec is an official name (weights.vgg16.OFFICIAL) or a file; otherwise FileNotFoundError
  says where the official files are and how to port them.
  """
  from mammo_jax.weights import vgg16 as vgg16_weights  # pylint: disable=g-import-not-at-top
  if spec not in vgg16_weights.OFFICIAL and not os.path.isfile(os.path.expanduser(spec)):
    raise FileNotFoundError(vgg16_weights.missing_message(spec))


def load(init_variables: Mapping, spec: str, *, preprocess: str,
         cache_dir: str | None = None, dont_load: str = '') -> tuple[dict, dict]:
  """init_variables of a VGG16Classifier with its 'vgg16' base replaced by pretrained weights.

  Args:
    init_variables: the classifier's variables ({'params': {'vgg16': ..., 'fc': ...}}).
    spec: config.model.pretrained (see weights.vgg16.load_pretrained).
    preprocess: config.model.preprocess; must be what the weights were trained with.
    cache_dir: where official files are cached once ported.
    dont_load: regex (re.search) over the file's '/'-joined entries not to load, e.g.
      TOP_PATTERN for a file with the ImageNet top; '' loads every entry.

  Returns:
    (variables, the file's sidecar metadata). The merge is strict: every base parameter comes
    from the file, with its shape, and every entry of the file not in dont_load is used.
  """
  from mammo_jax.weights import merge  # pylint: disable=g-import-not-at-top
  from mammo_jax.weights import vgg16 as vgg16_weights  # pylint: disable=g-import-not-at-top
  init_params = init_variables.get('params', {})
  if 'vgg16' not in init_params:
    raise ValueError(f'{spec}: VGG16 weights go into the vgg16 base of a VGG16Classifier; '
                     f'these params have {", ".join(sorted(init_params))}')
  loaded, metadata = vgg16_weights.load_pretrained(spec, cache_dir=cache_dir)
  if metadata.get('preprocess', preprocess) != preprocessing.weights_preprocess(preprocess):
    raise ValueError(f'{spec} holds weights trained on {metadata["preprocess"]!r}-preprocessed '
                     f'inputs, but model.preprocess is {preprocess!r}; set '
                     f'--config.model.preprocess={metadata["preprocess"]}')
  try:
    base = merge.merge_params(init_params['vgg16'], loaded, skip=dont_load or None)
  except merge.MergeError as e:
    fix = 'Port the weights of a VGG16 (python -m mammo_jax.port_vgg16 SRC OUT).'
    if e.skip_hint:
      fix += f" Or leave the extra layers out: --config.model.dont_load='{e.skip_hint}'"
    raise ValueError(f'model.pretrained={spec}: {e}\n{fix}') from None
  return {**init_variables, 'params': {**init_params, 'vgg16': base}}, metadata
