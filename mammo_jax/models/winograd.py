"""Winograd F(2x2, 3x3): a stride-1 3x3 convolution as 16 matmuls, for XLA:CPU.

Each 2x2 block of output pixels ("tile") comes from a 4x4 window of the padded input. With
V = B^T d B (the window d transformed), U = G w G^T (the kernel transformed) and
Y = A^T (U . V) A, the 36 multiply-adds per tile and channel pair of a direct convolution
become 16 (2.25x fewer), and the 16 elementwise products summed over input channels are 16
matmuls (tiles x Cin) @ (Cin x Cout), which XLA:CPU runs near its matmul speed, while its own
convolution runs at a fraction of it. The transforms are additions only (B, A) or act on the
small kernel (G).

The tiles are processed a few hundred at a time (whole images) in a loop: transformed tiles
take 4x the input's memory and the matmul outputs 4x the output's, and at batch size they
would fall out of cache (and, as fresh buffers, cost a page fault per 4 KiB) on every step.
In float32 the result differs from a direct convolution by summation order only (about 1e-6
relative). `kernel_grad3x3` is the transposed computation for the kernel's gradient.

A 2x2/2 max-pool after the convolution (conv3x3's pool) is taken tile by tile, as each tile is
one pool window: the full-resolution output, the largest activation of a conv block, is then
never written.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

# Tiles per loop iteration (whole images, at least one): measured on the study's M2 and VGG16
# 3x3 layers (BENCHMARKS.md). An image of more tiles is one loop step on its own: that still
# beat XLA's convolution at 150x150 (1.5x) and 224x224 (1.15x; 12544 tiles, 51 MB of
# transformed tiles at 64 channels), while splitting images into bands of tile rows lost.
# Larger images (whole mammograms) keep XLA's convolution.
_TILES = 512
MAX_TILES = 16384

Pads = tuple[tuple[int, int], tuple[int, int]]


def _g_transform(w0, w1, w2):
  """G applied along one axis of the kernel to its three rows (or columns)."""
  return w0, (w0 + w1 + w2) * 0.5, (w0 - w1 + w2) * 0.5, w2


def _kernel_transform(kernel) -> list:
  """G w G^T for each (cin, cout): 16 x [cin, cout], row-major over the 4x4 tile.

  Elementwise, as 16 separate arrays: an einsum with G (and slices of its [16, cin, cout]
  result) made XLA copy the whole transformed kernel many times over.
  """
  rows = _g_transform(*kernel)
  return [u for r in rows for u in _g_transform(*(r[j] for j in range(3)))]


def _b_transform(d0, d1, d2, d3):
  """B^T applied along one axis to the window's four rows (or columns)."""
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _input_transform(xp, th: int, tw: int) -> list:
  """[n, 2*th + 2, 2*tw + 2, c] padded input -> 16 x [n*th*tw, c] transformed tiles."""
  n, c = xp.shape[0], xp.shape[-1]
  rows = _b_transform(*(xp[:, k:k + 2 * th:2] for k in range(4)))
  return [v.reshape(n * th * tw, c)
          for r in rows for v in _b_transform(*(r[:, :, k:k + 2 * tw:2] for k in range(4)))]


def _output_quads(m: list, n: int, th: int, tw: int, bias) -> list:
  """16 x [n*th*tw, cout] products -> the 4 outputs of each tile (A^T m A) [+ bias], as
  [y00, y01, y10, y11] ([n, th, tw, cout] each): a 2x2/2 max-pool window's row-major order."""
  cout = m[0].shape[-1]
  m = [t.reshape(n, th, tw, cout) for t in m]
  a_t = lambda t: (t[0] + t[1] + t[2], t[1] - t[2] - t[3])  # A^T along one axis
  columns = [a_t(m[k::4]) for k in range(4)]  # [tile column][output row]
  quads = [y for i in range(2) for y in a_t([c[i] for c in columns])]
  return quads if bias is None else [y + bias for y in quads]


