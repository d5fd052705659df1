"""Train-step throughput: mammo_jax against Keras (TensorFlow backend), and the input pipeline.

    python benchmarks/train_throughput.py [--model m2] [--batch_size 128] [--steps 5] [--rounds 2]

The study's 4-class model M2 (150x150x1, C64-C128-C256, D64, RMSprop lr 1e-3, decay 5e-4),
batch 128, float32, in one invocation on the same machine:
  * mammo_jax: the real pmapped `train.make_train_step` (data are uint16 on the host; scaling
    happens inside the step), without augmentation with conv_impl 'xla' and 'cpu_fast', and
    with the study's setting A on device and conv_impl 'auto' (what a run uses);
  * Keras 3 on TensorFlow: the same layers and optimizer (RMSprop with InverseTimeDecay),
    `train_on_batch` on float inputs already scaled, eager-graph (`jit_compile=False`, TF's
    oneDNN kernels) and XLA (`jit_compile=True`);
  * the input pipeline: `input_pipeline.train_batches` over the synthetic roi150 train split
    plus `parallel.shard` (the host->device copy), in images/s.
Each framework runs in its own fresh process, alternating over --rounds so that machine noise
hits both; a step time is the median of --steps timed steps after two warm-up steps (pmap
compiles on the first and second call). Prints a Markdown table for BENCHMARKS.md and writes
benchmarks/results/train_throughput-<platform>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_JAX = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from tests.conftest import load_config
from mammo_jax import parallel, tasks, train
variant, batch, steps, augment = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == '1'
config = load_config('scratch4', variant)
config.batch_size = batch
config.model.conv_impl = sys.argv[6]
if not augment:
  config.augment.rotation = config.augment.shear = config.augment.zoom = 0.0
  config.augment.horizontal_flip = config.augment.vertical_flip = False
task = tasks.get_task(config.task)
state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                 (150, 150, 1))
step = train.make_train_step(config, task)
rng = np.random.default_rng(0)
batch = parallel.shard({'image': rng.integers(0, 65535, (batch, 150, 150, 1), dtype=np.uint16),
                        'label': rng.integers(0, 4, (batch,), dtype=np.int32)})
times = []
for i in range(steps + 2):
  t = time.perf_counter()
  state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready((state, metrics))
  times.append(time.perf_counter() - t)
print(json.dumps({'times': times[2:], 'device': str(jax.devices()[0].device_kind),
                  'devices': jax.local_device_count()}))
'''

_KERAS = r'''
import json, sys, time
import numpy as np
import keras, tensorflow as tf
widths, dense, decay = json.loads(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
batch, steps, jit = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6] == '1'
layers = [keras.Input((150, 150, 1))]
for w in widths:
  layers += [keras.layers.Conv2D(w, 3, activation='relu'), keras.layers.MaxPooling2D()]
layers += [keras.layers.Flatten(), keras.layers.Dense(dense, activation='relu'),
           keras.layers.Dropout(0.5), keras.layers.Dense(4, activation='softmax')]
model = keras.Sequential(layers)
schedule = keras.optimizers.schedules.InverseTimeDecay(1e-3, 1, decay)
model.compile(keras.optimizers.RMSprop(schedule), 'sparse_categorical_crossentropy',
              jit_compile=jit)
rng = np.random.default_rng(0)
x = (rng.integers(0, 65535, (batch, 150, 150, 1)) / 65535).astype(np.float32)
y = rng.integers(0, 4, (batch,)).astype(np.int32)
times = []
for i in range(steps + 2):
  t = time.perf_counter()
  model.train_on_batch(x, y)
  times.append(time.perf_counter() - t)
gpus = tf.config.list_physical_devices('GPU')
print(json.dumps({'times': times[2:], 'device': 'GPU' if gpus else 'CPU'}))
'''

_PIPELINE = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from tests.conftest import load_config
from mammo_jax import input_pipeline, parallel
batch, n_batches = int(sys.argv[2]), int(sys.argv[3])
config = load_config('scratch4', 'm2')
builder = input_pipeline.prepare_builder(config.data)
data = input_pipeline.load_split(builder, 'train')
it = parallel.prefetch(input_pipeline.train_batches(data, min(batch, len(data['label'])), 0))
next(it)
t = time.perf_counter()
images = 0
for _ in range(n_batches):
  b = next(it)
  b['image'].block_until_ready()
  images += b['image'].shape[0] * b['image'].shape[1]
print(json.dumps({'images_per_s': images / (time.perf_counter() - t),
                  'train_examples': int(len(data['label']))}))
'''

MODELS = {'m1': ([32, 64, 128, 256], 48, 1e-3), 'm2': ([64, 128, 256], 64, 5e-4),
          'm3': ([64, 128, 256, 512], 64, 5e-4)}


def _run(code: str, *args) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  out = subprocess.run([sys.executable, '-c', code, *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='m2', choices=sorted(MODELS))
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--pipeline_batches', type=int, default=200)
  parser.add_argument('--skip_keras_xla', action='store_true')
  args = parser.parse_args()
  widths, dense, decay = MODELS[args.model]
  runs = {'mammo_jax, conv_impl=xla': [], 'mammo_jax, conv_impl=cpu_fast': [],
          'mammo_jax + augmentation A': [], 'Keras/TF': [], 'Keras/TF XLA (jit_compile)': []}
  device = None
  for r in range(args.rounds):
    print(f'round {r + 1}/{args.rounds}', file=sys.stderr, flush=True)
    out = _run(_JAX, ROOT, args.model, args.batch_size, args.steps, 0, 'xla')
    runs['mammo_jax, conv_impl=xla'] += out['times']
    device = f'{out["device"]} x{out["devices"]}'
    runs['mammo_jax, conv_impl=cpu_fast'] += _run(_JAX, ROOT, args.model, args.batch_size,
                                                  args.steps, 0, 'cpu_fast')['times']
    runs['mammo_jax + augmentation A'] += _run(_JAX, ROOT, args.model, args.batch_size,
                                               args.steps, 1, 'auto')['times']
    runs['Keras/TF'] += _run(_KERAS, json.dumps(widths), dense, decay, args.batch_size,
                             args.steps, 0)['times']
    if not args.skip_keras_xla:
      runs['Keras/TF XLA (jit_compile)'] += _run(_KERAS, json.dumps(widths), dense, decay,
                                                 args.batch_size, args.steps, 1)['times']
  pipeline = _run(_PIPELINE, ROOT, args.batch_size, args.pipeline_batches)

  rates = {k: args.batch_size / statistics.median(v) for k, v in runs.items() if v}
  keras = rates['Keras/TF']
  consumed = rates['mammo_jax + augmentation A']
  machine = f'{platform.machine()}, {os.cpu_count()} cores, JAX device {device}'
  lines = [f'Model {args.model}, batch {args.batch_size}, float32, {machine}; median of '
           f'{args.steps * args.rounds} steps over {args.rounds} rounds.', '',
           '| train step | images/s | vs Keras/TF |', '|---|---:|---:|']
  for name, rate in rates.items():
    lines.append(f'| {name} | {rate:.1f} | {rate / keras:.2f}x |')
  lines += ['', f'Input pipeline (train_batches + shard, {pipeline["train_examples"]} synthetic '
            f'train patches): {pipeline["images_per_s"]:.0f} images/s, '
            f'{pipeline["images_per_s"] / consumed:.0f}x what the step (with augmentation) '
            f'consumes.']
  print('\n'.join(lines))
  os.makedirs(os.path.join(ROOT, 'benchmarks', 'results'), exist_ok=True)
  name = 'cpu' if 'cpu' in (device or '').lower() else 'accelerator'
  with open(os.path.join(ROOT, 'benchmarks', 'results', f'train_throughput-{name}.json'),
            'w') as f:
    json.dump({'args': vars(args), 'machine': machine, 'images_per_s': rates,
               'step_seconds': runs, 'pipeline': pipeline}, f, indent=1)


if __name__ == '__main__':
  main()
