"""Training and evaluation: `train_and_evaluate(config, workdir)` and the pieces it is made of.

The vocabulary follows Flax's imagenet example: create_model, create_optimizer,
create_train_state, train_step, eval_step, evaluate, train_and_evaluate. Steps are pmapped in
`make_train_step` / `make_eval_step` only; batches are split over devices in
`mammo_jax.parallel` only.

Reproducibility: every random stream derives from `config.seed`: parameter init, the epoch
order (input_pipeline.epoch_order(seed, epoch)), augmentation (one key per example, from the
step and the example's position in the global batch, so it does not depend on the device
count) and dropout (per step and device). A run killed at any point resumes from its workdir
and, on CPU, ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import signal
import time
from typing import Any

from absl import logging
from clu import metric_writers
from flax import traverse_util
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from mammo_jax import augment
from mammo_jax import checkpointing
from mammo_jax import freezing
from mammo_jax import input_pipeline
from mammo_jax import metrics as metrics_lib
from mammo_jax import models
from mammo_jax import optimizers
from mammo_jax import parallel
from mammo_jax import plots
from mammo_jax import tasks

# Test hook: SIGKILL this process right after the given global step, to test exact resume.
KILL_AFTER_STEP_ENV = 'MAMMO_JAX_KILL_AFTER_STEP'
# Fields that may change between an interrupted run and its resumption.
# num_train_steps is not among them: a capped run validates and stops at the cap.
RESUMABLE_FIELDS = ('log_every_steps', 'checkpoint_every_steps', 'data.num_workers',
                    'data.cache_dir', 'data.data_dir')
# Bookkeeping fields (and everything under them) that are not part of the fingerprint, so
# that workdirs written before they existed still match.
UNFINGERPRINTED = ('published', 'model.dont_load')


class TrainState(train_state.TrainState):
  batch_stats: Any = None


# Keras "caffe" preprocessing (keras.applications.vgg16.preprocess_input): RGB -> BGR, then
# minus the ImageNet means in BGR order, no scaling. torchvision's: [0, 1], minus mean, over std.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
TORCH_RGB_MEAN, TORCH_RGB_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PREPROCESS_MODES = ('unit', 'caffe', 'torch')


def scale(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Stored uint16 grey patches -> float grey images, the space augmentation works in."""
  if mode in ('unit', 'torch'):  # the study's scratch / dual / siamese scaling, or torch's [0, 1]
    return images.astype(jnp.float32) / 65535.0
  if mode == 'caffe':  # the study's VGG16 input: uint16 / 256, roughly [0, 255]
    return images.astype(jnp.float32) / 256.0
  raise ValueError(f'unknown model.preprocess {mode!r}; known: {", ".join(PREPROCESS_MODES)}')


