"""Configs of the `cv` and `repeat` runners (mammo_jax.repeats) and their members' configs.

A cv or repeat config is any training config (a single run or a stage pipeline) with
  config.runner      'cv' or 'repeat';
  config.cv.folds    K: member fold_F is the config with data.protocol='kfoldK', data.fold=F
                     (F = 0..K-1; the fold is its test split, tfds_cbis.splits);
  config.repeat.seeds  N: member seed_S is the config with seed=S, S = config.seed ..
                     config.seed + N - 1 (data.protocol as the config has it).
Every other field reaches every member unchanged, so a member's config (and fingerprint) is
exactly that of the same run started on its own, e.g. with --config.data.fold=F.
"""

from __future__ import annotations

import ml_collections

from mammo_jax.config_lib import loader

DEFAULTS = {'cv': {'folds': 5}, 'repeat': {'seeds': 3}}
DEFAULT_SPEC = 'configs/default.py'


def wrap(runner: str, spec: str | None, root: str) -> ml_collections.ConfigDict:
  """The config file `spec` ('configs/scratch2.py:exp5', relative to root) as a `runner`
  config with the runner's default fields."""
  spec = spec or DEFAULT_SPEC
  config = loader.load_config(spec, root)
  inner = config.get('runner', 'train')
  if inner != 'train':
    raise ValueError(f'configs/{runner}.py:{spec}: a {runner} run trains a training config (a '
                     f'single run or a stage pipeline), not a config of the {inner} runner')
  config.runner = runner
  config[runner] = ml_collections.ConfigDict(DEFAULTS[runner])
  return config


def member_configs(config: ml_collections.ConfigDict
                   ) -> list[tuple[str, ml_collections.ConfigDict]]:
  """[(member name, its locked config)] of a cv or repeat config, in training order."""
  runner = config.runner
  fields = config.to_dict()
  del fields['runner'], fields[runner]
  if runner == 'cv':
    k = config.cv.folds
    changes = [(f'fold_{f}', {'data.protocol': f'kfold{k}', 'data.fold': f}) for f in range(k)]
  else:
    seeds = range(config.seed, config.seed + config.repeat.seeds)
    changes = [(f'seed_{s}', {'seed': s}) for s in seeds]
  members = []
  for name, values in changes:
    member = ml_collections.ConfigDict(fields)
    for path, value in values.items():
      *parents, key = path.split('.')
      node = member
      for part in parents:
        node = node[part]
      node[key] = value
    member.lock()
    members.append((name, member))
  return members
