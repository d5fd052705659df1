"""Winograd F(2x2, 3x3): a stride-1 3x3 convolution as 16 matmuls, for XLA:CPU.

Each 2x2 block of output pixels ("tile") comes from a 4x4 window of the padded input. With
V = B^T d B (the window d transformed), U = G w G^T (the kernel transformed) and
Y = A^T (U . V) A, the 36 multiply-adds per tile and channel pair of a direct convolution
become 16 (2.25x fewer), and the 16 elementwise products summed over input channels are 16
matmuls (tiles x Cin) @ (Cin x Cout), which XLA:CPU runs near its matmul speed, while its own
convolution runs at a fraction of it. The transforms are additions only (B, A) or act on the
small kernel (G).

The tiles are processed a few hundred at a time in a loop: transformed tiles take 4x the
input's memory and the matmul outputs 4x the output's, and at batch size they would fall out
of cache (and, as fresh buffers, cost a page fault per 4 KiB) on every step. In float32 the
result differs from a direct convolution by summation order only (about 1e-6 relative).
"""

import jax.numpy as jnp
from jax import lax

# Tiles per loop iteration: measured on the study's M2 and VGG16 3x3 layers (see BENCHMARKS.md).
_TILES = 256

Pads = tuple[tuple[int, int], tuple[int, int]]


def _kernel_transform(kernel):
  """G w G^T for each (cin, cout): [16, cin, cout], (row, column) of the 4x4 tile major."""
  g = jnp.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], kernel.dtype)
  u = jnp.einsum('ai,ijcd,bj->abcd', g, kernel, g, precision=lax.Precision.HIGHEST)
  return u.reshape(16, *kernel.shape[2:])


def _b_transform(d0, d1, d2, d3):
  """B^T applied along one axis to the window's four rows (or columns)."""
  return d0 - d2, d1 + d2, d2 - d1, d1 - d3


def _input_transform(xp, th: int, tw: int):
  """[n, 2*th + 2, 2*tw + 2, c] padded input -> [16, n*th*tw, c] transformed tiles."""
  n, c = xp.shape[0], xp.shape[-1]
  rows = _b_transform(*(xp[:, k:k + 2 * th:2] for k in range(4)))
  tiles = [v for r in rows for v in _b_transform(*(r[:, :, k:k + 2 * tw:2] for k in range(4)))]
  return jnp.stack(tiles).reshape(16, n * th * tw, c)


def _output_transform(m, n: int, th: int, tw: int, bias):
  """[16, n*th*tw, cout] products -> [n, 2*th, 2*tw, cout] outputs (A^T m A) [+ bias]."""
  m = m.reshape(4, 4, n, th, tw, m.shape[-1])
  a_t = lambda t: (t[0] + t[1] + t[2], t[1] - t[2] - t[3])  # A^T along the leading axis
  rows = [jnp.stack(a_t(r), axis=3) for r in a_t(m)]  # 2 x [n, th, tw, 2, cout]
  y = jnp.stack(rows, axis=2).reshape(n, 2 * th, 2 * tw, m.shape[-1])
  return y if bias is None else y + bias


def conv3x3(x, kernel, pads: Pads, bias=None):
  """Stride-1 cross-correlation of NHWC x with an HWIO 3x3 kernel, zero padding `pads`."""
  n, h, w, c = x.shape
  oh, ow = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
  th, tw = -(-oh // 2), -(-ow // 2)
  if th * tw <= _TILES:  # whole images per iteration
    images, tile_rows = min(n, _TILES // (th * tw)), th
  else:  # a band of tile rows of one image per iteration
    images, tile_rows = 1, max(1, _TILES // tw)
  bands = -(-th // tile_rows)
  rows = 2 * bands * tile_rows  # output rows computed, >= oh
  xp = jnp.pad(x, ((0, 0), (pads[0][0], rows + 2 - h - pads[0][0]),
                   (pads[1][0], 2 * tw + 2 - w - pads[1][0]), (0, 0)))
  u = _kernel_transform(kernel.astype(x.dtype))
  dtype = jnp.promote_types(x.dtype, kernel.dtype)

  def tiles_out(xc):  # -> [images, 2 * tile_rows, ow, cout]
    v = _input_transform(xc, tile_rows, tw)
    m = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))
    return _output_transform(m, xc.shape[0], tile_rows, tw, bias)[:, :, :ow].astype(dtype)

  def body(i, y):
    image, row = (i // bands) * images, (i % bands) * 2 * tile_rows
    xc = lax.dynamic_slice(xp, (image, row, 0, 0), (images, 2 * tile_rows + 2, *xp.shape[2:]))
    return lax.dynamic_update_slice(y, tiles_out(xc)[:, :y.shape[1]], (image, row, 0, 0))

  steps = n // images
  # With whole images per iteration the loop writes the oh rows directly; with bands, the
  # last band may run past oh and the extra rows are sliced off at the end.
  y = jnp.zeros((n, oh if bands == 1 else rows, ow, kernel.shape[-1]), dtype)
  y = lax.fori_loop(0, steps * bands, body, y)
  if steps * images < n:
    y = lax.dynamic_update_slice_in_dim(y, tiles_out(xp[steps * images:])[:, :oh],
                                        steps * images, 0)
  return y[:, :oh]
