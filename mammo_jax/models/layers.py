"""CPU-friendly drop-ins for `nn.Conv` and `nn.max_pool`: same parameters, same results.

On XLA:CPU (jaxlib 0.10) a conv net's training step is slow for reasons that have equal-valued
rewrites which run fast (benchmarks/conv_backward.py measures each one):
  * the filter gradient that autodiff emits, a convolution that contracts over the batch, runs
    at 10-20% of matmul speed: here it is an im2col of a few images at a time and one matmul
    per chunk, in a loop so that the patches stay in cache; the bias gradient is summed in the
    same loop. Where the forward pass is Winograd, so is the filter gradient (its transpose,
    16 matmuls with a long contraction over tiles: winograd.kernel_grad3x3);
  * max-pool's gradient (select-and-scatter) is 3-8x slower than an elementwise mask: for
    non-overlapping windows, each window's first maximum is found by comparing the input with
    the pooled output;
  * XLA:CPU's own convolutions run at a fraction of its matmul speed: 3x3 stride-1
    convolutions with enough channels (forward and input gradient) are Winograd F(2x2, 3x3),
    16 matmuls with 2.25x fewer multiplications (models/winograd.py);
  * XLA:CPU hands the other forward convolutions to YNNPACK, which is ~2x slower on an unpadded
    convolution than on the same one padded by a row: unpadded convolutions with 8 or more
    input channels get one extra zero row at the bottom, and the extra output row is sliced
    off (bit-identical); a convolution of 1 to 3 input channels (the first layer) is a fused
    sum of kh*kw*cin broadcast products;
  * the input gradient's kernel (flipped, in and out swapped) is transformed for Winograd
    before it is transposed: transposing first made the transform read it with a stride of
    Cout floats, 5x the layer's time at 512 channels;
  * a conv -> 2x2/2 max-pool block (conv_relu_pool_block) pools inside the convolution's
    loop over image chunks, so the full-resolution output is never stored; the pool's argmax
    is kept only when the layer is differentiated (a frozen layer runs the primal), and its
    gradient is expanded chunk by chunk inside the backward loops (winograd.PooledGradient;
    the Winograd filter gradient transforms it from the pooled values directly). M2's first
    block ran 2.2x faster forward.
The input gradient is the "full" convolution of the output gradient with the flipped,
in/out-swapped kernel, as autodiff emits it for stride 1. Strided convolutions fall back to
autodiff. Under jit, an input gradient nobody uses (the first layer's) is dead code and XLA
drops it.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from mammo_jax.models import winograd

_DN = ('NHWC', 'HWIO', 'NHWC')
# Output pixels per filter-gradient matmul (the contracted dimension). Measured on M2's layers:
# ~10k rows (1 image of 148x148, 2 of 72x72, 8 of 34x34) beat both a whole-batch matmul
# (patches fall out of cache, and a long thin contraction barely parallelises) and smaller
# chunks (too little work per matmul).
_CHUNK_ROWS = 8192
# 3x3 stride-1 convolutions (forward and input gradient) with at least this many input and
# output channels, on images of at most winograd.MAX_TILES 2x2 output tiles, run as Winograd
# F(2x2, 3x3) matmuls (models/winograd.py); with fewer channels, the matmuls are too thin to
# beat XLA's convolution.
_WINOGRAD_MIN_CHANNELS = 16
# Stride-1 forward convolutions with at most this many input channels (the first layer of a
# grey or RGB model) are sums of broadcast products: 1.6x faster than XLA's for VGG16's
# block1_conv1 at 150x150.
_BROADCAST_MAX_CHANNELS = 3
# Output elements per chunk of a convolution with a fused max-pool that is not Winograd (one
# image of M2's first layer, 148x148x64: pooling in the loop made it 2.2x faster).
_POOL_CHUNK_ELEMENTS = 1 << 20

Pads = tuple[tuple[int, int], tuple[int, int]]


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def _resolve_padding(spatial, window, strides, padding) -> Pads:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(spatial, window, strides, padding))
  if isinstance(padding, int):
    return ((padding, padding),) * 2
  return tuple(_pair(p) for p in padding)


def _winograd_fits(x_shape, kernel_shape, strides, pads: Pads) -> bool:
  kh, kw, cin, cout = kernel_shape
  return ((kh, kw) == (3, 3) and strides == (1, 1) and min(cin, cout) >= _WINOGRAD_MIN_CHANNELS
          and winograd.tiles_per_image(x_shape[1] + sum(pads[0]) - 2,
                                       x_shape[2] + sum(pads[1]) - 2) <= winograd.MAX_TILES)


def _conv(x, kernel, strides, pads: Pads, bias=None):
  """lax convolution (NHWC, HWIO) [+ bias], routed to the fastest equal form XLA:CPU has."""
  kh, kw, cin, cout = kernel.shape
  if _winograd_fits(x.shape, kernel.shape, strides, pads):
    return winograd.conv3x3(x, kernel, pads, bias)
  unpadded = all(p == 0 for pair in pads for p in pair)
  if cin <= _BROADCAST_MAX_CHANNELS and strides == (1, 1):
    # Grey or RGB input: a sum of kh*kw*cin broadcast products, one fused elementwise loop
    # (XLA's convolution with so short a contraction runs at ~25 GFLOP/s).
    # Summed in float32 at least, as a convolution accumulates (27 bfloat16 roundings lost
    # half precision's training test).
    acc = jnp.promote_types(x.dtype, jnp.float32)
    xp = x if unpadded else jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    out_h, out_w = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    y = sum(xp[:, i:i + out_h, j:j + out_w, c:c + 1].astype(acc) * kernel[i, j, c].astype(acc)
            for i in range(kh) for j in range(kw) for c in range(cin))
    y = y.astype(jnp.promote_types(x.dtype, kernel.dtype))
  elif unpadded and cin >= 8:
    # Unpadded convolutions run on a ~2x slower path than padded ones (measured for 8 to 256
    # input channels; slower with fewer): pad one output row's worth and slice it off.
    out_h = (x.shape[1] - kh) // strides[0] + 1
    y = lax.conv_general_dilated(x, kernel, strides, ((0, strides[0]), (0, 0)),
                                 dimension_numbers=_DN)[:, :out_h]
  else:
    y = lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)
  return y if bias is None else y + bias


def _patches(x, kh: int, kw: int, out_h: int, out_w: int):
  """[n, out_h, out_w, kh*kw*c] im2col, (kh, kw, c)-major like an HWIO kernel's rows."""
  return jnp.concatenate(
      [x[:, i:i + out_h, j:j + out_w] for i in range(kh) for j in range(kw)], axis=-1)


