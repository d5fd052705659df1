"""Training and evaluation: `train_and_evaluate(config, workdir)` and the pieces it is made of.

The vocabulary follows Flax's imagenet example: create_model, create_train_state, train_step,
eval_step, train_and_evaluate. Steps are pmapped in `make_train_step` / `make_eval_step` only;
batches are split over devices in `mammo_jax.parallel` only. The pieces around the loop have
modules of their own: preprocessing (uint16 patches -> model inputs), warm_start (init_from,
pretrained weights), workdir (what a run writes and how it is read back), evaluation (exact
evaluation and the final one), optimizers, and the registries (models, evaluators).

Reproducibility: every random stream derives from `config.seed`: parameter init, the epoch
order (input_pipeline.epoch_order(seed, epoch)), augmentation (one key per example, from the
step and the example's position in the global batch, so it does not depend on the device
count) and dropout (per step and device). A run killed at any point resumes from its workdir
and, on CPU, ends with the same metrics as an uninterrupted one. A non-finite or diverged
training loss (config.divergence_factor) stops a run before anything after it is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import time
from typing import Any

from absl import logging
from flax import traverse_util
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mammo_jax import accumulation
from mammo_jax import augment
from mammo_jax import checkpointing
from mammo_jax import distributed
from mammo_jax import evaluation
from mammo_jax import evaluators
from mammo_jax import freezing
from mammo_jax import input_pipeline
from mammo_jax import models
from mammo_jax import optimizers
from mammo_jax import parallel
from mammo_jax import preprocessing
from mammo_jax import tasks
from mammo_jax import warm_start
from mammo_jax import workdir as workdir_lib

# Test hook: SIGKILL this process right after the given global step, to test exact resume.
KILL_AFTER_STEP_ENV = 'MAMMO_JAX_KILL_AFTER_STEP'


class TrainState(train_state.TrainState):
  batch_stats: Any = None


def _check_inputs(config: ml_collections.ConfigDict) -> None:
  """The model and config.data.inputs must agree: pair models take (abnormality, baseline)
  pairs, every other model single patches."""
  inputs, wanted = config.data.inputs, models.inputs_of(config.model.name)
  if inputs not in input_pipeline.INPUTS:
    raise ValueError(f'unknown data.inputs {inputs!r}; known: {", ".join(input_pipeline.INPUTS)}')
  if inputs != wanted:
    raise ValueError(f'model {config.model.name} takes data.inputs={wanted!r}, not {inputs!r}; '
                     f'set --config.data.inputs={wanted}')


def create_model(config: ml_collections.ConfigDict, task: tasks.Task):
  """The module of config.model (any registry entry) for `task`, on this backend."""
  _check_inputs(config)
  impl = config.model.conv_impl
  if impl == 'auto':
    impl = 'cpu_fast' if jax.default_backend() == 'cpu' else 'xla'
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.create_model(config.model, task.num_outputs, task_name=task.name,
                             bn_axis_name=parallel.AXIS, conv_impl=impl, dtype=dtype,
                             trainable=config.model.trainable)


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict, model,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initialised parameters and optimizer; `image_shape` is the stored patches' [H, W, C]."""
  init = jax.jit(functools.partial(model.init, train=False))
  dummy = preprocessing.preprocess(jnp.zeros((1, *image_shape), jnp.uint16),
                                  config.model.preprocess)
  variables = init({'params': rng}, dummy)
  params = variables['params']
  if ('batch_stats' in variables and not freezing.is_all_trainable(config.model.trainable)
      and 'trainable' not in {f.name for f in dataclasses.fields(model)}):
    # Keras runs a frozen BatchNorm in inference mode; a family that can (its `trainable`
    # attribute) does the same, the others always run BN in training mode.
    raise ValueError(f'model.trainable={config.model.trainable!r}: freezing layers of a model '
                     f'with batch norm ({config.model.name}) is not supported')
  tx = freezing.masked_optimizer(optimizers.create_optimizer(config.optimizer), params,
                                  config.model.trainable)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get('batch_stats'))


