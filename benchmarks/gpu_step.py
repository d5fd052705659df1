"""bfloat16 train steps on one accelerator: mammo_jax against the same network in PyTorch.

    python benchmarks/gpu_step.py [--models m2,vgg16_ft150,vgg16_ft224,resnet50_224]
        [--batch_size 128] [--steps 20] [--rounds 3] [--torch_compile auto|on|off]
        [--peak_tflops T] [--out FILE.json]
    python benchmarks/gpu_step.py --platform cpu --batch_size 2 --steps 1 --rounds 1 \
        --image_size 32 --torch_compile off       # every pair, tiny, on a CPU (the fast test)
    python benchmarks/gpu_step.py --platform cpu --host_overhead   # input-feeding cost per step
    python benchmarks/gpu_step.py --recount FILE.json   # FLOPs and MFU of a GPU run, counted here

Models: the study's 4-class M2 (configs/scratch4.py:m2, 150x150), VGG16 fine-tuning stage 2
(configs/vgg16_2.py:ft2: block5_conv2/3 and the head trainable) at 150 and 224, and ResNet50
fine-tuning every layer (configs/resnet50_2.py with model.trainable=all) at 224.

mammo_jax runs its real pmapped `train.make_train_step` with config.half_precision (bfloat16
convolutions, float32 parameters). PyTorch runs the torch.nn network of the same module
(benchmarks/torch_nets.py) in channels_last with autocast to bfloat16, eager and under
`torch.compile` (`auto` times both and labels each row). For both, the data stay on the device
for the whole run: --dataset_size random uint16 patches, shuffled there once per epoch, and
scaled (and, in the '+ augmentation' rows, augmented) inside the step, so the host feeds
nothing per step. A step time is the median over --rounds of the mean of --steps steps
dispatched back to back after warm-up steps (pmap compiles on the first and second call).

Model-FLOP utilisation is XLA's operation count of the mammo_jax step (the cost_analysis of
its HLO before compilation, nn.Conv layers, without augmentation: see model_flops) over the
step time, against the device's dense bf16 peak
(PEAK_TFLOPS_BF16 by device name, or --peak_tflops); the PyTorch rows use the same count. The
JSON goes to --out (benchmarks/results/gpu_step-<platform>.json by default).

--host_overhead instead times a tiny model's step fed from device-resident data against the
same step fed from the host (input_pipeline.train_batches + parallel.prefetch, as training
does); the difference is the host's cost per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (config, argument, trainable override, image side) per model.
MODELS = {
    'm2': ('scratch4', 'm2', '', 150),
    'vgg16_ft150': ('vgg16_2', 'ft2', '', 150),
    'vgg16_ft224': ('vgg16_2', 'ft2', '', 224),
    'resnet50_224': ('resnet50_2', 'fe', 'all', 224),
}
# Dense bfloat16 peaks (TFLOP/s, no sparsity) by a substring of jax's device_kind.
PEAK_TFLOPS_BF16 = {'H100 PCIe': 756.0, 'H100': 989.0, 'H200': 989.0, 'GH200': 989.0,
                    'A100': 312.0, 'L4': 121.0, 'TPU v4': 275.0, 'TPU v5 lite': 197.0,
                    'TPU v5p': 459.0, 'TPU v6 lite': 918.0}


def peak_tflops(device_kind: str, override: float) -> float:
  """The device's bf16 peak: --peak_tflops, else the first PEAK_TFLOPS_BF16 name it contains."""
  if override:
    return override
  return next((p for name, p in PEAK_TFLOPS_BF16.items() if name in device_kind), 0.0)


def _time(run_steps, sync, steps: int, rounds: int, warmup: int) -> tuple[float, float]:
  """Seconds per step of `steps` steps dispatched back to back, the median over rounds: wall
  time, and this process's CPU time (all threads), which other jobs on the machine leave
  alone. On an accelerator the CPU time is the host's own cost of a step."""
  run_steps(warmup)
  sync()
  wall, cpu = [], []
  for _ in range(rounds):
    start, start_cpu = time.perf_counter(), time.process_time()
    run_steps(steps)
    sync()
    wall.append((time.perf_counter() - start) / steps)
    cpu.append((time.process_time() - start_cpu) / steps)
  return statistics.median(wall), statistics.median(cpu)