def finish(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Scaled (and possibly augmented) grey images -> model input."""
  if mode == 'unit':
    return images
  rgb = jnp.repeat(images, 3, axis=-1)  # grey -> 3 channels, as the study's np.repeat
  if mode == 'caffe':
    return rgb[..., ::-1] - jnp.asarray(CAFFE_BGR_MEANS, jnp.float32)
  if mode == 'torch':
    return (rgb - jnp.asarray(TORCH_RGB_MEAN)) / jnp.asarray(TORCH_RGB_STD)
  raise ValueError(f'unknown model.preprocess {mode!r}; known: {", ".join(PREPROCESS_MODES)}')


def preprocess(images: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Stored uint16 patches -> model input; the one path for validation, test and training.

  Training augments between `scale` and `finish`, where Keras's ImageDataGenerator applied
  the study's `preprocessing_function`: after the random transform (its fill values are grey
  values, not mean-subtracted ones). The reference study's D1 defect (a different
  preprocessing at test time) cannot occur: both steps call these two functions.
  """
  return finish(scale(images, mode), mode)


def train_inputs(images: jnp.ndarray, keys: jax.Array | None, spec: augment.AugmentSpec,
                 mode: str) -> jnp.ndarray:
  """The training step's model input: preprocess() with augmentation in the middle."""
  x = scale(images, mode)
  if spec.enabled and keys is not None:
    x = augment.augment_batch(keys, x, spec)
  return finish(x, mode)


def check_inputs(config: ml_collections.ConfigDict) -> None:
  """The model and config.data.inputs must agree: pair models take (abnormality, baseline)
  pairs, every other model single patches."""
  inputs, wanted = config.data.inputs, models.inputs_of(config.model.name)
  if inputs not in input_pipeline.INPUTS:
    raise ValueError(f'unknown data.inputs {inputs!r}; known: {", ".join(input_pipeline.INPUTS)}')
  if inputs != wanted:
    raise ValueError(f'model {config.model.name} takes data.inputs={wanted!r}, not {inputs!r}; '
                     f'set --config.data.inputs={wanted}')
  if inputs == 'image+baseline' and config.model.preprocess != 'unit':
    # 'caffe' / 'torch' turn one grey channel into RGB; a pair's two channels are two images.
    raise ValueError(f'data.inputs={inputs!r} needs model.preprocess=\'unit\', not '
                     f'{config.model.preprocess!r}')


def create_model(config: ml_collections.ConfigDict, task: tasks.Task):
  check_inputs(config)
  impl = config.model.conv_impl
  if impl == 'auto':
    impl = 'cpu_fast' if jax.default_backend() == 'cpu' else 'xla'
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  if config.model.name == 'vgg16':
    if config.model.preprocess not in ('caffe', 'torch'):
      raise ValueError(f"model vgg16 needs model.preprocess 'caffe' (Keras weights) or 'torch' "
                       f"(torchvision weights), not {config.model.preprocess!r}")
    return models.VGG16Classifier(num_outputs=task.num_outputs, fc=config.model.fc,
                                  dropout=config.model.dropout, conv_impl=impl, dtype=dtype)
  model = models.get_model(config.model.name, bn_axis_name=parallel.AXIS, conv_impl=impl,
                           dtype=dtype)
  if model.num_outputs != task.num_outputs:
    raise ValueError(f'model {config.model.name} has {model.num_outputs} outputs but task '
                     f'{task.name} needs {task.num_outputs}')
  return model


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  opt = config.optimizer
  if opt.name == 'sgd':
    return optimizers.keras_sgd(opt.learning_rate, opt.decay, opt.momentum)
  if opt.momentum:
    raise ValueError(f'optimizer.momentum applies to sgd only, not {opt.name!r}')
  makers = {'rmsprop': optimizers.keras_rmsprop, 'adam': optimizers.keras_adam,
            'nadam': optimizers.keras_nadam}
  if opt.name not in makers:
    raise ValueError(f'unknown optimizer.name {opt.name!r}; known: sgd, '
                     f'{", ".join(sorted(makers))}')
  return makers[opt.name](opt.learning_rate, opt.decay)


def learning_rate(config: ml_collections.ConfigDict, step: int) -> float:
  return optimizers.inverse_time_decay(config.optimizer.learning_rate,
                                       config.optimizer.decay)(step)


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict, model,
                       image_shape: tuple[int, ...]) -> TrainState:
  """Initialised parameters and optimizer; `image_shape` is the stored patches' [H, W, C]."""
  init = jax.jit(functools.partial(model.init, train=False))
  dummy = preprocess(jnp.zeros((1, *image_shape), jnp.uint16), config.model.preprocess)
  variables = init({'params': rng}, dummy)
  params = variables['params']
  if 'batch_stats' in variables and not freezing.is_all_trainable(config.model.trainable):
    # Keras runs a frozen BatchNorm in inference mode; here BN always runs in training mode.
    raise ValueError(f'model.trainable={config.model.trainable!r}: freezing layers of a model '
                     f'with batch norm ({config.model.name}) is not supported')
  tx = freezing.masked_optimizer(create_optimizer(config), params, config.model.trainable)
  return TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                           batch_stats=variables.get('batch_stats'))


INIT_FROM_RECORD = 'init_from.json'  # in a workdir: the finished run it started from


