"""Config checks that run before any data is prepared: `check(config)`, called by runners.run.

Each failure is one ConfigError (a ValueError) line naming the field and the values it
accepts. What is checked: batch sizes (positive multiples of the local device count), the
training numbers (learning rate, epochs, steps, patience, logging and checkpoint cadence) and
every field with a fixed set of values, against the registries that define them. A pipeline
config is checked stage by stage, an ensemble member by member (its resolved config, before
any member trains), an LR range test against its own fields. Checks that need the model or
the data (a pair model's inputs, pretrained weights) stay where those are built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import ml_collections

from mammo_jax import augment
from mammo_jax import evaluators
from mammo_jax import input_pipeline
from mammo_jax import models
from mammo_jax import optimizers
from mammo_jax import parallel
from mammo_jax import preprocessing
from mammo_jax import tasks
from mammo_jax.models import layers
from tfds_cbis import splits
from tfds_cbis.synthetic import naming as synthetic_naming


class ConfigError(ValueError):
  pass


def enum_fields() -> dict[str, tuple[str, ...]]:
  """Fields with a fixed set of values -> the accepted values."""
  return {
      'task': tuple(tasks.TASKS),
      'model.name': tuple(sorted(models.REGISTRY)),
      'model.preprocess': preprocessing.PREPROCESS_MODES,
      'model.conv_impl': ('auto',) + layers.CONV_IMPLS,
      'optimizer.name': tuple(optimizers.MAKERS),
      'evaluator': tuple(evaluators.EVALUATORS),
      'augment.fill_mode': augment.FILL_MODES,
      'data.inputs': input_pipeline.INPUTS,
      'class_balance': tasks.CLASS_BALANCE,
      'checkpoint_metric': ('loss', 'auc'),
      'data.synthetic.layout': synthetic_naming.LAYOUTS,
  }


def _get(config: ml_collections.ConfigDict, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(config, field: str, accepts, accepted: str) -> None:
  value = _get(config, field)
  if not (_is_number(value) and accepts(value)):
    raise ConfigError(f'config.{field}={value!r}: accepted values are {accepted}; set '
                      f'--config.{field}=...')


def check_enums(config: ml_collections.ConfigDict,
                fields: Iterable[str] | None = None) -> None:
  table = enum_fields()
  for field in fields or table:
    value = _get(config, field)
    if value not in table[field]:
      raise ConfigError(f'config.{field}={value!r} is not known; accepted values: '
                        f'{", ".join(table[field])}')


def check_batch_sizes(config: ml_collections.ConfigDict, *fields: str) -> None:
  for field in fields:
    try:
      parallel.check_batch_size(config[field], field)
    except ValueError as e:
      raise ConfigError(f'config.{e}') from None


def check_training(config: ml_collections.ConfigDict) -> None:
  """A run of the training runner (one model; a stage)."""
  check_enums(config)
  try:
    tasks.get_task(config.task).check_dataset(config.data.name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  check_batch_sizes(config, 'batch_size', 'eval_batch_size')
  _number(config, 'grad_accum_steps', lambda v: v >= 1 and v == int(v), 'integers >= 1')
  if config.batch_size % (parallel.device_count() * config.grad_accum_steps):
    raise ConfigError(f'config.grad_accum_steps={config.grad_accum_steps} does not divide the '
                      f'per-device batch (batch_size={config.batch_size} over '
                      f'{parallel.device_count()} devices); set a batch_size that is a multiple '
                      f'of devices x grad_accum_steps')
  _number(config, 'data.image_size', lambda v: v == 0 or v >= 1 and v == int(v),
          '0 (as stored) or integers >= 1')
  _number(config, 'optimizer.learning_rate', lambda v: v > 0, 'numbers > 0')
  _number(config, 'optimizer.decay', lambda v: v >= 0, 'numbers >= 0')
  _number(config, 'num_epochs', lambda v: v > 0 and v == int(v), 'integers > 0')
  _number(config, 'num_train_steps', lambda v: v == -1 or v > 0 and v == int(v),
          '-1 (no cap) or integers > 0')
  _number(config, 'patience', lambda v: v >= 0 and v == int(v),
          'integers >= 0 (0: no early stopping)')
  _number(config, 'log_every_steps', lambda v: v > 0 and v == int(v), 'integers > 0')
  _number(config, 'checkpoint_every_steps', lambda v: v >= 0 and v == int(v),
          'integers >= 0 (0: at every epoch end)')
  check_evaluation(config)
  check_protocol(config)


def check_evaluation(config: ml_collections.ConfigDict) -> None:
  _number(config, 'evaluation.ci_resamples', lambda v: v >= 2000 and v == int(v),
          'integers >= 2000 (a 95 % percentile interval needs thousands)')


def check_protocol(config: ml_collections.ConfigDict) -> None:
  """data.protocol names a split protocol and data.fold one of its folds."""
  try:
    k = splits.parse_protocol(config.data.protocol)
  except ValueError as e:
    raise ConfigError(f'config.data.protocol: {e}') from None
  _number(config, 'data.fold', lambda v: v == int(v) and 0 <= v < (k or 1),
          f'integers 0..{k - 1} (the test fold)' if k else f'0 (protocol {config.data.protocol} '
          'has no folds)')


def check_lr_range(config: ml_collections.ConfigDict) -> None:
  """An LR range test: its own fields (it ignores optimizer.* and the training numbers)."""
  from mammo_jax import lr_range  # pylint: disable=g-import-not-at-top  (matplotlib: lazily)
  check_enums(config, [f for f in enum_fields() if f != 'optimizer.name'])
  check_batch_sizes(config, 'batch_size')
  for name in lr_range.optimizer_names(config):
    _number(config, f'lr_range.start_lrs.{name}', lambda v: v > 0, 'numbers > 0')
  _number(config, 'lr_range.factor', lambda v: v > 1, 'numbers > 1 (the LR grows each epoch)')
  _number(config, 'lr_range.max_epochs', lambda v: v > 0 and v == int(v), 'integers > 0')
  _number(config, 'lr_range.smooth_window', lambda v: v > 0 and v == int(v), 'integers > 0')
  _number(config, 'lr_range.suggest_divisor', lambda v: v > 0, 'numbers > 0')


def check_ensemble(config: ml_collections.ConfigDict) -> None:
  """Every member the methods use, as resolved (config file, data, overrides)."""
  from mammo_jax import ensemble  # pylint: disable=g-import-not-at-top  (it imports runners)
  from mammo_jax.config_lib import ensembles  # pylint: disable=g-import-not-at-top
  members = config.ensemble.members
  methods = ensemble.parse_methods(config.ensemble.methods, list(members.keys()))
  for name in dict.fromkeys(m for method in methods for m in method.members):
    member = ensembles.member_config(name, members[name], config.data, config.ensemble.root)
    try:
      check(member)
    except ConfigError as e:
      raise ConfigError(f'ensemble member {name} ({members[name].config}): {e}') from None
  check_evaluation(config)


def check_stages(config: ml_collections.ConfigDict) -> None:
  from mammo_jax import pipeline  # pylint: disable=g-import-not-at-top
  for name, stage in pipeline.stage_configs(config):
    try:
      check_training(stage)
    except ConfigError as e:
      raise ConfigError(f'stage {name}: {e}') from None


def check_repeats(config: ml_collections.ConfigDict) -> None:
  """A cv or repeat config: its count, then every member's config."""
  from mammo_jax.config_lib import repeats  # pylint: disable=g-import-not-at-top
  if config.runner == 'cv':
    _number(config, 'cv.folds', lambda v: v >= 2 and v == int(v), 'integers >= 2')
    if config.data.protocol != 'official':
      raise ConfigError(f'config.data.protocol={config.data.protocol!r}: the cv runner sets '
                        'it to kfoldK per fold itself (K = config.cv.folds); leave it official')
  else:
    _number(config, 'repeat.seeds', lambda v: v >= 1 and v == int(v), 'integers >= 1')
  for name, member in repeats.member_configs(config):
    try:
      check(member)
    except ConfigError as e:
      raise ConfigError(f'{config.runner} member {name}: {e}') from None


CHECKS = {'train': check_training, 'stages': check_stages, 'ensemble': check_ensemble,
          'lr_range': check_lr_range, 'cv': check_repeats, 'repeat': check_repeats}


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first invalid field of config, for the runner it names."""
  from mammo_jax import runners  # pylint: disable=g-import-not-at-top  (runners imports us)
  name = runners.runner_name(config)
  if name in CHECKS:  # an unknown runner is named by runners.get_runner
    CHECKS[name](config)
