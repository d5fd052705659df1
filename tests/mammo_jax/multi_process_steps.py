"""A first update, an exact evaluation and a resumed update, as one process or one of several.

Used by test_multihost.py: one process with 2 fake CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=2), and 2 processes with 1 CPU device each
over localhost, must give the same numbers. Runs inside the workdir's lock, feeds each process
its share of every global batch, checkpoints after the first step and resumes from it, reads the
checkpoint back as init_from does; process 0 writes OUT.npz and OUT.json.
Usage: python tests/mammo_jax/multi_process_steps.py WORKDIR OUT [ADDRESS NUM_PROCESSES ID]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from mammo_jax import distributed  # noqa: E402

if __name__ == '__main__':  # before anything touches a device
  if len(sys.argv) > 3:
    distributed.initialize(sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402

from mammo_jax import checkpointing, evaluation, input_pipeline, parallel  # noqa: E402
from mammo_jax import tasks, train  # noqa: E402
from mammo_jax import workdir as workdir_lib  # noqa: E402
from tests.conftest import load_config  # noqa: E402

BATCH = 8
SIDE = 32


class Tiny(nn.Module):
  """Conv, BatchNorm synced over the devices of all processes, Dense: compiles in seconds."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), strides=(2, 2))(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name=parallel.AXIS)(x)
    return nn.Dense(1)(nn.relu(x).mean((1, 2)))


def _flat(state, prefix):
  flat = traverse_util.flatten_dict({'params': state.params, 'stats': state.batch_stats},
                                    sep='/')
  return {f'{prefix}/{k}': np.asarray(v) for k, v in flat.items()}


def main(workdir, out):
  config = load_config('scratch2', 'exp10,smoke')  # mass vs calcification, augmentation on
  config.optimizer.name, config.optimizer.learning_rate = 'sgd', 0.05  # as multi_device_steps
  task = tasks.get_task(config.task)
  model = Tiny()
  rng = np.random.default_rng(0)
  data = {'image': rng.integers(0, 65535, (12, SIDE, SIDE, 1), dtype=np.uint16),
          'label': rng.integers(0, 4, (12,), dtype=np.int32)}
  rows = parallel.process_rows(BATCH)
  fresh = train.create_train_state(jax.random.key(0), config, model, (SIDE, SIDE, 1))
  p_train_step = train.make_train_step(config, task)
  p_eval_step = train.make_eval_step(task)
  train_rng = jax.random.key(1)
  arrays = {}
  with distributed.hold_workdir(workdir):
    batches = parallel.prefetch(input_pipeline.train_batches(data, BATCH, 0, rows=rows))
    state, metrics = p_train_step(fresh, next(batches), train_rng)
    arrays.update(_flat(state, 'step1'))
    # 12 examples in batches of 8: the second is half padding; each process evaluates its share.
    values, probs, _ = evaluation.evaluate(p_eval_step, state, data, BATCH, task)
    arrays['probs'] = probs
    ckpt = checkpointing.Checkpoints(workdir)
    ckpt.save_latest(1, state, {'epoch': 1})
    ckpt.save_best(1, state, {'epoch': 1})
    workdir_lib.write_results(workdir, {'best_step': 1})  # what init_from reads back:
    params, stats, _ = checkpointing.best_variables(workdir)
    arrays.update(_flat(state.replace(params=params, batch_stats=stats), 'best'))
    continued, _ = p_train_step(state, next(batches), train_rng)
    restored, loop = checkpointing.Checkpoints(workdir).restore_latest(fresh, {})
    resumed_batches = parallel.prefetch(input_pipeline.train_batches(
        data, BATCH, 0, start_step=int(restored.step), rows=rows))
    resumed, _ = p_train_step(restored, next(resumed_batches), train_rng)
    arrays.update(_flat(continued, 'continued'))
    arrays.update(_flat(resumed, 'resumed'))
    summary = {'processes': jax.process_count(), 'devices': jax.device_count(),
               'loss': float(metrics['loss']), 'eval': values, 'loop': loop,
               'resumed_step': int(resumed.step), 'lock_pid': os.getpid()}
    distributed.on_main(np.savez, out + '.npz', **arrays)
    workdir_lib.write_json(out + '.json', summary)


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
