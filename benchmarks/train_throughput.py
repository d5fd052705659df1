"""Train-step throughput: mammo_jax against Keras (TensorFlow backend), and the input pipeline.

    python benchmarks/train_throughput.py [--model m2|vgg16_ft|resnet50_ft] [--batch_size 128]
        [--steps 5] [--rounds 2] [--peak_tflops_fp32 T] [--peak_tflops_bf16 T]
        [--baseline_root DIR] [--skip_keras_xla] [--skip_xla_conv] [--no_hugepages]

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
`--model vgg16_ft` times the study's VGG16 fine-tuning stage 2 (configs/vgg16_2.py:ft2,
150x150, Keras caffe preprocessing inside our step) against the same Keras model
(keras.applications.VGG16 base with block5_conv2/3 trainable, Flatten-Dropout-Dense256-Dense1,
RMSprop 1e-4) on preprocessed float inputs; on a GPU/TPU also with half_precision.
`--model resnet50_ft` times ResNet50 fine-tuning every layer (BatchNorm in training mode) at
224x224 (configs/resnet50_2.py with model.trainable=all: one sigmoid unit on the pooled
features, RMSprop 1e-3) against keras.applications.ResNet50 with the same head. The
TFLOP/s column divides XLA's operation count of our compiled step (all devices) by its
time; with the --peak_tflops_* of one device it becomes a model FLOP utilisation.
Every row runs with the environment `python -m mammo_jax.main` gives itself on Linux: glibc's
transparent-huge-page tunable (mammo_jax/hugepages.py; TensorFlow's allocator gains nothing
from it, measured); `--no_hugepages` runs all rows without it.
`--baseline_root DIR` also times the mammo_jax rows of another checkout (e.g. a `git worktree`
of an earlier commit) in the same rounds: how a refactor shows that it left the step's speed
alone. Each framework runs in its own fresh process, alternating over --rounds so that machine noise
hits both; a step time is the median of --steps timed steps after two warm-up steps (pmap
compiles on the first and second call). Prints a Markdown table for BENCHMARKS.md and writes
benchmarks/results/train_throughput-<model>-<cpu|accelerator>.json.
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
sys.path.insert(0, ROOT)
from mammo_jax import hugepages  # noqa: E402  pylint: disable=g-import-not-at-top

_JAX = r'''
import json, sys, time
sys.path.insert(0, sys.argv[1])
import jax, numpy as np
from tests.conftest import load_config
from mammo_jax import parallel, tasks, train
name, arg, batch, steps = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
augment, impl, half = sys.argv[6] == '1', sys.argv[7], sys.argv[8] == '1'
side, trainable = int(sys.argv[9]), sys.argv[10]
config = load_config(name, arg)
if trainable:
  config.model.trainable = trainable
config.batch_size = batch
config.model.conv_impl = impl
config.model.pretrained = ''  # random weights time the same as ImageNet ones
config.half_precision = half
if not augment:
  config.augment.rotation = config.augment.shear = config.augment.zoom = 0.0
  config.augment.width_shift = config.augment.height_shift = 0.0
  config.augment.horizontal_flip = config.augment.vertical_flip = False
task = tasks.get_task(config.task)
state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                 (side, side, 1))
step = train.make_train_step(config, task)
rng = np.random.default_rng(0)
batch = parallel.shard({'image': rng.integers(0, 65535, (batch, side, side, 1), dtype=np.uint16),
                        'label': rng.integers(0, 4, (batch,), dtype=np.int32)})
# XLA's count of the compiled step's floating-point operations (all devices).
cost = step.lower(state, batch, jax.random.key(1)).compile().cost_analysis()
cost = cost[0] if isinstance(cost, (list, tuple)) else cost
flops = float(cost.get('flops', 0.0)) * jax.local_device_count() if cost else 0.0
times = []
for i in range(steps + 2):
  t = time.perf_counter()
  state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready((state, metrics))
  times.append(time.perf_counter() - t)
print(json.dumps({'times': times[2:], 'device': str(jax.devices()[0].device_kind),
                  'devices': jax.local_device_count(), 'flops': flops}))
'''

# The end of both Keras programs: time train_on_batch on a batch (x, y) already on the device.
_KERAS_TIMED = r'''
x, y = tf.constant(x), tf.constant(y)  # on the GPU when there is one, as JAX's batch is
times = []
for i in range(steps + 2):
  t = time.perf_counter()
  model.train_on_batch(x, y)
  times.append(time.perf_counter() - t)
gpus = tf.config.list_physical_devices('GPU')
print(json.dumps({'times': times[2:], 'device': 'GPU' if gpus else 'CPU'}))
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
''' + _KERAS_TIMED

_KERAS_VGG = r'''
import json, sys, time
import numpy as np
import keras, tensorflow as tf
trainable, batch, steps = sys.argv[1].split(','), int(sys.argv[2]), int(sys.argv[3])
jit = sys.argv[4] == '1'
base = keras.applications.VGG16(weights=None, include_top=False, input_shape=(150, 150, 3))
for layer in base.layers:
  layer.trainable = layer.name in trainable
model = keras.Sequential([base, keras.layers.Flatten(), keras.layers.Dropout(0.5),
                          keras.layers.Dense(256, activation='relu'),
                          keras.layers.Dense(1, activation='sigmoid')])
model.compile(keras.optimizers.RMSprop(1e-4), 'binary_crossentropy', jit_compile=jit)
rng = np.random.default_rng(0)
x = keras.applications.vgg16.preprocess_input(
    np.repeat(rng.integers(0, 65535, (batch, 150, 150, 1)) / 256.0, 3, axis=-1)).astype(np.float32)
y = rng.integers(0, 2, (batch,)).astype(np.float32)
''' + _KERAS_TIMED

# ResNet50 fine-tuning all layers (BatchNorm in training mode), one sigmoid unit on the pooled
# features, RMSprop 1e-3: configs/resnet50_2.py's model with every layer trainable.
_KERAS_RESNET = r'''
import json, sys, time
import numpy as np
import keras, tensorflow as tf
side, batch, steps, jit = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == '1'
base = keras.applications.ResNet50(weights=None, include_top=False, pooling='avg',
                                   input_shape=(side, side, 3))
model = keras.Sequential([base, keras.layers.Dense(1, activation='sigmoid')])
model.compile(keras.optimizers.RMSprop(1e-3), 'binary_crossentropy', jit_compile=jit)
rng = np.random.default_rng(0)
x = keras.applications.resnet50.preprocess_input(
    np.repeat(rng.integers(0, 65535, (batch, side, side, 1)) / 256.0, 3, axis=-1)).astype(np.float32)
y = rng.integers(0, 2, (batch,)).astype(np.float32)
''' + _KERAS_TIMED

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
# The study's 2-class fine-tuning stage 2: block5_conv2/3 and the FC256 head trainable.
VGG_FT = ('vgg16_2', 'ft2', 'block5_conv2,block5_conv3')
RESNET_SIDE = 224


def _run(code: str, *args) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  out = subprocess.run([sys.executable, '-c', code, *map(str, args)], env=env, cwd=ROOT,
                       capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return json.loads(out.stdout.strip().splitlines()[-1])


def _variants(args, accelerator: bool) -> dict:
  """Row name -> a function running one round of it, returning {'times', ...}."""
  b, n = args.batch_size, args.steps
  if args.model == 'vgg16_ft':
    name, arg, convs = VGG_FT
    rows = {
        'mammo_jax': lambda: _run(_JAX, ROOT, name, arg, b, n, 0, 'auto', 0, 150, ''),
        'mammo_jax + augmentation C': lambda: _run(_JAX, ROOT, name, arg, b, n, 1, 'auto', 0,
                                                   150, ''),
        'Keras/TF': lambda: _run(_KERAS_VGG, convs, b, n, 0),
        'Keras/TF XLA (jit_compile)': lambda: _run(_KERAS_VGG, convs, b, n, 1),
    }
    if accelerator:  # bfloat16 is for GPU/TPU; XLA:CPU emulates it slowly
      rows['mammo_jax, half_precision (bf16)'] = lambda: _run(_JAX, ROOT, name, arg, b, n, 0,
                                                               'auto', 1, 150, '')
    return rows
  if args.model == 'resnet50_ft':
    side = RESNET_SIDE
    rows = {
        'mammo_jax, conv_impl=xla': lambda: _run(_JAX, ROOT, 'resnet50_2', 'fe', b, n, 0, 'xla',
                                                 0, side, 'all'),
        'mammo_jax + augmentation B': lambda: _run(_JAX, ROOT, 'resnet50_2', 'fe', b, n, 1,
                                                   'auto', 0, side, 'all'),
        'Keras/TF': lambda: _run(_KERAS_RESNET, side, b, n, 0),
        'Keras/TF XLA (jit_compile)': lambda: _run(_KERAS_RESNET, side, b, n, 1),
    }
    if accelerator:
      rows['mammo_jax, half_precision (bf16)'] = lambda: _run(
          _JAX, ROOT, 'resnet50_2', 'fe', b, n, 0, 'auto', 1, side, 'all')
    return rows
  widths, dense, decay = MODELS[args.model]
  rows = {
      'mammo_jax, conv_impl=xla': lambda: _run(_JAX, ROOT, 'scratch4', args.model, b, n, 0,
                                               'xla', 0, 150, ''),
      'mammo_jax, conv_impl=cpu_fast': lambda: _run(_JAX, ROOT, 'scratch4', args.model, b, n,
                                                    0, 'cpu_fast', 0, 150, ''),
      'mammo_jax + augmentation A': lambda: _run(_JAX, ROOT, 'scratch4', args.model, b, n, 1,
                                                 'auto', 0, 150, ''),
      'Keras/TF': lambda: _run(_KERAS, json.dumps(widths), dense, decay, b, n, 0),
      'Keras/TF XLA (jit_compile)': lambda: _run(_KERAS, json.dumps(widths), dense, decay, b,
                                                 n, 1),
  }
  if args.baseline_root:
    base = os.path.abspath(args.baseline_root)
    rows[f'baseline {base}: conv_impl=cpu_fast'] = lambda: _run(
        _JAX, base, 'scratch4', args.model, b, n, 0, 'cpu_fast', 0, 150, '')
    rows[f'baseline {base}: + augmentation A'] = lambda: _run(
        _JAX, base, 'scratch4', args.model, b, n, 1, 'auto', 0, 150, '')
  return rows


def _accelerator() -> bool:
  code = 'import jax; print(jax.default_backend())'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  return out.stdout.strip().splitlines()[-1] != 'cpu'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='m2',
                      choices=sorted(MODELS) + ['vgg16_ft', 'resnet50_ft'])
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--pipeline_batches', type=int, default=200)
  parser.add_argument('--skip_keras_xla', action='store_true')
  parser.add_argument('--skip_xla_conv', action='store_true',
                      help="leave out M1-M3's conv_impl=xla row (nn.Conv/nn.max_pool, slow on CPU)")
  parser.add_argument('--baseline_root', default='',
                      help='another mammo_jax checkout whose M1-M3 train step is timed in the '
                           'same rounds (e.g. a git worktree of the commit before a refactor)')
  parser.add_argument('--peak_tflops_fp32', type=float, default=0.0,
                      help="one device's peak TFLOP/s for float32 steps, for the model FLOP "
                           'utilisation column; XLA uses TF32 tensor cores on recent NVIDIA '
                           'GPUs, so give the TF32 peak there (e.g. 495 for an H100 SXM)')
  parser.add_argument('--peak_tflops_bf16', type=float, default=0.0,
                      help="one device's peak bfloat16 TFLOP/s (e.g. 989 for an H100 SXM)")
  parser.add_argument('--no_hugepages', action='store_true',
                      help='run every row with glibc\'s default allocator; otherwise all rows '
                           '(Keras too) get the glibc.malloc.hugetlb=1 tunable that '
                           'python -m mammo_jax.main sets for itself (mammo_jax/hugepages.py)')
  args = parser.parse_args()
  if not args.no_hugepages and hugepages.wanted():
    os.environ.update(hugepages.environ_with_tunable())  # inherited by every row's process
  accelerator = _accelerator()
  variants = _variants(args, accelerator)
  if args.skip_keras_xla:
    variants.pop('Keras/TF XLA (jit_compile)')
  if args.skip_xla_conv:
    variants.pop('mammo_jax, conv_impl=xla', None)
  runs = {k: [] for k in variants}
  flops, device, n_devices = {}, None, 1
  for r in range(args.rounds):
    print(f'round {r + 1}/{args.rounds}', file=sys.stderr, flush=True)
    for name, run in variants.items():
      out = run()
      runs[name] += out['times']
      if 'devices' in out:
        device, n_devices = f'{out["device"]} x{out["devices"]}', out['devices']
        flops[name] = out['flops']
  consumer = {'vgg16_ft': 'mammo_jax + augmentation C',
              'resnet50_ft': 'mammo_jax + augmentation B'}.get(args.model,
                                                               'mammo_jax + augmentation A')
  pipeline = _run(_PIPELINE, ROOT, args.batch_size, args.pipeline_batches)

  medians = {k: statistics.median(v) for k, v in runs.items() if v}
  rates = {k: args.batch_size / t for k, t in medians.items()}
  keras = rates['Keras/TF']
  machine = f'{platform.machine()}, {os.cpu_count()} cores, JAX device {device}'
  if os.environ.get('GLIBC_TUNABLES'):
    machine += f', GLIBC_TUNABLES={os.environ["GLIBC_TUNABLES"]}'
  model = {'vgg16_ft': 'VGG16 fine-tuning (study 2-class FT 2: block5_conv2/3 + FC256 head '
                       'trainable), 150x150',
           'resnet50_ft': f'ResNet50 fine-tuning all layers (configs/resnet50_2.py with '
                          f'model.trainable=all), {RESNET_SIDE}x{RESNET_SIDE}'
           }.get(args.model, f'Model {args.model}')
  lines = [f'{model}, batch {args.batch_size}, {machine}; median of '
           f'{args.steps * args.rounds} steps over {args.rounds} rounds.', '',
           '| train step | images/s | vs Keras/TF | TFLOP/s (XLA count) | MFU |',
           '|---|---:|---:|---:|---:|']
  for name, rate in rates.items():
    achieved = flops.get(name, 0.0) / medians[name] / 1e12
    peak = (args.peak_tflops_bf16 if 'bf16' in name else args.peak_tflops_fp32) * n_devices
    mfu = f'{achieved / peak:.1%}' if achieved and peak else '-'
    lines.append(f'| {name} | {rate:.1f} | {rate / keras:.2f}x | '
                 f'{f"{achieved:.3f}" if achieved else "-"} | {mfu} |')
  lines += ['', f'Input pipeline (train_batches + shard, {pipeline["train_examples"]} synthetic '
            f'train patches): {pipeline["images_per_s"]:.0f} images/s, '
            f'{pipeline["images_per_s"] / rates[consumer]:.0f}x what the step (with '
            f'augmentation) consumes.']
  print('\n'.join(lines))
  os.makedirs(os.path.join(ROOT, 'benchmarks', 'results'), exist_ok=True)
  suffix = 'accelerator' if accelerator else 'cpu'
  with open(os.path.join(ROOT, 'benchmarks', 'results',
                         f'train_throughput-{args.model}-{suffix}.json'), 'w') as f:
    json.dump({'args': vars(args), 'machine': machine, 'images_per_s': rates,
               'flops_per_step': flops, 'step_seconds': runs, 'pipeline': pipeline}, f,
              indent=1)


if __name__ == '__main__':
  main()