def resolve_init_from(init_from: str, workdir: str) -> str:
  """'@STAGE' -> the sibling workdir STAGE (pipeline stages live side by side)."""
  if init_from.startswith('@'):
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), init_from[1:])
  return init_from


def run_identity(workdir: str) -> dict:
  """What identifies a finished run's best checkpoint: its step and its config's fingerprint
  (not results.json's bytes, which a re-evaluation on another device may change)."""
  with open(os.path.join(workdir, 'results.json')) as f:
    best_step = json.load(f)['best_step']
  with open(os.path.join(workdir, 'config.json')) as f:
    fingerprint = json.dumps(config_fingerprint(json.load(f)), sort_keys=True)
  return {'best_step': best_step,
          'config_sha256': hashlib.sha256(fingerprint.encode()).hexdigest()}


def _has_checkpoint(workdir: str) -> bool:
  latest = os.path.join(workdir, 'checkpoints', 'latest')
  return os.path.isdir(latest) and any(n.isdigit() for n in os.listdir(latest))


def _check_warm_start_sources(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails fast, before data preparation, on a fresh run's missing or unusable start."""
  if config.model.pretrained and config.model.name != 'vgg16':
    raise ValueError(f'model.pretrained applies to vgg16 models, not {config.model.name}')
  if _has_checkpoint(workdir):
    return  # resuming: the checkpoint holds the starting point already
  if config.init_from:
    source = resolve_init_from(config.init_from, workdir)
    if not os.path.exists(os.path.join(source, 'results.json')):
      raise FileNotFoundError(
          f'init_from={config.init_from}: {source} holds no finished run (no results.json). '
          f'Run that stage to the end first, in that workdir, or run the whole chain with '
          f'the config\'s :pipeline argument.')
  elif config.model.pretrained:
    from mammo_jax import vgg16_weights  # pylint: disable=g-import-not-at-top
    spec = config.model.pretrained
    if spec not in vgg16_weights.OFFICIAL and not os.path.isfile(os.path.expanduser(spec)):
      raise FileNotFoundError(vgg16_weights.missing_message(spec))


def _merge(target, loaded, source: str, fix: str, skip: str | None = None):
  """Strict merge whose error names where the values came from and what to change."""
  from mammo_jax import vgg16_weights  # pylint: disable=g-import-not-at-top  (h5py, lazily)
  try:
    return vgg16_weights.merge_params(target, loaded, skip=skip)
  except ValueError as e:
    raise ValueError(f'{source}: {e}\n{fix}') from None


def warm_start(config: ml_collections.ConfigDict, workdir: str,
               state: TrainState) -> TrainState:
  """A fresh run's starting parameters: another run's best checkpoint (config.init_from),
  else ImageNet weights for the VGG16 base (config.model.pretrained), else state as is.

  init_from wins because it sets every parameter. Merges are strict: names or shapes that
  differ raise, listing the differences.
  """
  params, batch_stats = state.params, state.batch_stats
  if config.init_from:
    source = os.path.abspath(resolve_init_from(config.init_from, workdir))
    best_params, best_stats, best_step = checkpointing.best_variables(source)
    what = f'init_from={config.init_from} ({source}, best step {best_step})'
    fix = ('The model (model.name, model.fc, the task) must be the one that run trained; '
           'compare its config.json.')
    params = _merge(params, best_params, what, fix)
    if (batch_stats is None) != (best_stats is None):
      raise ValueError(f'{what}: one of the two models has batch norm and the other not. {fix}')
    if batch_stats is not None:
      batch_stats = _merge(batch_stats, best_stats, what, fix)
    print(f'Parameters initialised from the best checkpoint of {source} (step {best_step})',
          flush=True)
    with open(os.path.join(workdir, INIT_FROM_RECORD), 'w') as f:
      json.dump({'init_from': source, **run_identity(source)}, f, indent=1)
  elif config.model.pretrained:
    from mammo_jax import vgg16_weights  # pylint: disable=g-import-not-at-top  (h5py, lazily)
    if 'vgg16' not in params:
      raise ValueError(f'model.pretrained applies to vgg16 models, not {config.model.name}')
    cache = os.path.join(config.data.cache_dir, 'weights') if config.data.cache_dir else None
    loaded, meta = vgg16_weights.load_pretrained(config.model.pretrained, cache_dir=cache)
    if meta.get('preprocess', config.model.preprocess) != config.model.preprocess:
      raise ValueError(f'{config.model.pretrained} holds weights trained on '
                       f'{meta["preprocess"]!r}-preprocessed inputs, but model.preprocess is '
                       f'{config.model.preprocess!r}; set --config.model.preprocess='
                       f'{meta["preprocess"]}')
    vgg = _merge(params['vgg16'], loaded, f'model.pretrained={config.model.pretrained}',
                 'Port the weights of a VGG16 (python -m mammo_jax.port_vgg16 SRC OUT).',
                 skip=vgg16_weights.TOP_PATTERN)
    params = {**params, 'vgg16': vgg}
    print(f'VGG16 base initialised from {config.model.pretrained} ({meta.get("format")}, '
          f'source sha256 {str(meta.get("source_sha256"))[:12]})', flush=True)
  return state.replace(params=params, batch_stats=batch_stats)


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
               spec: augment.AugmentSpec, preprocess_mode: str, l2: float, trainable: str):
  """One update on a per-device slice of the global batch (runs under pmap)."""
  step_rng = jax.random.fold_in(rng, state.step)
  aug_rng, dropout_rng = jax.random.split(step_rng)
  device = lax.axis_index(parallel.AXIS)
  per_device = batch['label'].shape[0]
  index = device * per_device + jnp.arange(per_device)  # position in the global batch
  keys = jax.vmap(jax.random.fold_in, (None, 0))(aug_rng, index)
  images = train_inputs(batch['image'], keys, spec, preprocess_mode)
  dropout_rng = jax.random.fold_in(dropout_rng, device)
  # Gradients only for trainable parameters: nothing is back-propagated into frozen layers.
  train_params, frozen_params = freezing.partition(state.params, trainable)

  def loss_fn(train_params):
    params = freezing.combine(train_params, frozen_params)
    logits, updates = state.apply_fn(_variables(state, params), images, train=True,
                                     rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    loss = task.loss(logits, batch['label']).mean()
    total = loss + l2_penalty(params, l2) if l2 else loss
    return total, (loss, logits, updates)

  grads, (loss, logits, updates) = jax.grad(loss_fn, has_aux=True)(train_params)
  grads = lax.pmean(grads, parallel.AXIS)
  # Frozen parameters get zeros, which the masked optimizer ignores (set_to_zero).
  grads = freezing.combine(grads, jax.tree.map(jnp.zeros_like, frozen_params))
  state = state.apply_gradients(grads=grads)
  if state.batch_stats is not None:  # already synced by BatchNorm's axis_name; pmean is exact
    state = state.replace(batch_stats=lax.pmean(updates['batch_stats'], parallel.AXIS))
  correct = task.probabilities(logits).argmax(-1) == task.target(batch['label'])
  metrics = {'loss': loss, 'accuracy': correct.mean()}
  return state, lax.pmean(metrics, parallel.AXIS)


def eval_step(state: TrainState, batch: dict, *, task: tasks.Task, preprocess_mode: str):
  """Per-example loss and class probabilities; masking happens on the host."""
  images = preprocess(batch['image'], preprocess_mode)
  logits = state.apply_fn(_variables(state), images, train=False)
  return {'loss': task.loss(logits, batch['label']), 'probs': task.probabilities(logits)}


def make_train_step(config: ml_collections.ConfigDict, task: tasks.Task):
  step = functools.partial(train_step, task=task,
                           spec=augment.AugmentSpec.from_config(config.augment),
                           preprocess_mode=config.model.preprocess, l2=config.l2,
                           trainable=config.model.trainable)
  return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(None, 0, None),
                  out_axes=(None, None))