# ---------------------------------------------------------------------------------------------
# mammo_jax

def model_config(name: str):
  """The config of MODELS[name], its trainable override applied."""
  from mammo_jax.config_lib import loader  # pylint: disable=g-import-not-at-top
  config_name, arg, trainable, _ = MODELS[name]
  config = loader.load_config(f'configs/{config_name}.py:{arg}', ROOT)
  if trainable:
    config.model.trainable = trainable
  return config


def flax_module(name: str):
  """The flax module of MODELS[name], built without initialising it."""
  from mammo_jax import tasks, train  # pylint: disable=g-import-not-at-top
  config = model_config(name)
  return train.create_model(config, tasks.get_task(config.task))


def jax_setup(name: str, side: int, batch: int, augment: bool, half: bool = True,
              conv_impl: str = ''):
  """(config, task, model, state, step) of MODELS[name] at `side`, as a run builds them."""
  import jax  # pylint: disable=g-import-not-at-top
  from mammo_jax import tasks, train  # pylint: disable=g-import-not-at-top
  config = model_config(name)
  if conv_impl:
    config.model.conv_impl = conv_impl
  config.batch_size = batch
  config.model.pretrained = ''  # random weights time the same as ImageNet ones
  config.half_precision = half
  if not augment:
    config.augment.rotation = config.augment.shear = config.augment.zoom = 0.0
    config.augment.width_shift = config.augment.height_shift = 0.0
    config.augment.horizontal_flip = config.augment.vertical_flip = False
  task = tasks.get_task(config.task)
  model = train.create_model(config, task)
  state = train.create_train_state(jax.random.key(0), config, model, (side, side, 1))
  return config, task, model, state, train.make_train_step(config, task)


def device_batches(images, labels, batch: int):
  """A jitted (step counter) -> (batch, next counter) over arrays already on the devices:
  a fresh permutation per epoch, batches laid out [devices, per_device, ...] as pmap takes
  them. Nothing crosses from the host."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  n, devices = images.shape[0], jax.local_device_count()
  steps = n // batch
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ('d',))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('d'))

  # The arrays are arguments, not closed-over constants, which XLA could embed in the program.
  @jax.jit
  def sample_from(counter, images, labels):
    epoch, offset = counter // steps, counter % steps
    order = jax.random.permutation(jax.random.fold_in(jax.random.key(0), epoch), n)
    idx = jax.lax.dynamic_slice(order, (offset * batch,), (batch,))
    out = {'image': images[idx], 'label': labels[idx]}
    out = {k: jax.lax.with_sharding_constraint(v.reshape((devices, -1) + v.shape[1:]), shard)
           for k, v in out.items()}
    return out, counter + 1

  return lambda counter: sample_from(counter, images, labels)


def random_patches(n: int, side: int, classes: int, seed: int = 0):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 65535, (n, side, side, 1), dtype=np.uint16),
          rng.integers(0, classes, (n,), dtype=np.int32))


def recount(path: str) -> None:
  """Fills in model_flops (counted on this machine), TFLOP/s and MFU for every timed row of a
  JSON written by this script, in place: JAX's GPU backend gives no cost analysis of the HLO
  before compilation, and the count is the same on every device."""
  import jax  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    result = json.load(f)
  peak, counted = result.get('peak_tflops_bf16') or 0.0, {}
  for row in result['rows']:
    if 'error' in row:
      continue
    key = row['model'], row['image_size'], row['batch_size']
    if key not in counted:
      name, side, batch_size = key
      counted[key] = model_flops(name, side, batch_size)
      print(f'{name} at {side}, batch {batch_size}: {counted[key] / 1e9:.1f} GFLOP per step',
            flush=True)
    tflops = counted[key] / row['seconds_per_step'] / 1e12
    row.update(flops_per_step=counted[key], tflops=tflops, mfu=tflops / peak if peak else None,
               flops_counted_on=f'{platform.machine()} CPU, JAX {jax.__version__}')
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'rewrote {path}')


def model_flops(name: str, side: int, batch_size: int) -> float:
  """The step's operation count per global batch, from XLA's cost analysis of the step's HLO
  before compilation, with nn.Conv layers. Not the compiled program's: on a GPU its
  convolutions are cuDNN calls that the analysis counts as 0, and on a CPU the cpu_fast layers'
  Winograd products count fewer multiplications than the model has. 0 where the backend gives
  no such analysis (JAX's GPU backend): --recount fills it in on a CPU afterwards."""
  import jax  # pylint: disable=g-import-not-at-top
  _, task, _, state, step = jax_setup(name, side, batch_size, augment=False, conv_impl='xla')
  images, labels = random_patches(batch_size, side, len(task.class_names))
  batch, _ = device_batches(jax.device_put(images), jax.device_put(labels),
                            batch_size)(jax.numpy.int32(0))
  cost = step.lower(state, batch, jax.random.key(1)).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0)) * jax.local_device_count()