def _variables(state: TrainState, params=None) -> dict:
  variables = {'params': state.params if params is None else params}
  if state.batch_stats is not None:
    variables['batch_stats'] = state.batch_stats
  return variables


def l2_penalty(params, l2: float) -> jnp.ndarray:
  """Keras kernel_regularizer=l2(c) on every conv and dense kernel: c * sum(w^2)."""
  kernels = [w for path, w in traverse_util.flatten_dict(params).items() if path[-1] == 'kernel']
  return l2 * sum(jnp.sum(jnp.square(w)) for w in kernels)


def train_step(state: TrainState, batch: dict, rng: jax.Array, *, task: tasks.Task,
               spec: augment.AugmentSpec, preprocess_mode: str, l2: float, trainable: str,
               class_balance: str = 'none', grad_accum_steps: int = 1):
  """One update on a per-device slice of the global batch (runs under pmap).
  class_balance 'batch' weighs each example by 1 / its class's share of the global batch;
  grad_accum_steps > 1 computes the gradients in micro-batches (mammo_jax.accumulation)."""
  step_rng = jax.random.fold_in(rng, state.step)
  aug_rng, dropout_rng = jax.random.split(step_rng)
  device = lax.axis_index(parallel.AXIS)
  per_device = batch['label'].shape[0]
  index = device * per_device + jnp.arange(per_device)  # position in the global batch
  keys = jax.vmap(jax.random.fold_in, (None, 0))(aug_rng, index)
  images = preprocessing.train_inputs(batch['image'], keys, spec, preprocess_mode)
  dropout_rng = jax.random.fold_in(dropout_rng, device)
  weights = None
  if class_balance == 'batch':
    weights = tasks.balance_weights(task.target(batch['label']), len(task.class_names),
                                    parallel.AXIS)
  # Gradients only for trainable parameters: nothing is back-propagated into frozen layers.
  train_params, frozen_params = freezing.partition(state.params, trainable)

  def loss_fn(train_params, batch_stats, images, labels, weights, dropout_rng):
    params = freezing.combine(train_params, frozen_params)
    logits, updates = state.apply_fn(_variables(state.replace(batch_stats=batch_stats), params),
                                     images, train=True, rngs={'dropout': dropout_rng},
                                     mutable=['batch_stats'])
    loss = task.loss(logits, labels)
    if weights is not None:
      loss = loss * weights
    loss = loss.mean()
    total = loss + l2_penalty(params, l2) if l2 else loss
    return total, (loss, logits, updates.get('batch_stats'))

  grad_fn = jax.grad(loss_fn, has_aux=True)
  args = (train_params, state.batch_stats, images, batch['label'], weights, dropout_rng)
  if grad_accum_steps > 1:
    grads, (loss, logits, batch_stats) = accumulation.accumulate(grad_fn, grad_accum_steps, *args)
  else:
    grads, (loss, logits, batch_stats) = grad_fn(*args)
  grads = lax.pmean(grads, parallel.AXIS)
  # Frozen parameters get zeros, which the masked optimizer ignores (set_to_zero).
  grads = freezing.combine(grads, jax.tree.map(jnp.zeros_like, frozen_params))
  state = state.apply_gradients(grads=grads)
  if state.batch_stats is not None:  # already synced by BatchNorm's axis_name; pmean is exact
    state = state.replace(batch_stats=lax.pmean(batch_stats, parallel.AXIS))
  correct = task.probabilities(logits).argmax(-1) == task.target(batch['label'])
  metrics = {'loss': loss, 'accuracy': correct.mean()}
  return state, lax.pmean(metrics, parallel.AXIS)


def eval_step(state: TrainState, batch: dict, *, task: tasks.Task, preprocess_mode: str,
              flip: bool = False):
  """Per-example loss and class probabilities; masking happens on the host. flip: of the
  horizontally flipped images (flip test-time augmentation)."""
  images = preprocessing.preprocess(batch['image'], preprocess_mode)
  if flip:
    images = images[:, :, ::-1]
  logits = state.apply_fn(_variables(state), images, train=False)
  return {'loss': task.loss(logits, batch['label']), 'probs': task.probabilities(logits)}