def make_eval_step(task: tasks.Task, preprocess_mode: str = 'unit'):
  step = functools.partial(eval_step, task=task, preprocess_mode=preprocess_mode)
  return jax.pmap(step, axis_name=parallel.AXIS, in_axes=(None, 0))


def evaluate(p_eval_step, state: TrainState, data: dict[str, np.ndarray], batch_size: int,
             task: tasks.Task) -> tuple[dict, np.ndarray, np.ndarray]:
  """Exact metrics over every example of `data`; returns (metrics, probs, task labels)."""
  masks = []

  def device_batches():  # the mask stays on the host; the step never needs it
    for batch in input_pipeline.eval_batches(data, batch_size):
      masks.append(batch.pop('mask'))
      yield batch

  losses, probs = [], []
  for batch in parallel.prefetch(device_batches()):
    out = p_eval_step(state, batch)
    losses.append(parallel.unshard(out['loss']))
    probs.append(parallel.unshard(out['probs']))
  mask = np.concatenate(masks)
  loss = np.concatenate(losses)[mask].astype(np.float64)
  probs = np.concatenate(probs)[mask]
  labels = np.asarray(task.target(data['label']))  # eval_batches keeps the order
  result = metrics_lib.classification_metrics(probs, labels, class_names=task.class_names)
  result['loss'] = float(loss.mean())
  return result, probs, labels


