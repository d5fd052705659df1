"""benchmarks/gpu_step.py on the CPU: every model pair on both frameworks (tiny), the device-side
sampler, the peak table, and that each torch.nn network matches its flax module's parameters."""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import freezing, tasks, train
from tests.conftest import ROOT, load_config

_BENCHMARKS = os.path.join(ROOT, 'benchmarks')


def _module(name: str):
  sys.path.insert(0, _BENCHMARKS)  # gpu_step imports torch_nets from beside it
  spec = importlib.util.spec_from_file_location(name, os.path.join(_BENCHMARKS, f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


gpu_step = _module('gpu_step')


def _run(tmp_path, *flags) -> dict:
  out = tmp_path / 'out.json'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, os.path.join(_BENCHMARKS, 'gpu_step.py'),
                         '--platform', 'cpu', '--batch_size', '2', '--image_size', '32',
                         '--dataset_size', '6', '--rounds', '1', '--warmup', '0',
                         '--out', str(out), *flags], cwd=ROOT, env=env, capture_output=True,
                        text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(out.read_text())


def test_every_model_pair_runs_on_both_frameworks(tmp_path):
  # vgg16_ft224 differs from vgg16_ft150 only in its side, which --image_size overrides here.
  models = ('m2', 'vgg16_ft150', 'resnet50_224')
  result = _run(tmp_path, '--models', ','.join(models), '--steps', '1',
                '--torch_compile', 'off')
  assert result['device'] == 'cpu' and result['peak_tflops_bf16'] == 0.0
  rows = {(r['model'], r['framework']): r for r in result['rows']}
  assert set(rows) == {(m, f) for m in models for f in ('mammo_jax', 'torch, eager')} | {
      ('m2', 'mammo_jax + augmentation')}
  for (model, _), row in rows.items():
    assert row['images_per_s'] > 0 and row['mfu'] is None  # no peak known for a CPU
    assert row['host_cpu_seconds_per_step'] > 0
    assert row['flops_per_step'] == rows[model, 'mammo_jax']['flops_per_step'] > 0
  assert all(rows[m, 'torch, eager'].get('best_torch') for m in models)


def test_host_overhead_compares_device_resident_and_host_fed_steps(tmp_path):
  result = _run(tmp_path, '--host_overhead', '--steps', '2')['host_overhead']
  for clock in ('wall', 'cpu'):
    times = result[clock]
    assert times['device_resident'] > 0 and times['from_host'] > 0
    assert result[f'host_overhead_{clock}_ms'] == pytest.approx(
        (times['from_host'] - times['device_resident']) * 1e3)


def test_device_batches_visit_every_example_once_per_epoch():
  images = jnp.arange(12, dtype=jnp.uint16).reshape(12, 1, 1, 1)
  sample = gpu_step.device_batches(images, jnp.arange(12, dtype=jnp.int32), batch=4)
  counter, epochs = jnp.int32(0), []
  for _ in range(2):
    seen = []
    for _ in range(3):
      batch, counter = sample(counter)
      assert batch['image'].shape == (jax.local_device_count(), 4 // jax.local_device_count(),
                                      1, 1, 1)
      np.testing.assert_array_equal(batch['image'].reshape(-1), batch['label'].reshape(-1))
      seen += batch['label'].reshape(-1).tolist()
    assert sorted(seen) == list(range(12))
    epochs.append(seen)
  assert epochs[0] != epochs[1]  # a new order each epoch
  assert int(counter) == 6


def test_peak_table_by_device_name():
  assert gpu_step.peak_tflops('NVIDIA H100 80GB HBM3', 0) == 989.0
  assert gpu_step.peak_tflops('NVIDIA H100 PCIe', 0) == 756.0
  assert gpu_step.peak_tflops('NVIDIA H200', 0) == 989.0
  assert gpu_step.peak_tflops('NVIDIA H200', 500.0) == 500.0
  assert gpu_step.peak_tflops('cpu', 0) == 0.0


@pytest.mark.parametrize('name,side', [('m2', 150), ('vgg16_ft150', 150), ('vgg16_ft224', 224),
                                       ('resnet50_224', 224)])
def test_torch_network_has_the_flax_modules_parameters(name, side):
  torch = pytest.importorskip('torch')
  torch_nets = _module('torch_nets')
  config_name, arg, trainable, _ = gpu_step.MODELS[name]
  config = load_config(config_name, arg)
  config.model.trainable = trainable or config.model.trainable
  config.model.pretrained = ''
  module = train.create_model(config, tasks.get_task(config.task))
  channels = 1 if config.model.preprocess == 'unit' else 3
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                 jnp.zeros((1, side, side, channels))))
  n_trainable, n_total = freezing.count(variables['params'], config.model.trainable)
  net = torch_nets.build(module, side, channels, config.model.trainable)
  assert sum(p.numel() for p in net.parameters()) == n_total
  assert sum(p.numel() for p in net.parameters() if p.requires_grad) == n_trainable
  batch_stats = sum(np.prod(x.shape) for x in jax.tree.leaves(variables.get('batch_stats', {})))
  assert sum(b.numel() for n, b in net.named_buffers() if 'running' in n) == batch_stats
  x = torch.zeros(2, channels, side, side)
  assert net(x).shape == (2, module.num_outputs)


def _vgg16_conv_flops(side: int) -> float:
  """2 x the multiply-adds of VGG16's 13 3x3 'same' convolutions on a side x side x 3 image."""
  widths = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
  flops, c_in = 0.0, 3
  for block, (c_out, convs) in enumerate(widths):
    s = side // 2**block
    for _ in range(convs):
      flops += 2 * s * s * 9 * c_in * c_out
      c_in = c_out
  return flops


def test_model_flops_count_the_models_convolutions_not_winograds_or_frozen_gradients():
  # VGG16 fine-tuning stage 2 trains block5_conv2/3 and the head: the step is the forward
  # pass plus a little. A Winograd count (cpu_fast's formulation) would be ~2.25x lower in
  # the convolutions, a count with the frozen layers' gradients ~3x higher.
  batch_size, side = jax.local_device_count(), 224
  flops = gpu_step.model_flops('vgg16_ft224', side, batch_size)
  forward = _vgg16_conv_flops(side) * batch_size
  assert forward < flops < 1.1 * forward


def test_recount_fills_in_flops_and_mfu_of_a_run_without_them(tmp_path):
  out = tmp_path / 'out.json'
  counted = _run(tmp_path, '--models', 'm2', '--steps', '1', '--no_torch', '--augment', '')
  row = counted['rows'][0]
  zeroed = dict(counted, peak_tflops_bf16=100.0,
                rows=[dict(row, flops_per_step=0.0, tflops=0.0, mfu=0.0),
                      {'model': 'm2', 'framework': 'torch, torch.compile', 'error': 'E'}])
  out.write_text(json.dumps(zeroed))
  done = subprocess.run([sys.executable, os.path.join(_BENCHMARKS, 'gpu_step.py'), '--recount',
                         str(out)], cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  recounted = json.loads(out.read_text())['rows']
  assert recounted[0]['flops_per_step'] == pytest.approx(row['flops_per_step'])
  tflops = row['flops_per_step'] / row['seconds_per_step'] / 1e12
  assert recounted[0]['tflops'] == pytest.approx(tflops)
  assert recounted[0]['mfu'] == pytest.approx(tflops / 100.0)
  assert 'CPU' in recounted[0]['flops_counted_on']
  assert recounted[1] == zeroed['rows'][1]  # a failed row stays as it was
