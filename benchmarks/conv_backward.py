"""Where the study's M2 training step spends its time on XLA:CPU, and what layers.py saves.

    python benchmarks/conv_backward.py [--batch 128] [--rounds 5] [--no-keras] [--no-ops]

M2 = scratch4_m2: 150x150x1 -> Conv64-MaxPool-Conv128-MaxPool-Conv256-MaxPool-Dense64-Dropout-
Dense4, RMSprop. Two parts, both at the same batch size:
  * ops: every convolution, pooling and dense layer of M2 alone, forward and each gradient
    (input, filter) jitted separately, as autodiff of nn.Conv/nn.max_pool ('xla') and as
    mammo_jax.models.layers ('cpu_fast'); the two are timed alternately, op by op;
  * step: the whole jitted train step (forward, loss, gradients, Keras-style RMSprop update)
    with ScratchCNN(conv_impl='xla'), ScratchCNN(conv_impl='cpu_fast'), and the same model
    in Keras/TensorFlow (`model.train_on_batch`, oneDNN), which runs in a child process that
    steps on request, so the three are timed round-robin and see the same machine load.
Each timing is the median of --rounds calls after 2 warm-up calls. The machine this was written
on is shared and noisy: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import textwrap
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('NO_GCE_CHECK', 'true')

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax import lax  # noqa: E402

from mammo_jax import models, optimizers  # noqa: E402
from mammo_jax.models import layers  # noqa: E402

_DN = ('NHWC', 'HWIO', 'NHWC')
# (input side, input channels, output channels) of M2's three 3x3 'VALID' convolutions.
_M2_CONVS = ((150, 1, 64), (74, 64, 128), (36, 128, 256))

_KERAS_WORKER = textwrap.dedent('''
    import os, sys, time
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np, keras
    batch = int(sys.argv[1])
    L = keras.layers
    model = keras.Sequential([
        keras.Input((150, 150, 1)),
        L.Conv2D(64, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(128, 3, activation="relu"), L.MaxPooling2D(),
        L.Conv2D(256, 3, activation="relu"), L.MaxPooling2D(),
        L.Flatten(), L.Dense(64, activation="relu"), L.Dropout(0.5),
        L.Dense(4, activation="softmax")])
    lr = keras.optimizers.schedules.InverseTimeDecay(1e-3, decay_steps=1, decay_rate=5e-4)
    model.compile(keras.optimizers.RMSprop(lr), "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 150, 150, 1), dtype=np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, batch)]
    for _ in range(2):
      model.train_on_batch(x, y)
    print("ready", model.count_params(), keras.__version__, flush=True)
    for line in sys.stdin:
      t = time.perf_counter()
      model.train_on_batch(x, y)
      print(time.perf_counter() - t, flush=True)
''')


def _timer(fn, *args):
  """A jitted fn called twice (compile, warm-up); returns a zero-argument timed call."""
  fn = jax.jit(fn)
  for _ in range(2):
    jax.block_until_ready(fn(*args))

  def timed() -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t

  return timed


def _alternate(timers: dict, rounds: int) -> dict:
  """Median seconds of each timer, called round-robin so drifting load hits all alike."""
  times = {name: [] for name in timers}
  for _ in range(rounds):
    for name, timed in timers.items():
      times[name].append(timed())
  return {name: float(np.median(t)) for name, t in times.items()}


def _ops(batch: int, rounds: int) -> list[tuple[str, float, float, float | None]]:
  """(op, xla seconds, cpu_fast seconds, GFLOP or None) for each layer of M2."""
  keys = iter(jax.random.split(jax.random.key(0), 64))
  normal = lambda shape: jax.random.normal(next(keys), shape)
  xla_conv = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), 'VALID', dimension_numbers=_DN)
  impls = {'xla': (xla_conv, lambda x: nn.max_pool(x, (2, 2), (2, 2))),
           'cpu_fast': (layers.conv2d, lambda x: layers.max_pool(x, (2, 2)))}
  rows = []

  def measure(name, make, gflop=None):  # make(conv, pool) -> (fn, args)
    timers = {}
    for impl, fns in impls.items():
      fn, fn_args = make(*fns)
      timers[impl] = _timer(fn, *fn_args)
    t = _alternate(timers, rounds)
    rows.append((name, t['xla'], t['cpu_fast'], gflop))
    print(f'  {name:28s} xla {t["xla"] * 1e3:8.0f} ms  cpu_fast {t["cpu_fast"] * 1e3:8.0f} ms',
          file=sys.stderr, flush=True)

  for i, (side, cin, cout) in enumerate(_M2_CONVS):
    x, w = normal((batch, side, side, cin)), normal((3, 3, cin, cout)) * 0.1
    g = normal((batch, side - 2, side - 2, cout))
    gflop = 2 * batch * (side - 2) ** 2 * 9 * cin * cout / 1e9
    tag = f'conv{i} {side}x{side}x{cin}->{cout}'
    measure(f'{tag} fwd', lambda conv, _: (conv, (x, w)), gflop)
    if i:  # the first layer's input gradient is never computed
      measure(f'{tag} d/dx', lambda conv, _: (
          lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0], (x, w, g)), gflop)
    measure(f'{tag} d/dw', lambda conv, _: (
        lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0], (x, w, g)), gflop)
    y = jax.nn.relu(g)  # a post-ReLU activation: ties at zero, as in the model
    gp = normal((batch, (side - 2) // 2, (side - 2) // 2, cout))
    measure(f'pool{i} fwd', lambda _, pool: (pool, (y,)))
    measure(f'pool{i} d/dx', lambda _, pool: (
        lambda y, gp: jax.vjp(pool, y)[1](gp)[0], (y, gp)))
    measure(f'relu{i} d/dx', lambda *_: (
        lambda y, g: jax.vjp(jax.nn.relu, y)[1](g)[0], (y, g)))
  x, w, g = normal((batch, 17 * 17 * 256)), normal((17 * 17 * 256, 64)), normal((batch, 64))
  measure('fc 73984->64 fwd+grads', lambda *_: (
      lambda x, w, g: jax.vjp(jnp.matmul, x, w)[1](g), (x, w, g)))
  return rows


def _train_step(model, tx):
  def loss_fn(params, images, labels, rng):
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': rng})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(params, opt_state, images, labels, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, images, labels, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def _step_timer(conv_impl: str, batch: int):
  model = models.get_model('scratch4_m2', conv_impl=conv_impl)
  tx = optimizers.keras_rmsprop(1e-3, decay=5e-4)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((batch, 150, 150, 1), dtype=np.float32))
  labels = jnp.asarray(rng.integers(0, 4, batch))
  params = model.init(jax.random.key(0), images[:1])['params']
  state = [params, tx.init(params)]
  step = _train_step(model, tx)
  key = jax.random.key(1)

  def timed() -> float:
    t = time.perf_counter()
    state[0], state[1], loss = step(*state, images, labels, key)
    jax.block_until_ready(loss)
    return time.perf_counter() - t

  for _ in range(2):
    timed()
  return timed


def _keras_timer(batch: int):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # jaxlib's flags, not TF's
  proc = subprocess.Popen([sys.executable, '-c', _KERAS_WORKER, str(batch)], env=env,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  ready = proc.stdout.readline().split()
  if not ready or ready[0] != 'ready':
    raise RuntimeError('the Keras worker did not start')
  print(f'  keras {ready[2]}: {ready[1]} params', file=sys.stderr, flush=True)

  def timed() -> float:
    proc.stdin.write('step\n')
    proc.stdin.flush()
    return float(proc.stdout.readline())

  return timed, proc


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--no-ops', action='store_true', help='skip the per-op table')
  parser.add_argument('--no-keras', action='store_true', help='skip the Keras/TF step')
  args = parser.parse_args()
  b = args.batch
  print(f'# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}, batch {b}, median of {args.rounds} after 2 warm-ups\n')

  if not args.no_ops:
    rows = _ops(b, args.rounds)
    total_x, total_f = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print('| op (M2 layer, batch %d) | xla ms | cpu_fast ms | xla share | speed-up |' % b)
    print('|---|---|---|---|---|')
    for name, tx, tf, gflop in rows:
      rate = f' ({gflop / tx:.0f} / {gflop / tf:.0f} GFLOP/s)' if gflop else ''
      print(f'| {name}{rate} | {tx * 1e3:.0f} | {tf * 1e3:.0f} | {tx / total_x:.0%} | '
            f'{tx / tf:.1f}x |')
    print(f'| sum | {total_x * 1e3:.0f} | {total_f * 1e3:.0f} | | {total_x / total_f:.1f}x |\n')

  timers = {'flax xla': _step_timer('xla', b), 'flax cpu_fast': _step_timer('cpu_fast', b)}
  proc = None
  if not args.no_keras:
    timers['keras/tf'], proc = _keras_timer(b)
  try:
    t = _alternate(timers, args.rounds)
  finally:
    if proc is not None:
      proc.stdin.close()
      proc.wait()
  ref = t.get('keras/tf')
  print(f'| M2 train step, batch {b} | s/step | images/s |' + (' / Keras |' if ref else ''))
  print('|---|---|---|' + ('---|' if ref else ''))
  for name, s in t.items():
    print(f'| {name} | {s:.2f} | {b / s:.1f} |' + (f' {ref / s:.2f}x |' if ref else ''))


if __name__ == '__main__':
  main()