# ---------------------------------------------------------------------------------------------
# The loop.

class MetricsLog:
  """metrics.jsonl (one object per logged step and split) plus TensorBoard scalars."""

  def __init__(self, workdir: str, resume_step: int):
    self.path = os.path.join(workdir, 'metrics.jsonl')
    kept = []
    if os.path.exists(self.path):  # drop what a killed run logged after its checkpoint
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut short by the kill
          # The final test record is written again when the run ends.
          if record['step'] <= resume_step and record['split'] != 'test':
            kept.append(line if line.endswith('\n') else line + '\n')
    with open(self.path, 'w') as f:
      f.writelines(kept)
    self.writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=jax.process_index() > 0)

  def write(self, step: int, split: str, values: dict, **extra) -> None:
    record = {'step': int(step), 'split': split, **extra, 'metrics': values}
    with open(self.path, 'a') as f:
      f.write(json.dumps(record, sort_keys=True) + '\n')
    scalars = {f'{split}/{k}': v for k, v in values.items() if isinstance(v, (int, float))}
    self.writer.write_scalars(int(step), scalars)
    self.writer.flush()


def config_fingerprint(config_dict: dict) -> dict:
  """The config fields that must not change when a run resumes, flattened."""
  flat = traverse_util.flatten_dict(config_dict, sep='.')
  return {k: v for k, v in flat.items() if k not in RESUMABLE_FIELDS
          and not any(k == f or k.startswith(f + '.') for f in UNFINGERPRINTED)}


