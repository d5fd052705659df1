"""The model, step and benchmark code imports and trains on a machine without TensorFlow (the
GPU machines of benchmarks/gpu_run.sh have JAX and PyTorch but no TensorFlow or TFDS)."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

# None in sys.modules makes `import tensorflow` raise ImportError, as on a machine without it.
_WITHOUT_TF = r'''
import importlib, json, sys
sys.modules['tensorflow'] = None
sys.modules['tensorflow_datasets'] = None
sys.path.insert(0, 'benchmarks')
for name in ('mammo_jax.models', 'mammo_jax.train', 'mammo_jax.parallel', 'mammo_jax.optimizers',
             'mammo_jax.augment', 'mammo_jax.preprocessing', 'mammo_jax.main', 'tfds_cbis',
             'gpu_step', 'torch_nets'):
  importlib.import_module(name)
import jax
import gpu_step
_, task, _, state, step = gpu_step.jax_setup('m2', 32, 2, augment=True, half=False)
images, labels = gpu_step.random_patches(4, 32, len(task.class_names))
batch, _ = gpu_step.device_batches(jax.device_put(images), jax.device_put(labels), 2)(
    jax.numpy.int32(0))
state, metrics = step(state, batch, jax.random.key(1))
try:
  import tensorflow  # noqa: F401
  tf = 'importable'
except ImportError:
  tf = 'absent'
import tfds_cbis
print(json.dumps({'step': int(state.step), 'loss': float(metrics['loss']), 'tf': tf,
                  'builder': hasattr(tfds_cbis, 'Builder')}))
'''


def test_step_code_imports_and_trains_without_tensorflow():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  done = subprocess.run([sys.executable, '-c', _WITHOUT_TF], cwd=ROOT, env=env,
                        capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  out = json.loads(done.stdout.strip().splitlines()[-1])
  assert out['step'] == 1 and out['loss'] > 0 and out['tf'] == 'absent'
  assert out['builder'] is False  # without TFDS there is no builder to register


def test_tfds_cbis_registers_its_builder_where_tfds_is_installed():
  done = subprocess.run([sys.executable, '-c', 'import tfds_cbis, tensorflow_datasets as tfds; '
                         'print(tfds_cbis.Builder.name, "cbis_ddsm" in tfds.list_builders())'],
                        cwd=ROOT, capture_output=True, text=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.split() == ['cbis_ddsm', 'True']