def _filter_grads(xp, g, kh: int, kw: int):
  """Kernel and bias gradients of a stride-1 correlation of padded input xp with output grad g.

  dw[i, j, c, d] = sum_{n,h,w} xp[n, h+i, w+j, c] g[n, h, w, d] and db = sum_{n,h,w} g, by
  im2col matmuls over a few images at a time. The loop slices xp and g in place: scanning
  over reshaped copies made XLA materialise the tensors feeding them once more.
  """
  n, out_h, out_w, cout = g.shape
  cin = xp.shape[-1]
  dtype = jnp.promote_types(xp.dtype, g.dtype)

  def chunk_grads(start, size):
    xc = lax.dynamic_slice_in_dim(xp, start, size)
    gc = winograd.batch_slice(g, start, size)
    cols = _patches(xc, kh, kw, out_h, out_w).reshape(-1, kh * kw * cin)
    dw = lax.dot_general(cols, gc.reshape(-1, cout), (((0,), (0,)), ((), ())))
    return dw, gc.sum(axis=(0, 1, 2), dtype=dtype)

  chunk = min(n, -(-_CHUNK_ROWS // (out_h * out_w)))
  steps = n // chunk

  def body(step, acc):
    dw, db = chunk_grads(step * chunk, chunk)
    return acc[0] + dw, acc[1] + db

  dw, db = lax.fori_loop(0, steps, body, (jnp.zeros((kh * kw * cin, cout), dtype),
                                          jnp.zeros((cout,), dtype)))
  if steps * chunk < n:
    rest_dw, rest_db = chunk_grads(steps * chunk, n - steps * chunk)
    dw, db = dw + rest_dw, db + rest_db
  return dw.reshape(kh, kw, cin, cout), db


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_s1(x, kernel, bias, pads: Pads):
  return _conv(x, kernel, (1, 1), pads, bias)


def _conv_s1_fwd(x, kernel, bias, pads):
  return _conv(x, kernel, (1, 1), pads, bias), (x, kernel, bias)  # None: no leaves


def _conv_s1_bwd(pads, res, g):
  """Input, kernel and bias gradients for output gradient g (an array or a LazyBatch)."""
  x, kernel, bias = res
  kh, kw = kernel.shape[:2]
  # Input gradient: the "full" correlation of g with the flipped kernel, in and out swapped.
  flipped = jnp.flip(kernel, (0, 1))
  dx_pads = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]), (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
  if _winograd_fits(g.shape, kernel.shape, (1, 1), dx_pads):  # (channel counts: symmetric)
    dx = winograd.conv3x3(g, flipped, dx_pads, swap_io=True)
  else:
    g_whole = winograd.batch_slice(g, 0, g.shape[0])  # a LazyBatch computed whole
    dx = _conv(g_whole, flipped.swapaxes(2, 3), (1, 1), dx_pads)
  dx = dx.astype(x.dtype)
  if _winograd_fits(x.shape, kernel.shape, (1, 1), pads):
    dw, db = winograd.kernel_grad3x3(x, g, pads)
  else:
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0))) if any(map(any, pads)) else x
    dw, db = _filter_grads(xp, g, kh, kw)
  return dx, dw.astype(kernel.dtype), None if bias is None else db.astype(bias.dtype)


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def _conv_pooled(x, kernel, pads: Pads, bias, argmax: bool):
  """2x2/2 max-pool of the stride-1 _conv, chunk by chunk [and each window's first_max]."""
  if _winograd_fits(x.shape, kernel.shape, (1, 1), pads):
    return winograd.conv3x3(x, kernel, pads, bias, pool=True, argmax=argmax)
  n, h, w, _ = x.shape
  oh, ow = h + sum(pads[0]) - kernel.shape[0] + 1, w + sum(pads[1]) - kernel.shape[1] + 1
  ph, pw = oh // 2, ow // 2

  def chunk(xc):
    y = _conv(xc, kernel, (1, 1), pads, bias)
    windows = [y[:, i:2 * ph:2, j:2 * pw:2] for i in range(2) for j in range(2)]
    pooled = functools.reduce(jnp.maximum, windows)
    return (pooled, winograd.first_max(windows, pooled)) if argmax else (pooled,)

  images = max(1, min(n, _POOL_CHUNK_ELEMENTS // (oh * ow * kernel.shape[-1])))
  outs = winograd.map_image_chunks(chunk, x, images)
  return outs if argmax else outs[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _conv_pool_s1(x, kernel, bias, pads: Pads):
  # Called without differentiation (a frozen layer), JAX runs this: no argmax is stored.
  return _conv_pooled(x, kernel, pads, bias, argmax=False)


def _conv_pool_s1_fwd(x, kernel, bias, pads):
  pooled, first = _conv_pooled(x, kernel, pads, bias, argmax=True)
  return pooled, (x, kernel, bias, first)


def _conv_pool_s1_bwd(pads, res, g):
  x, kernel, bias, first = res
  oh = x.shape[1] + sum(pads[0]) - kernel.shape[0] + 1
  ow = x.shape[2] + sum(pads[1]) - kernel.shape[1] + 1
  return _conv_s1_bwd(pads, (x, kernel, bias), winograd.PooledGradient(g, first, (oh, ow)))


_conv_pool_s1.defvjp(_conv_pool_s1_fwd, _conv_pool_s1_bwd)


def conv2d(x, kernel, bias=None, strides=(1, 1), padding='VALID', pool_2x2: bool = False):
  """conv_general_dilated(x, kernel, strides, padding) [+ bias], NHWC x and HWIO kernel.

  pool_2x2: return max_pool(., (2, 2)) of that instead. For stride 1 the pool is fused into
  the convolution: computed chunk by chunk, so the full-resolution output is never stored
  (nor, without gradients, the pool's argmax).
  """
  strides = _pair(strides)
  pads = _resolve_padding(x.shape[1:3], kernel.shape[:2], strides, padding)
  in_range = all(0 <= p < k for pair, k in zip(pads, kernel.shape[:2]) for p in pair)
  if strides != (1, 1) or not in_range:
    y = _conv(x, kernel, strides, pads, bias)  # autodiff: rare here, and correct
    return max_pool(y, (2, 2)) if pool_2x2 else y
  if pool_2x2:
    return _conv_pool_s1(x, kernel, bias, pads)
  return _conv_s1(x, kernel, bias, pads)


class Conv(nn.Module):
  """2-D NHWC convolution with nn.Conv's parameters (`kernel` HWIO, `bias`) and results.

  A subset of nn.Conv: no dilation, feature groups or masks. The gradients are computed as
  described in the module docstring.
  """

  features: int
  kernel_size: Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence[tuple[int, int]] = 'SAME'
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  pool_2x2: bool = False  # a fused 2x2/2 max-pool of the output (conv2d)

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    kh, kw = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (kh, kw, x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    return conv2d(x, kernel, bias, self.strides, self.padding, self.pool_2x2)


def _pool_fwd(x, kh: int, kw: int):
  n, h, w, c = x.shape
  oh, ow = h // kh, w // kw
  return x[:, :oh * kh, :ow * kw].reshape(n, oh, kh, ow, kw, c).max(axis=(2, 4))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _pool(x, kh: int, kw: int):
  return _pool_fwd(x, kh, kw)


def _pool_vjp_fwd(x, kh, kw):
  y = _pool_fwd(x, kh, kw)
  return y, (x, y)


def _pool_vjp_bwd(kh, kw, res, g):
  x, y = res
  n, h, w, c = x.shape
  oh, ow = y.shape[1:3]
  xr = x[:, :oh * kh, :ow * kw].reshape(n, oh, kh, ow, kw, c)
  # Index of each window's first maximum in row-major order: XLA's select-and-scatter (what
  # autodiff of nn.max_pool emits) gives the gradient to that element.
  first = winograd.first_max([xr[:, :, p // kw, :, p % kw] for p in range(kh * kw)], y)
  return (winograd.unpool(g, first, kh, kw, (h, w)),)


_pool.defvjp(_pool_vjp_fwd, _pool_vjp_bwd)


def max_pool(x, window_shape: Sequence[int], strides: Sequence[int] | None = None,
             padding: str = 'VALID'):
  """nn.max_pool for NHWC inputs; fast for non-overlapping 'VALID' windows (e.g. 2x2/2).

  Forward values equal nn.max_pool's. The gradient goes to the first maximum of each window in
  row-major order, like autodiff of nn.max_pool. A window holding a NaN has a NaN maximum that
  equals no element, so its last element gets the gradient (autodiff of nn.max_pool may pick
  another). Other configurations call nn.max_pool.
  """
  window = tuple(window_shape)
  strides = window if strides is None else tuple(strides)
  if x.ndim != 4 or len(window) != 2 or strides != window or padding != 'VALID':
    return nn.max_pool(x, window, strides=strides, padding=padding)
  return _pool(x, *window)


CONV_IMPLS = ('xla', 'cpu_fast')  # config.model.conv_impl, besides 'auto' (train.create_model)


def conv_relu_pool(conv_impl: str):
  """(conv class, ReLU + 2x2/2 max-pool function) for conv_impl 'xla' or 'cpu_fast'."""
  if conv_impl == 'xla':
    return nn.Conv, lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
  if conv_impl == 'cpu_fast':
    # ReLU is monotone, so it commutes with max-pooling, values and gradients alike (ties
    # included, as relu'(0) = 0); pooling first leaves ReLU a quarter of the elements.
    return Conv, lambda x: nn.relu(max_pool(x, (2, 2), strides=(2, 2)))
  raise ValueError(f"conv_impl must be 'xla' or 'cpu_fast', not {conv_impl!r}")


def conv_relu_pool_block(conv_impl: str, x: jnp.ndarray, **conv_kwargs) -> jnp.ndarray:
  """max_pool(relu(conv(x)), 2x2/2), called from a compact method: the convolution is the
  caller's child (conv_kwargs['name']) with the same parameters for either conv_impl.

  'cpu_fast' fuses the pool into the convolution (conv2d's pool_2x2) and applies ReLU to the
  pooled output (they commute, gradients included): the full-resolution output, the largest
  activation of a scratch CNN or a VGG16 block, is never stored.
  """
  if conv_impl == 'cpu_fast':
    return nn.relu(Conv(pool_2x2=True, **conv_kwargs)(x))
  conv, relu_pool = conv_relu_pool(conv_impl)
  return relu_pool(conv(**conv_kwargs)(x))


def transfer_head(x: jnp.ndarray, num_outputs: int, fc: int, dropout: float,
                  train: bool) -> jnp.ndarray:
  """The transfer classifiers' head on pooled (or flattened) float32 features: [Dropout] ->
  [Dense(fc, relu) 'fc' when fc > 0] -> Dense(num_outputs) 'logits', Keras's glorot init.

  Called from a compact `__call__`, its layers belong to the caller (params 'fc', 'logits').
  """
  init = nn.initializers.glorot_uniform()
  if dropout:
    x = nn.Dropout(dropout, deterministic=not train)(x)
  if fc:
    x = nn.relu(nn.Dense(fc, kernel_init=init, name='fc')(x))
  return nn.Dense(num_outputs, kernel_init=init, name='logits')(x)
