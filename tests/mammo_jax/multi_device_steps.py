"""Runs a pmapped train step and one masked evaluation on fixed data; saves the outcome.

Used by test_train.py in subprocesses with XLA_FLAGS=--xla_force_host_platform_device_count=N:
the same global batch must give the same update and the same metrics for every N.
Usage: python tests/multi_device_steps.py OUT.npz
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from mammo_jax import evaluation, models, parallel, tasks, train  # noqa: E402
from tests.conftest import load_config  # noqa: E402


def main(out):
  config = load_config('scratch2', 'exp10,smoke')  # BatchNorm model, augmentation on
  # SGD's update is linear in the gradient, so the comparison is tight; RMSprop divides by
  # the gradient's own scale and would amplify float32 summation-order noise in tiny gradients.
  config.optimizer.name, config.optimizer.learning_rate = 'sgd', 0.05
  task = tasks.get_task(config.task)
  # Dropout masks are drawn per device, so they depend on the device count by design; the
  # rest (augmentation keys per example, synced BatchNorm, pmean'd gradients) must not.
  model = models.get_model('scratch2_exp10', dropout=0.0, bn_axis_name=parallel.AXIS)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 65535, (16, 100, 100, 1), dtype=np.uint16)
  labels = rng.integers(0, 4, (16,), dtype=np.int32)
  state = train.create_train_state(jax.random.key(0), config, model, (100, 100, 1))
  p_train_step = train.make_train_step(config, task)
  # One update: over several steps, float32 summation-order noise (~1e-7) is amplified by the
  # dynamics (BatchNorm with 2 examples per device, ReLU and max-pool switches).
  state, metrics = p_train_step(state, parallel.shard({'image': images, 'label': labels}),
                                jax.random.key(1))
  losses = [float(metrics['loss'])]
  data = {'image': images[:11], 'label': labels[:11]}  # 11 examples: padded to 16 in batches of 8
  values, probs, _ = evaluation.evaluate(train.make_eval_step(task), state, data, 8, task)
  flat = traverse_util.flatten_dict({'params': state.params, 'stats': state.batch_stats}, sep='/')
  np.savez(out, probs=probs, **{k: np.asarray(v) for k, v in flat.items()})
  with open(out + '.json', 'w') as f:
    json.dump({'devices': jax.local_device_count(), 'losses': losses, 'eval': values}, f)


if __name__ == '__main__':
  main(sys.argv[1])