def make_train_step(config: ml_collections.ConfigDict, task: tasks.Task):
  step = functools.partial(train_step, task=task,
                           spec=augment.AugmentSpec.from_config(config.augment),
                           preprocess_mode=config.model.preprocess, l2=config.l2,
                           trainable=config.model.trainable,
                           class_balance=config.class_balance,
                           grad_accum_steps=config.grad_accum_steps)
  return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(None, 0, None),
                  out_axes=(None, None))


def make_eval_step(task: tasks.Task, preprocess_mode: str = 'unit', flip: bool = False):
  step = functools.partial(eval_step, task=task, preprocess_mode=preprocess_mode, flip=flip)
  return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(None, 0))


# ---------------------------------------------------------------------------------------------
# The loop.

def _learning_rate(config: ml_collections.ConfigDict, step: int) -> float:
  return optimizers.inverse_time_decay(config.optimizer.learning_rate,
                                       config.optimizer.decay)(step)


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


# The training loss's early level, which config.divergence_factor compares a step's loss with:
# the lowest loss of the first EARLY_STEPS steps (the first epoch, if shorter), and no less than
# the loss of a uniform guess (ln of the class count), so that a warm-started run whose loss
# starts near 0 may rise (vgg16_4's smoke ft3 stage: 0.02, then 1.7). The lowest, not the mean:
# RMSprop's first update alone lifts the loss of a normal smoke run 30-fold for a step, and a
# diverging run climbs within the window.
EARLY_STEPS = 10


def loss_stop_message(loss: float, at_step: int, early_lowest: float | None, factor: float,
                      floor: float) -> str | None:
  """Why step `at_step`'s training loss stops the run, or None while it is sane: a non-finite
  loss, or one above `factor` x max(early_lowest, floor) (factor 0: finite is enough)."""
  if not np.isfinite(loss):
    return f'training loss is {loss} at step {at_step}; stopped.'
  if factor and early_lowest is not None:
    level = max(early_lowest, floor)
    if loss > factor * level:
      return (f'training loss is {loss:.4g} at step {at_step}, over divergence_factor={factor:g} '
              f'times its early level {level:.4g}: diverged; stopped.')
  return None


def _new_loop_state() -> dict:
  # early_loss: the lowest loss of the first steps (EARLY_STEPS), kept so a resumed run compares
  # with the same level. A checkpoint from before it existed restores this default, and the
  # level is then taken from the steps after the resumption.
  return {'epoch': 0, 'best_val_loss': None, 'best_val_auc': None, 'best_epoch': None,
          'best_step': None, 'bad_epochs': 0,
          'epoch_sums': {'loss': 0.0, 'accuracy': 0.0, 'steps': 0},
          'early_loss': {'lowest': None, 'steps': 0}, 'stop_reason': None}