def _config_differences(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
  """Fields that differ from workdir's config.json (None when it has none)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = config_fingerprint(json.load(f))
  new = config_fingerprint(json.loads(config.to_json_best_effort()))
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def same_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """True when workdir's run used this config (up to RESUMABLE_FIELDS)."""
  return _config_differences(config, workdir) == []


def _check_workdir_config(config: ml_collections.ConfigDict, workdir: str,
                          resuming: bool) -> None:
  """Refuses to resume a checkpointed run with a different config; writes config.json."""
  diff = _config_differences(config, workdir) if resuming else None
  if diff:
    raise ValueError(f'workdir {workdir} holds a run with a different config (fields '
                     f'{", ".join(diff)}); use another --workdir or delete this one')
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def _format_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m' if seconds >= 3600 else \
      f'{seconds // 60}m{seconds % 60:02d}s'


def _new_loop_state() -> dict:
  return {'epoch': 0, 'best_val_loss': None, 'best_epoch': None, 'best_step': None,
          'bad_epochs': 0, 'epoch_sums': {'loss': 0.0, 'accuracy': 0.0, 'steps': 0},
          'stop_reason': None}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains config's model in workdir (resuming what is there); returns (state, summary)."""
  os.makedirs(workdir, exist_ok=True)
  task = tasks.get_task(config.task)
  parallel.check_batch_size(config.batch_size)
  parallel.check_batch_size(config.eval_batch_size, 'eval_batch_size')

  check_inputs(config)  # these two before minutes of data preparation
  _check_warm_start_sources(config, workdir)
  builder = input_pipeline.prepare_builder(config.data)
  print(input_pipeline.describe(builder), flush=True)
  report = input_pipeline.build_report(builder)
  if report is not None:  # provenance: what was built, skipped and excluded
    with open(os.path.join(workdir, 'dataset_report.json'), 'w') as f:
      json.dump(report, f, indent=1, sort_keys=True)
  synthetic = not config.data.manual_dir
  splits, without = {}, {}
  for s in ('train', 'validation', 'test'):
    splits[s], without[s] = input_pipeline.load_inputs(builder, s, config.data.inputs)
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

  model = create_model(config, task)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  image_shape = splits['train']['image'].shape[1:]
  state = create_train_state(init_rng, config, model, image_shape)
  ckpt = checkpointing.Checkpoints(workdir)
  resuming = ckpt.latest_step() is not None
  _check_workdir_config(config, workdir, resuming=resuming)
  if not resuming:  # a resumed run's checkpoint already holds its start
    state = warm_start(config, workdir, state)
  n_trainable, n_total = freezing.count(state.params, config.model.trainable)
  print(f'Model {config.model.name}: {n_total:,} parameters, {n_trainable:,} trainable',
        flush=True)
  state, loop = ckpt.restore_latest(state, _new_loop_state())
  step = int(state.step)
  if step:
    logging.info('Resuming from step %d (epoch %d) in %s', step, loop['epoch'], workdir)
    print(f'Resuming {workdir} from step {step}', flush=True)
  ckpt.drop_best_after(step)
  log = MetricsLog(workdir, step)

  p_train_step = make_train_step(config, task)
  p_eval_step = make_eval_step(task, config.model.preprocess)
  kill_after = int(os.environ.get(KILL_AFTER_STEP_ENV, '0'))

  def end_of_epoch(step: int) -> bool:
    """Validation, early stopping and the best checkpoint; True when training should stop."""
    sums = loop['epoch_sums']
    if sums['steps']:
      log.write(step, 'train', {'loss': sums['loss'] / sums['steps'],
                                'accuracy': sums['accuracy'] / sums['steps'],
                                'learning_rate': learning_rate(config, step)},
                epoch=loop['epoch'])
    loop['epoch_sums'] = {'loss': 0.0, 'accuracy': 0.0, 'steps': 0}
    val, _, _ = evaluate(p_eval_step, state, splits['validation'], config.eval_batch_size, task)
    log.write(step, 'validation', val, epoch=loop['epoch'])
    improved = np.isfinite(val['loss']) and (loop['best_val_loss'] is None
                                             or val['loss'] < loop['best_val_loss'])
    if improved:
      loop.update(best_val_loss=val['loss'], best_epoch=loop['epoch'], best_step=step,
                  bad_epochs=0)
      ckpt.save_best(step, state, loop)
    else:
      loop['bad_epochs'] += 1
    best = loop['best_val_loss']
    print(f'epoch {loop["epoch"]:>4} step {step}: val loss {val["loss"]:.4f} acc '
          f'{val["accuracy"]:.4f} auc {val["auc"]:.4f} (best '
          f'{"none" if best is None else f"{best:.4f}"} at epoch {loop["best_epoch"]})',
          flush=True)
    if config.patience and loop['bad_epochs'] >= config.patience:
      loop['stop_reason'] = (f'early stopping: no validation-loss improvement for '
                             f'{config.patience} epochs')
      return True
    return False

  # Step metrics stay on the device until the loop must look at them (logging, an epoch end,
  # a checkpoint): reading them back every step would stall the dispatch of the next step.
  pending = []

  def read_pending_metrics() -> None:
    """Adds pending step metrics to the epoch sums; stops on a non-finite loss."""
    sums = loop['epoch_sums']
    for at_step, metrics in jax.device_get(pending):
      if not np.isfinite(metrics['loss']):
        latest = ckpt.latest_step()
        where = (f'The last good checkpoint (step {latest}) is in {ckpt.latest_dir}.'
                 if latest is not None else 'No checkpoint had been written yet.')
        raise FloatingPointError(
            f'training loss is {metrics["loss"]} at step {at_step}; stopped. {where} Try a '
            f'lower optimizer.learning_rate in a new --workdir.')
      sums['loss'] += float(metrics['loss'])
      sums['accuracy'] += float(metrics['accuracy'])
      sums['steps'] += 1
    pending.clear()

  batches = parallel.prefetch(input_pipeline.train_batches(
      splits['train'], config.batch_size, config.seed, start_step=step))
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
  summary = final_evaluation(config, workdir, ckpt, state, loop, splits, p_eval_step, task, log,
                             synthetic=synthetic, steps_per_epoch=steps_per_epoch,
                             param_counts=(n_trainable, n_total), ids=ids,
                             without_baseline=without_baseline)
  return state, summary


def final_evaluation(config, workdir, ckpt, state, loop, splits, p_eval_step, task, log, *,
                     synthetic: bool, steps_per_epoch: int, param_counts: tuple[int, int],
                     ids: dict[str, np.ndarray],
                     without_baseline: dict[str, int] | None = None) -> dict:
  """Evaluates the best-validation-loss checkpoint once on validation and test.

  Writes results.json, the plots, and predictions.npz: per split, the example ids, the
  class probabilities, the task labels and the 4-class labels, for ensembles and composites
  (mammo_jax.ensemble), which combine runs without running their models again. Pair runs
  also record `examples_without_baseline` per split: examples left out of training and of
  every evaluation (their ids are not in predictions.npz either).
  """
  best = ckpt.restore_best(state, loop['best_step'])
  outputs, results = {}, {}
  for split in ('validation', 'test'):
    values, probs, labels = evaluate(p_eval_step, best, splits[split], config.eval_batch_size,
                                     task)
    results[split] = values
    outputs[split] = (probs, labels)
  log.write(loop['best_step'], 'test', results['test'], epoch=loop['best_epoch'],
            checkpoint='best')
  summary = {
      'task': task.name, 'model': config.model.name, 'synthetic_data': synthetic,
      'best_epoch': loop['best_epoch'], 'best_step': loop['best_step'],
      'epochs_run': loop['epoch'], 'steps_run': int(state.step),
      'steps_per_epoch': steps_per_epoch, 'stop_reason': loop['stop_reason'],
      'trainable_params': param_counts[0], 'total_params': param_counts[1],
      'examples': {s: int(len(d['label'])) for s, d in splits.items()},
      **({} if without_baseline is None else {'examples_without_baseline': without_baseline}),
      **results,
  }
  predictions = {}
  for split, (probs, labels) in outputs.items():
    predictions.update({f'{split}_ids': ids[split], f'{split}_probs': probs,
                        f'{split}_labels': labels, f'{split}_label4': splits[split]['label']})
  np.savez(os.path.join(workdir, 'predictions.npz'), **predictions)
  with open(os.path.join(workdir, 'results.json'), 'w') as f:  # last: marks the run finished
    json.dump(summary, f, indent=1, sort_keys=True)
  plots.write_run_plots(workdir, plots.read_metrics(log.path), outputs, task.class_names)
  print(f'Best checkpoint: epoch {loop["best_epoch"]} (step {loop["best_step"]}); validation '
        f'acc {results["validation"]["accuracy"]:.4f}, test acc '
        f'{results["test"]["accuracy"]:.4f}, test AUC {results["test"]["auc"]:.4f}'
        + (' [SYNTHETIC DATA]' if synthetic else ''), flush=True)
  print(f'Results in {os.path.join(workdir, "results.json")}', flush=True)
  return summary
