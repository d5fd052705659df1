"""Per-layer timings of every 3x3 convolution of M2 and of VGG16 at 150x150, before and after
Winograd: forward, input gradient and filter gradient, in ms and GFLOP/s.

    python benchmarks/conv_layers.py [--batch 32] [--rounds 3] [--only vgg16|m2]
        [--dtype bfloat16] [--forward_only]

'before' is `layers.conv2d` with Winograd switched off (XLA's forward convolution, also for the
input gradient; the chunked im2col filter gradient), 'after' is `layers.conv2d` as the models
run it. 'fwd+pool' (layers followed by a 2x2/2 max-pool) is that convolution then
layers.max_pool before, and the pool fused into the convolution (conv2d's pool_2x2) after:
for the Winograd layers its speed-up is Winograd's and the fusion's together (M2's 1-channel
conv0, without Winograd, shows the fusion alone).
GFLOP/s counts a direct convolution's 2 * 9 * Cin * Cout multiply-adds per output pixel for
each operation, so Winograd's figures are effective rates. The two are timed alternately, op
by op (median of --rounds calls after two warm-ups), as the machine this was written on is
shared and noisy. --dtype bfloat16 casts inputs and kernels (what half_precision does to a
frozen VGG16 base) to see whether the CPU's bfloat16 units help.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conv_backward import _alternate, _timer  # noqa: E402  pylint: disable=g-import-not-at-top

from mammo_jax.models import layers  # noqa: E402  pylint: disable=g-import-not-at-top

# (name, input side, Cin, Cout, padding): M2's 3x3 layers and VGG16's thirteen at 150x150
# (repeated shapes once). POOLED: those followed by the 2x2/2 max-pool, which the models fuse.
SHAPES = {
    'm2': [('conv0', 150, 1, 64, 'VALID'), ('conv1', 74, 64, 128, 'VALID'),
           ('conv2', 36, 128, 256, 'VALID')],
    'vgg16': [('block1_conv1', 150, 3, 64, 'SAME'), ('block1_conv2', 150, 64, 64, 'SAME'),
              ('block2_conv1', 75, 64, 128, 'SAME'), ('block2_conv2', 75, 128, 128, 'SAME'),
              ('block3_conv1', 37, 128, 256, 'SAME'), ('block3_conv2/3', 37, 256, 256, 'SAME'),
              ('block4_conv1', 18, 256, 512, 'SAME'), ('block4_conv2/3', 18, 512, 512, 'SAME'),
              ('block5_conv1/2/3', 9, 512, 512, 'SAME')],
}


POOLED = {'conv0', 'conv1', 'conv2', 'block1_conv2', 'block2_conv2', 'block3_conv2/3',
          'block4_conv2/3', 'block5_conv1/2/3'}


def _with_winograd(on: bool, fn):
  """fn, traced with layers.conv2d's Winograd path on or off (off: cpu_fast before it)."""

  def traced(*args):
    saved = layers._WINOGRAD_MIN_CHANNELS  # pylint: disable=protected-access
    layers._WINOGRAD_MIN_CHANNELS = saved if on else 1 << 30  # read while jit traces fn
    try:
      return fn(*args)
    finally:
      layers._WINOGRAD_MIN_CHANNELS = saved

  return traced


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--only', choices=sorted(SHAPES), default=None)
  parser.add_argument('--dtype', choices=['float32', 'bfloat16'], default='float32')
  parser.add_argument('--forward_only', action='store_true')
  args = parser.parse_args()
  print(f'# {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, batch '
        f'{args.batch}, {args.dtype}, median of {args.rounds} after 2 warm-ups; ms (GFLOP/s)\n')
  print('| layer (input -> Cout, padding) | op | before | after | speed-up |')
  print('|---|---|---:|---:|---:|')
  rng = np.random.default_rng(0)
  impls = {'before': False, 'after': True}
  for model, shapes in SHAPES.items():
    if args.only and model != args.only:
      continue
    for name, side, cin, cout, padding in shapes:
      out = side if padding == 'SAME' else side - 2
      x = rng.standard_normal((args.batch, side, side, cin), np.float32)
      w = (rng.standard_normal((3, 3, cin, cout)) / np.sqrt(9 * cin)).astype(np.float32)
      g = rng.standard_normal((args.batch, out, out, cout), np.float32)
      x, w, g = (jax.numpy.asarray(a, args.dtype) for a in (x, w, g))
      gflop = 2 * args.batch * out * out * 9 * cin * cout / 1e9
      conv = lambda x, w: layers.conv2d(x, w, padding=padding)
      ops = {'fwd': lambda x, w, g: conv(x, w),
             'd/dx': lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
             'd/dw': lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0]}
      if name in POOLED:
        # 'before': the convolution, then layers.max_pool; 'after': the pool fused into it.
        ops['fwd+pool'] = lambda x, w, g: (
            layers.conv2d(x, w, padding=padding, pool_2x2=True)
            if layers._WINOGRAD_MIN_CHANNELS < (1 << 30)  # pylint: disable=protected-access
            else layers.max_pool(conv(x, w), (2, 2)))
      if args.forward_only:
        ops = {k: ops[k] for k in ('fwd', 'fwd+pool') if k in ops}
      elif cin <= 3:
        del ops['d/dx']  # a first layer's input gradient is never computed
      for op, fn in ops.items():
        t = _alternate({k: _timer(_with_winograd(on, fn), x, w, g) for k, on in impls.items()},
                       args.rounds)
        cells = ' | '.join(f'{t[k] * 1e3:.0f} ({gflop / t[k]:.0f})' for k in impls)
        print(f'| {model} {name} ({side}x{side}x{cin} -> {cout}, {padding}) | {op} | {cells} '
              f'| {t["before"] / t["after"]:.2f}x |', flush=True)


if __name__ == '__main__':
  main()
