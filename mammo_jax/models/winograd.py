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
relative).
"""

import jax.numpy as jnp
from jax import lax

# Tiles per loop iteration (whole images, at least one): measured on the study's M2 and VGG16
# 3x3 layers (BENCHMARKS.md). Images of more than MAX_TILES tiles (VGG16's first block at
# 150x150) lost to XLA's convolution when split into bands of tile rows, as the whole batch
# then has to be padded first; layers.py keeps XLA's convolution for them.
_TILES = 512
MAX_TILES = 2048

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


def _output_transform(m: list, n: int, th: int, tw: int, bias):
  """16 x [n*th*tw, cout] products -> [n, 2*th, 2*tw, cout] outputs (A^T m A) [+ bias]."""
  cout = m[0].shape[-1]
  m = [t.reshape(n, th, tw, cout) for t in m]
  a_t = lambda t: (t[0] + t[1] + t[2], t[1] - t[2] - t[3])  # A^T along one axis
  columns = [a_t(m[k::4]) for k in range(4)]  # [tile column][output row]
  rows = [jnp.stack(a_t([c[i] for c in columns]), axis=3) for i in range(2)]
  y = jnp.stack(rows, axis=2).reshape(n, 2 * th, 2 * tw, cout)
  return y if bias is None else y + bias


def tiles_per_image(out_h: int, out_w: int) -> int:
  return -(-out_h // 2) * -(-out_w // 2)


def conv3x3(x, kernel, pads: Pads, bias=None):
  """Stride-1 cross-correlation of NHWC x with an HWIO 3x3 kernel, zero padding `pads`."""
  n, h, w, c = x.shape
  oh, ow = h + sum(pads[0]) - 2, w + sum(pads[1]) - 2
  th, tw = -(-oh // 2), -(-ow // 2)
  images = max(1, min(n, _TILES // (th * tw)))
  # Each chunk of images is padded in the loop, where XLA fuses the padding into the input
  # transform (padding the whole batch first cost more than the matmuls saved).
  padding = ((0, 0), (pads[0][0], 2 * th + 2 - h - pads[0][0]),
             (pads[1][0], 2 * tw + 2 - w - pads[1][0]), (0, 0))
  u = _kernel_transform(kernel.astype(x.dtype))
  dtype = jnp.promote_types(x.dtype, kernel.dtype)

  def images_out(xc):  # -> [images, oh, ow, cout]
    # 16 plain matmuls: XLA:CPU runs a batched dot_general of these shapes 1.5-2.5x slower.
    m = [v @ u[k] for k, v in enumerate(_input_transform(jnp.pad(xc, padding), th, tw))]
    return _output_transform(m, xc.shape[0], th, tw, bias)[:, :oh, :ow].astype(dtype)

  def body(i, y):
    xc = lax.dynamic_slice_in_dim(x, i * images, images)
    return lax.dynamic_update_slice_in_dim(y, images_out(xc), i * images, 0)

  steps = n // images
  y = jnp.zeros((n, oh, ow, kernel.shape[-1]), dtype)
  y = lax.fori_loop(0, steps, body, y)
  if steps * images < n:
    y = lax.dynamic_update_slice_in_dim(y, images_out(x[steps * images:]), steps * images, 0)
  return y