def _interleave(quads: list):
  """[y00, y01, y10, y11] of [n, th, tw, c] -> the [n, 2*th, 2*tw, c] image of the tiles."""
  n, th, tw, c = quads[0].shape
  rows = [jnp.stack(quads[2 * i:2 * i + 2], axis=3) for i in range(2)]
  return jnp.stack(rows, axis=2).reshape(n, 2 * th, 2 * tw, c)


def first_max(candidates: list, y):
  """Index (int8 up to 127 candidates) of the first of `candidates` equal to their maximum
  y, where autodiff of a max-pool sends the gradient; the last where none is (a window with
  a NaN, for which autodiff of nn.max_pool may pick another)."""
  dtype = jnp.int8 if len(candidates) <= 127 else jnp.int32
  first = jnp.full(y.shape, len(candidates) - 1, dtype)
  for p in reversed(range(len(candidates) - 1)):
    first = jnp.where(candidates[p] == y, jnp.asarray(p, dtype), first)
  return first


class LazyBatch:
  """A batch computed chunk by chunk where a loop below reads it, never stored whole (e.g.
  layers.Unpooled, a max-pool's gradient at full resolution): .shape, .dtype, .slice()."""

  shape: tuple[int, ...]
  dtype: jnp.dtype

  def slice(self, start, size: int):
    raise NotImplementedError


def batch_slice(x, start, size: int):
  """x[start:start + size] along axis 0 (start may be traced), for an array or a LazyBatch."""
  if isinstance(x, LazyBatch):
    return x.slice(start, size)
  return lax.dynamic_slice_in_dim(x, start, size)


def unpool(g, first, kh: int, kw: int, shape: tuple[int, int]):
  """A max-pool's input gradient: each window's g at its `first` element, zero elsewhere;
  [n, shape[0], shape[1], c] (rows and columns no window covers get zeros)."""
  n, oh, ow, c = g.shape
  window = (1, 1, kh, 1, kw, 1)
  position = (lax.broadcasted_iota(first.dtype, window, 2) * kw +
              lax.broadcasted_iota(first.dtype, window, 4))
  dx = jnp.where(first[:, :, None, :, None] == position, g[:, :, None, :, None],
                 jnp.zeros((), g.dtype)).reshape(n, oh * kh, ow * kw, c)
  if (oh * kh, ow * kw) != shape:
    dx = jnp.pad(dx, ((0, 0), (0, shape[0] - oh * kh), (0, shape[1] - ow * kw), (0, 0)))
  return dx


class PooledGradient(LazyBatch):
  """The gradient at the input of a 2x2/2 max-pool (unpool of g at the windows' `first`
  maxima), expanded chunk by chunk inside the backward loops: stored whole, it was the
  largest array of M2's backward pass. kernel_grad3x3 does not expand it at all."""

  def __init__(self, g, first, shape: tuple[int, int]):
    self.g, self.first, self.hw = g, first, shape
    self.shape, self.dtype = (g.shape[0], *shape, g.shape[-1]), g.dtype

  def pooled_slice(self, start, size: int):
    return (lax.dynamic_slice_in_dim(self.g, start, size),
            lax.dynamic_slice_in_dim(self.first, start, size))

  def slice(self, start, size: int):
    return unpool(*self.pooled_slice(start, size), 2, 2, self.hw)


def map_image_chunks(fn, x, images: int) -> tuple:
  """fn (a tuple of arrays per chunk) over x, `images` at a time along axis 0: a fori_loop
  writing each chunk's outputs into whole-batch buffers, then any remainder."""
  n = x.shape[0]
  steps = n // images
  shapes = jax.eval_shape(lambda: fn(batch_slice(x, 0, images)))
  outs = tuple(jnp.zeros((n,) + s.shape[1:], s.dtype) for s in shapes)

  def write(outs, chunk, start):
    return tuple(lax.dynamic_update_slice_in_dim(o, c, start, 0) for o, c in zip(outs, chunk))

  outs = lax.fori_loop(
      0, steps, lambda i, o: write(o, fn(batch_slice(x, i * images, images)), i * images), outs)
  if steps * images < n:
    outs = write(outs, fn(batch_slice(x, steps * images, n - steps * images)), steps * images)
  return outs