def improved(metric: str, val: dict, loop: dict) -> bool:
  """Whether validation metrics `val` beat the best so far by config.checkpoint_metric: the
  lowest validation loss ('loss') or the highest validation AUC ('auc', Shen's whole-image
  choice). An undefined AUC (a validation split of one class) is kept only while there is no
  best checkpoint at all, so that a run always has one."""
  if metric == 'auc':
    best = loop['best_val_auc']
    if best is None:
      return bool(loop['best_step'] is None or np.isfinite(val['auc']))
    return bool(np.isfinite(val['auc']) and val['auc'] > best)
  best = loop['best_val_loss']
  return bool(np.isfinite(val['loss']) and (best is None or val['loss'] < best))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains config's model in workdir (resuming what is there); returns (state, summary)."""
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config.task)  # the config's fields: config_checks, from runners.run

  # The model (which checks data.inputs and model.preprocess against the registry) and the
  # warm start's sources, before minutes of data preparation.
  model = create_model(config, task)
  warm_start.check_sources(config, workdir)
  builder = distributed.main_first(input_pipeline.prepare_builder, config.data)
  print(input_pipeline.describe(builder), flush=True)
  task.check_labels(builder.info.features['label'].names, config.data.name)
  report = input_pipeline.build_report(builder)
  workdir_lib.check_dataset(report, workdir, builder.info.full_name)  # before any writing
  # What was built, skipped and excluded, its provenance, and the dataset's name and version.
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.DATASET_REPORT_JSON),
                         {**(report or {}), workdir_lib.DATASET_KEY: builder.info.full_name})
  data_provenance = (report or {}).get('provenance', {}).get('provenance_id')
  synthetic = not config.data.manual_dir
  splits, without = input_pipeline.load_splits(builder, config.data)
  without_baseline = None
  if config.data.inputs == 'image+baseline':  # pairs need a baseline: say how many had none
    without_baseline = without
    print(f'Left out for lacking a baseline patch (data.inputs={config.data.inputs}): '
          + ', '.join(f'{s} {n}' for s, n in without.items()), flush=True)
  # Example ids as str (bytes objects would need pickle) for predictions.npz; not for devices.
  ids = {s: np.array([i.decode() for i in d.pop('id')]) for s, d in splits.items()}
  steps_per_epoch = input_pipeline.steps_per_epoch(len(splits['train']['label']),
                                                   config.batch_size)
  total_steps = config.num_epochs * steps_per_epoch
  if config.num_train_steps > 0:
    total_steps = min(total_steps, config.num_train_steps)

  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = splits['train']['image'].shape[1:]
  state = create_train_state(init_rng, config, model, image_shape)
  ckpt = checkpointing.Checkpoints(workdir)
  resuming = ckpt.latest_step() is not None
  workdir_lib.check_and_write_config(config, workdir, resuming=resuming)
  if not resuming:  # a resumed run's checkpoint already holds its start
    state = warm_start.warm_start(config, workdir, state)
  n_trainable, n_total = freezing.count(state.params, config.model.trainable)
  print(f'Model {config.model.name}: {n_total:,} parameters, {n_trainable:,} trainable',
        flush=True)
  state, loop = ckpt.restore_latest(state, _new_loop_state())
  step = int(state.step)
  if step:
    logging.info('Resuming from step %d (epoch %d) in %s', step, loop['epoch'], workdir)
    print(f'Resuming {workdir} from step {step}', flush=True)
  ckpt.drop_best_after(step)
  log = workdir_lib.MetricsLog(workdir, step)

  p_train_step = make_train_step(config, task)
  p_eval_step = make_eval_step(task, config.model.preprocess)
  evaluator = evaluators.of_config(config)
  kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, '0'))

  def end_of_epoch(step: int) -> bool:
    """Validation, early stopping and the best checkpoint; True when training should stop."""
    sums = loop['epoch_sums']
    if sums['steps']:
      log.write(step, 'train', {'loss': sums['loss'] / sums['steps'],
                                'accuracy': sums['accuracy'] / sums['steps'],
                                'learning_rate': _learning_rate(config, step)},
                epoch=loop['epoch'])
    loop['epoch_sums'] = {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}
    val, _, _ = evaluation.evaluate(p_eval_step, state, splits['validation'],
                                   config.eval_batch_size, task, evaluator)
    log.write(step, 'validation', val, epoch=loop['epoch'])
    if improved(config.checkpoint_metric, val, loop):
      auc = val['auc'] if np.isfinite(val['auc']) else None
      loop.update(best_val_loss=val['loss'], best_val_auc=auc, best_epoch=loop['epoch'],
                  best_step=step, bad_epochs=0)
      ckpt.save_best(step, state, loop)
    else:
      loop['bad_epochs'] += 1
    metric = config.checkpoint_metric
    best = loop[f'best_val_{metric}']
    print(f'epoch {loop["epoch"]:>4} step {step}: val loss {val["loss"]:.4f} acc '
          f'{val["accuracy"]:.4f} auc {val["auc"]:.4f} (best {metric} '
          f'{"none" if best is None else f"{best:.4f}"} at epoch {loop["best_epoch"]})',
          flush=True)
    if config.patience and loop['bad_epochs'] >= config.patience:
      loop['stop_reason'] = (f'early stopping: no validation-{config.checkpoint_metric} '
                             f'improvement for {config.patience} epochs')
      return True
    return False

  # Step metrics stay on the device until the loop must look at them (logging, an epoch end,
  # a checkpoint): reading them back every step would stall the dispatch of the next step.
  pending = []

  early_steps = min(EARLY_STEPS, steps_per_epoch)
  chance_loss = math.log(len(task.class_names))

  def read_pending_metrics() -> None:
    """Adds pending step metrics to the epoch sums; stops on a non-finite or diverged loss, before
    anything after it is saved (so the latest checkpoint is from a step whose loss was sane)."""
    sums, early = loop['epoch_sums'], loop['early_loss']
    for at_step, metrics in jax.device_get(pending):
      loss = float(metrics['loss'])
      problem = loss_stop_message(loss, at_step, early['lowest'], config.divergence_factor,
                                  chance_loss)
      if problem:
        latest = ckpt.latest_step()
        where = (f'The last good checkpoint (step {latest}) is in {ckpt.latest_dir}.'
                 if latest is not None else 'No checkpoint had been written yet.')
        raise FloatingPointError(
            f'{problem} {where} Try a lower optimizer.learning_rate in a new --workdir.')
      if early['steps'] < early_steps:
        early['lowest'] = loss if early['lowest'] is None else min(early['lowest'], loss)
        early['steps'] += 1
      sums['loss'] += loss
      sums['accuracy'] += float(metrics['accuracy'])
      sums['steps'] += 1
    pending.clear()

  batches = parallel.prefetch(input_pipeline.train_batches(
      splits['train'], config.batch_size, config.seed, start_step=step,
      rows=parallel.process_rows(config.batch_size)))
  start_time, start_step = time.time(), step
  cadence = config.checkpoint_every_steps
  while step < total_steps and loop['stop_reason'] is None:
    state, metrics = p_train_step(state, next(batches), train_rng)
    step += 1
    pending.append((step, metrics))
    log_now = step % config.log_every_steps == 0 or step == total_steps
    epoch_done = step % steps_per_epoch == 0
    if log_now or epoch_done or (cadence and step % cadence == 0):
      read_pending_metrics()  # before anything is logged or saved
    sums = loop['epoch_sums']
    if log_now:
      rate = (step - start_step) / (time.time() - start_time)
      print(f'step {step}/{total_steps} epoch {loop["epoch"]} train loss '
            f'{sums["loss"] / sums["steps"]:.4f} acc {sums["accuracy"] / sums["steps"]:.4f} | '
            f'{rate:.2f} steps/s, {rate * config.batch_size:.1f} img/s, ETA '
            f'{_format_eta((total_steps - step) / rate)}', flush=True)
    if epoch_done:
      stop = end_of_epoch(step)
      loop['epoch'] += 1
      if loop['epoch'] >= config.num_epochs and not stop:
        loop['stop_reason'] = f'reached num_epochs={config.num_epochs}'
    if step == total_steps and loop['stop_reason'] is None:
      stopped = not epoch_done and end_of_epoch(step)  # a capped run is validated too
      if not stopped:
        loop['stop_reason'] = f'reached num_train_steps={config.num_train_steps}'
    if epoch_done or loop['stop_reason'] or (cadence and step % cadence == 0):
      ckpt.save_latest(step, state, loop)
    if kill_after and step == kill_after:
      os.kill(os.getpid(), signal.SIGKILL)

  print(f'Training stopped at step {step}: {loop["stop_reason"]}', flush=True)
  summary = evaluation.final_evaluation(
      config, workdir, ckpt, state, loop, splits, p_eval_step, task, log, synthetic=synthetic,
      steps_per_epoch=steps_per_epoch, param_counts=(n_trainable, n_total), ids=ids,
      without_baseline=without_baseline, data_provenance=data_provenance,
      p_eval_flipped=(make_eval_step(task, config.model.preprocess, flip=True)
                      if config.evaluation.flip_tta else None))
  return state, summary