def time_jax(name: str, side: int, args, augment: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  _, task, model, state, step = jax_setup(name, side, args.batch_size, augment)
  images, labels = random_patches(args.dataset_size, side, len(task.class_names))
  images, labels = jax.device_put(images), jax.device_put(labels)  # once, for the whole run
  sample = device_batches(images, labels, args.batch_size)
  rng = jax.random.key(1)
  batch, counter = sample(jax.numpy.int32(0))
  flops = model_flops(name, side, args.batch_size)
  loop = {'state': state, 'counter': counter}

  def run_steps(k):
    for _ in range(k):
      b, loop['counter'] = sample(loop['counter'])
      loop['state'], _ = step(loop['state'], b, rng)

  seconds, cpu = _time(run_steps, lambda: jax.block_until_ready(loop['state']), args.steps,
                       args.rounds, args.warmup)
  return {'seconds_per_step': seconds, 'cpu_seconds_per_step': cpu, 'flops_per_step': flops,
          'module': model}


# ---------------------------------------------------------------------------------------------
# PyTorch

# model.preprocess -> (scale of the uint16 values, per-channel offsets subtracted after grey is
# repeated to 3 channels and flipped to BGR), as mammo_jax.preprocessing does it.
_TORCH_PREPROCESS = {'unit': (1 / 65535, None), 'caffe': (1 / 256, (103.939, 116.779, 123.68))}


def time_torch(name: str, side: int, args, module, compiled: bool) -> dict:
  """The torch.nn network of `module`: channels_last, autocast bf16, RMSprop, data on the
  device (uint16 bits kept as int16: torch has few uint16 kernels)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mammo_jax import tasks  # pylint: disable=g-import-not-at-top
  from mammo_jax.config_lib import loader  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import torch_nets  # pylint: disable=g-import-not-at-top
  config_name, arg, trainable, _ = MODELS[name]
  config = loader.load_config(f'configs/{config_name}.py:{arg}', ROOT)
  trainable = trainable or config.model.trainable
  task = tasks.get_task(config.task)
  scale, offsets = _TORCH_PREPROCESS[config.model.preprocess]
  device = torch.device('cuda' if args.platform == 'gpu' else 'cpu')
  torch.backends.cudnn.benchmark = True  # pick convolution algorithms by timing, as XLA does
  torch.manual_seed(0)
  net = torch_nets.build(module, side, 1 if offsets is None else 3, trainable)
  net = net.to(device, memory_format=torch.channels_last).train()
  params = [p for p in net.parameters() if p.requires_grad]
  opt = torch.optim.RMSprop(params, lr=config.optimizer.learning_rate, alpha=0.9, eps=1e-7)
  images, labels = random_patches(args.dataset_size, side, len(task.class_names))
  images = torch.from_numpy(images.view(np.int16)).to(device)  # once, for the whole run
  labels = torch.from_numpy(labels).long().to(device)
  binary = task.num_outputs == 1
  means = None if offsets is None else torch.tensor(offsets, device=device).view(1, 3, 1, 1)

  def forward_loss(x, y):
    x = (x.permute(0, 3, 1, 2).int() & 0xFFFF).float() * scale  # NCHW view, channels_last
    if means is not None:
      x = x.expand(-1, 3, -1, -1) - means
    with torch.autocast(device.type, dtype=torch.bfloat16):
      logits = net(x.contiguous(memory_format=torch.channels_last))
    logits = logits.float()
    if binary:
      return torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    return torch.nn.functional.cross_entropy(logits, y)

  forward_loss = torch.compile(forward_loss) if compiled else forward_loss
  n, batch = images.shape[0], args.batch_size
  loop = {'order': None, 'at': n}

  def run_steps(k):
    for _ in range(k):
      if loop['at'] + batch > n:  # a new epoch: a new permutation, on the device
        loop['order'], loop['at'] = torch.randperm(n, device=device), 0
      idx = loop['order'][loop['at']:loop['at'] + batch]
      loop['at'] += batch
      opt.zero_grad(set_to_none=True)
      forward_loss(images[idx], labels[idx]).backward()
      opt.step()

  sync = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  seconds, cpu = _time(run_steps, sync, args.steps, args.rounds,
                       args.warmup + (2 if compiled else 0))
  return {'seconds_per_step': seconds, 'cpu_seconds_per_step': cpu}


# ---------------------------------------------------------------------------------------------

def host_overhead(args) -> dict:
  """A tiny model's float32 step fed from device-resident data and from the host."""
  import jax  # pylint: disable=g-import-not-at-top
  from mammo_jax import input_pipeline, parallel  # pylint: disable=g-import-not-at-top
  side, batch = args.image_size or 48, args.batch_size
  _, task, _, state, step = jax_setup('m2', side, batch, augment=False, half=False)
  images, labels = random_patches(args.dataset_size, side, len(task.class_names))
  rng = jax.random.key(1)
  sample = device_batches(jax.device_put(images), jax.device_put(labels), batch)
  host = parallel.prefetch(input_pipeline.train_batches({'image': images, 'label': labels},
                                                        batch, seed=0))
  loop = {'state': state, 'counter': jax.numpy.int32(0)}

  def on_device(k):
    for _ in range(k):
      b, loop['counter'] = sample(loop['counter'])
      loop['state'], _ = step(loop['state'], b, rng)

  def from_host(k):
    for _ in range(k):
      loop['state'], _ = step(loop['state'], next(host), rng)

  sync = lambda: jax.block_until_ready(loop['state'])
  rounds = {}
  for _ in range(args.rounds):  # alternate, so that machine noise hits both
    for label, run in (('device_resident', on_device), ('from_host', from_host)):
      rounds.setdefault(label, []).append(_time(run, sync, args.steps, 1, args.warmup))
  result = {'model': 'm2', 'image_size': side, 'batch_size': batch, 'rounds': rounds}
  for i, clock in enumerate(('wall', 'cpu')):
    per_step = {k: statistics.median(r[i] for r in v) for k, v in rounds.items()}
    result[clock] = per_step
    result[f'host_overhead_{clock}_ms'] = (per_step['from_host']
                                           - per_step['device_resident']) * 1e3
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=','.join(MODELS))
  parser.add_argument('--platform', default='gpu', choices=('gpu', 'cpu'))
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--image_size', type=int, default=0,
                      help="overrides every model's side (tiny CPU checks); 0: the model's")
  parser.add_argument('--dataset_size', type=int, default=2048,
                      help='uint16 patches kept on the device (roi150-sized by default)')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--augment', default='m2',
                      help="models that also get a '+ augmentation' mammo_jax row")
  parser.add_argument('--torch_compile', default='auto', choices=('auto', 'on', 'off'))
  parser.add_argument('--no_torch', action='store_true')
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help="the device's dense bf16 peak; default: PEAK_TFLOPS_BF16 by name")
  parser.add_argument('--host_overhead', action='store_true')
  parser.add_argument('--recount', default='',
                      help="a JSON of this script whose rows have no FLOP count (XLA on the GPU "
                      "gave none): count each model's FLOPs here and rewrite its rows' MFU")
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  if args.recount:
    args.platform = 'cpu'  # the count does not depend on the device
  os.environ['JAX_PLATFORMS'] = {'gpu': 'cuda', 'cpu': 'cpu'}[args.platform]
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  from mammo_jax import compile_cache, input_pipeline  # pylint: disable=g-import-not-at-top
  compile_cache.enable(input_pipeline.cache_dir())
  device = jax.devices()[0].device_kind
  result = {'device': device, 'platform': args.platform, 'machine': platform.machine(),
            'cpus': os.cpu_count(), 'jax': jax.__version__, 'args': vars(args)}
  out = args.out or os.path.join(ROOT, 'benchmarks', 'results', f'gpu_step-{args.platform}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)

  def write():  # after every row, so that a run stopped at its time limit keeps what it timed
    with open(out, 'w') as f:
      json.dump(result, f, indent=1)

  if args.recount:
    recount(args.recount)
    return
  if args.host_overhead:
    result['host_overhead'] = host_overhead(args)
    print(json.dumps(result['host_overhead'], indent=1))
  else:
    if not args.no_torch:
      import torch  # pylint: disable=g-import-not-at-top
      result['torch'] = torch.__version__
    result['peak_tflops_bf16'] = peak = peak_tflops(device, args.peak_tflops)
    result['rows'] = []
    print(f'{device}, bf16 peak {peak or "unknown"} TFLOP/s, batch {args.batch_size}', flush=True)
    print('| model | framework | images/s | step ms | TFLOP/s | MFU |\n'
          '|---|---|---:|---:|---:|---:|', flush=True)
    for r in benchmark(args, peak):
      result['rows'].append(r)
      write()
      if 'error' not in r:
        mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else '-'
        print(f'| {r["model"]} | {r["framework"]} | {r["images_per_s"]:.1f} | '
              f'{r["seconds_per_step"] * 1e3:.2f} | {r["tflops"]:.2f} | {mfu} |', flush=True)
  write()
  print(f'wrote {out}')


def benchmark(args, peak: float):
  """Yields one row per (model, framework variant) as it is timed; a failing row (an inductor
  error, say) is a row with its error. The fastest torch row of a model is marked best_torch.
  torch.compile rows come after every other row, since compiling is what a time limit cuts."""
  names = args.models.split(',')
  for name in names:
    if name not in MODELS:
      raise SystemExit(f'--models: unknown {name!r}; known: {", ".join(MODELS)}')
  compiles = {'auto': (False, True), 'on': (True,), 'off': (False,)}[args.torch_compile]
  flops, modules, best = {}, {}, {}
  for phase in (False, True):  # eager torch with the JAX rows, then compiled torch
    for name in names:
      side = args.image_size or MODELS[name][3]
      if not phase:
        variants = [('mammo_jax', False)] + ([('mammo_jax + augmentation', True)]
                                             if name in args.augment.split(',') else [])
        for label, augment in variants:
          try:
            out = time_jax(name, side, args, augment)
          except Exception as e:  # pylint: disable=broad-except  (one failure ends no run)
            traceback.print_exc()
            yield {'model': name, 'framework': label, 'error': f'{type(e).__name__}: {e}'}
            continue
          flops.setdefault(name, out['flops_per_step'])
          modules.setdefault(name, out['module'])
          yield _row(name, side, label, out, flops[name], args, peak)
      if args.no_torch or phase not in compiles:
        continue
      label = 'torch, torch.compile' if phase else 'torch, eager'
      try:  # the torch network is built from the flax module
        module = modules.get(name) or flax_module(name)
        out = time_torch(name, side, args, module, phase)
      except Exception as e:  # pylint: disable=broad-except  (inductor may fail; say so)
        print(f'{name}: {label} failed: {type(e).__name__}: {e}', file=sys.stderr)
        yield {'model': name, 'framework': label, 'error': f'{type(e).__name__}: {e}'}
        continue
      row = _row(name, side, label, out, flops.get(name, 0.0), args, peak)
      previous = best.get(name)
      row['best_torch'] = previous is None or row['images_per_s'] > previous['images_per_s']
      if row['best_torch']:
        if previous is not None:
          previous['best_torch'] = False  # already in the JSON's rows: rewritten next write
        best[name] = row
      yield row


def _row(name, side, label, timed: dict, flops, args, peak) -> dict:
  seconds = timed['seconds_per_step']
  tflops = flops / seconds / 1e12
  return {'model': name, 'image_size': side, 'framework': label,
          'batch_size': args.batch_size, 'seconds_per_step': seconds,
          'host_cpu_seconds_per_step': timed['cpu_seconds_per_step'],
          'images_per_s': args.batch_size / seconds, 'flops_per_step': flops,
          'tflops': tflops, 'mfu': tflops / peak if peak else None}


if __name__ == '__main__':
  main()