def tiles_per_image(out_h: int, out_w: int) -> int:
  return -(-out_h // 2) * -(-out_w // 2)


def conv3x3(x, kernel, pads: Pads, bias=None, swap_io: bool = False, pool: bool = False,
            argmax: bool = False):
  """Stride-1 cross-correlation of NHWC x (an array or a LazyBatch) with an HWIO 3x3 kernel,
  zero padding `pads`.

  swap_io: the kernel is HWOI (input and output channels swapped), as in an input gradient.
  Each transformed [cout, cin] matrix is transposed after the transform: transforming the
  swapped kernel directly reads it with a stride of Cout floats, which at 512 channels cost
  4x the layer's matmuls in cache misses.
  pool: return the 2x2/2 'VALID' max-pool of the output instead, taken tile by tile (a tile
  is a pool window), so the full-resolution output is never stored; with argmax, also each
  window's first maximum (first_max), for the pool's gradient.
  """
  if argmax and not pool:
    raise ValueError('conv3x3: argmax is the max-pool\'s; it needs pool=True')
  n, h, w, c = x.shape
  oh, ow = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
  th, tw = -(-oh // 2), -(-ow // 2)
  images = max(1, min(n, _TILES // (th * tw)))
  # Each chunk of images is padded in the loop, where XLA fuses the padding into the input
  # transform (padding the whole batch first cost more than the matmuls saved).
  padding = ((0, 0), (pads[0][0], 2 * th + 2 - h - pads[0][0]),
             (pads[1][0], 2 * tw + 2 - w - pads[1][0]), (0, 0))
  u = _kernel_transform(kernel.astype(x.dtype))
  if swap_io:
    u = [t.T for t in u]
  dtype = jnp.promote_types(x.dtype, kernel.dtype)

  def images_out(xc):  # -> ([images, oh, ow, cout],) or the pooled output [and argmax]
    # 16 plain matmuls: XLA:CPU runs a batched dot_general of these shapes 1.5-2.5x slower.
    m = [v @ u[k] for k, v in enumerate(_input_transform(jnp.pad(xc, padding), th, tw))]
    quads = [y.astype(dtype) for y in _output_quads(m, xc.shape[0], th, tw, bias)]
    if not pool:
      return (_interleave(quads)[:, :oh, :ow],)
    windows = [y[:, :oh // 2, :ow // 2] for y in quads]
    pooled = functools.reduce(jnp.maximum, windows)
    return (pooled, first_max(windows, pooled)) if argmax else (pooled,)

  outs = map_image_chunks(images_out, x, images)
  return outs if argmax else outs[0]


def _a_transform(y0, y1):
  """A applied along one axis of a 2x2 output-gradient tile: 2 rows (or columns) -> 4."""
  return y0, y0 + y1, y0 - y1, -y1


def _gt_transform(m0, m1, m2, m3):
  """G^T applied along one axis of a 4x4 product: 4 rows (or columns) -> the kernel's 3."""
  return m0 + (m1 + m2) * 0.5, (m1 - m2) * 0.5, (m1 + m2) * 0.5 + m3


def _gradient_transform(gp, th: int, tw: int) -> list:
  """[n, 2*th, 2*tw, c] output gradient -> 16 x [n*th*tw, c]: A dY A^T of each 2x2 tile."""
  n, c = gp.shape[0], gp.shape[-1]
  rows = _a_transform(gp[:, 0::2], gp[:, 1::2])
  return [v.reshape(n * th * tw, c)
          for r in rows for v in _a_transform(r[:, :, 0::2], r[:, :, 1::2])]


_A = ((1, 0), (1, 1), (1, -1), (0, -1))  # the 4x2 matrix A of _a_transform


def _pooled_gradient_transform(gp, first, th: int, tw: int) -> list:
  """_gradient_transform of a PooledGradient, from the pooled values: each tile is a pool
  window with one nonzero gradient, gp at window position `first` = 2a + b, so each of the
  16 entries of A dY A^T is gp times A[i][a] * A[j][b] (0 or +-1), chosen elementwise.
  gp, first: [n, th, tw, c], zero-padded to whole tiles."""
  n, c = gp.shape[0], gp.shape[-1]
  out = []
  for i in range(4):
    for j in range(4):
      v = jnp.zeros_like(gp)
      for p in range(4):
        sign = _A[i][p // 2] * _A[j][p % 2]
        if sign:
          v = jnp.where(first == p, gp if sign > 0 else -gp, v)
      out.append(v.reshape(n * th * tw, c))
  return out


def kernel_grad3x3(x, g, pads: Pads):
  """The kernel and bias gradients of conv3x3(x, kernel, pads) for output gradient g (an
  array or a LazyBatch).

  The transpose of the forward pass: dw = G^T (sum over tiles of V . (A dY A^T)) G, with V the
  same transformed input tiles. The sum over tiles is 16 matmuls (Cin x tiles) @ (tiles x
  Cout) per chunk of images, whose long contraction XLA:CPU runs near its matmul speed: 2.25x
  fewer multiplications than the im2col matmul (9 Cin x pixels x Cout), on 4x the input's
  memory instead of 9x.
  """
  n, h, w, c = x.shape
  _, oh, ow, cout = g.shape
  th, tw = -(-oh // 2), -(-ow // 2)
  images = max(1, min(n, _TILES // (th * tw)))
  padding = ((0, 0), (pads[0][0], 2 * th + 2 - h - pads[0][0]),
             (pads[1][0], 2 * tw + 2 - w - pads[1][0]), (0, 0))
  g_padding = ((0, 0), (0, 2 * th - oh), (0, 2 * tw - ow), (0, 0))  # zero: no gradient there
  dtype = jnp.promote_types(x.dtype, g.dtype)

  pooled = isinstance(g, PooledGradient)
  assert not pooled or g.g.shape[1:3] == (oh // 2, ow // 2), (g.g.shape, oh, ow)

  def chunk_products(xc, start, size):  # -> 16 x [cin, cout], bias gradient [cout]
    v = _input_transform(jnp.pad(xc, padding), th, tw)
    if pooled:  # tiles are the pool's windows (both start at the output's corner)
      gp, first = g.pooled_slice(start, size)
      tile_padding = ((0, 0), (0, th - gp.shape[1]), (0, tw - gp.shape[2]), (0, 0))
      u = _pooled_gradient_transform(jnp.pad(gp, tile_padding), jnp.pad(first, tile_padding),
                                     th, tw)
      db = gp.sum(axis=(0, 1, 2), dtype=dtype)
    else:
      gc = batch_slice(g, start, size)
      u = _gradient_transform(jnp.pad(gc, g_padding), th, tw)
      db = gc.sum(axis=(0, 1, 2), dtype=dtype)
    m = [lax.dot_general(vk, uk, (((0,), (0,)), ((), ())), preferred_element_type=dtype)
         for vk, uk in zip(v, u)]
    return m, db

  def body(i, acc):
    xc = lax.dynamic_slice_in_dim(x, i * images, images)
    m, db = chunk_products(xc, i * images, images)
    return [a + b for a, b in zip(acc[0], m)], acc[1] + db

  steps = n // images
  zeros = ([jnp.zeros((c, cout), dtype)] * 16, jnp.zeros((cout,), dtype))
  m, db = lax.fori_loop(0, steps, body, zeros)
  if steps * images < n:
    rest, rest_db = chunk_products(x[steps * images:], steps * images, n - steps * images)
    m, db = [a + b for a, b in zip(m, rest)], db + rest_db
  # G^T m G: along the tile's columns within each row, then along its rows.
  by_row = [_gt_transform(*m[4 * a:4 * a + 4]) for a in range(4)]  # [row a][kernel column]
  rows = [_gt_transform(*(by_row[a][l] for a in range(4))) for l in range(3)]  # [col l][row k]
  return jnp.stack([jnp.stack([rows[l][k] for l in range(3)]) for k in range(3)]), db
