"""Multi-stage runs (feature extraction -> fine-tuning ...) as one command.

A pipeline config is an experiment's base config plus two fields:
  config.pipeline  'fe_hardaug,ft1,ft2': the stages, in order;
  config.stages    one ConfigDict of overrides per stage (any base field, nested).
Stage STAGE runs with the base config updated by its overrides, in WORKDIR/STAGE, exactly as
the single-stage config `configs/x.py:STAGE` would; a stage starts from an earlier one with
`init_from='@EARLIER'` (the sibling workdir's best checkpoint). A stage that finished with the
same config is reused, an interrupted one resumes, and one that finished with a different
config is refused (train.train_and_evaluate names the differing fields). Command-line
overrides of base fields (`--config.data.manual_dir=...`) reach every stage; a stage's own
values are overridden with `--config.stages.STAGE.FIELD=...`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import ml_collections

from mammo_jax import train

PIPELINE_FIELDS = ('pipeline', 'stages')


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping,
                    where: str = '') -> None:
  """Sets nested `overrides` on `config` in place; every key must already exist."""
  for key, value in overrides.items():
    path = f'{where}.{key}' if where else key
    if key not in config:
      raise ValueError(f'stage override {path} names no field of the base config')
    if isinstance(value, Mapping):
      apply_overrides(config[key], value, path)
    else:
      config[key] = value


def make_config(base: ml_collections.ConfigDict, stages: Mapping[str, Mapping],
                chain: tuple[str, ...]) -> ml_collections.ConfigDict:
  """base + `pipeline` (the chain) + `stages` (each stage's overrides)."""
  unknown = [s for s in chain if s not in stages]
  if unknown:
    raise ValueError(f'pipeline stages {unknown} have no overrides; known: {list(stages)}')
  config = ml_collections.ConfigDict(base)
  config.pipeline = ','.join(chain)
  config.stages = ml_collections.ConfigDict({s: dict(stages[s]) for s in chain})
  return config


def stage_config(base: ml_collections.ConfigDict,
                 overrides: Mapping) -> ml_collections.ConfigDict:
  """The resolved config of one stage: base (without pipeline fields) + its overrides."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field in PIPELINE_FIELDS:
    if field in config:
      del config[field]
  apply_overrides(config, overrides.to_dict() if hasattr(overrides, 'to_dict') else overrides)
  return ml_collections.ConfigDict(config.to_dict())


def stage_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  names = [s for s in config.pipeline.split(',') if s]
  if not names:
    raise ValueError('config.pipeline names no stage')
  missing = [s for s in names if s not in config.stages]
  if missing:
    raise ValueError(f'config.pipeline names stages {missing} that config.stages lacks')
  return [(s, stage_config(config, config.stages[s])) for s in names]


def finished(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """True when workdir holds a finished run of exactly this config."""
  return (os.path.exists(os.path.join(workdir, 'results.json'))
          and train.same_config(config, workdir))


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or reuses) every stage in order; writes WORKDIR/pipeline.json; returns it."""
  os.makedirs(workdir, exist_ok=True)
  summary = {}
  for name, stage in stage_configs(config):
    stage_dir = os.path.join(workdir, name)
    if finished(stage, stage_dir):
      print(f'=== stage {name}: finished in {stage_dir}; reusing it', flush=True)
      with open(os.path.join(stage_dir, 'results.json')) as f:
        results = json.load(f)
    else:
      print(f'=== stage {name} in {stage_dir}', flush=True)
      _, results = train.train_and_evaluate(stage, stage_dir)
    summary[name] = {
        'workdir': stage_dir, 'best_epoch': results['best_epoch'],
        'epochs_run': results['epochs_run'], 'trainable_params': results['trainable_params'],
        **{f'{split}_{k}': results[split][k] for split in ('validation', 'test')
           for k in ('accuracy', 'auc', 'loss')},
    }
  with open(os.path.join(workdir, 'pipeline.json'), 'w') as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  print(f'{"stage":<12} {"trainable":>11} {"epochs":>7} {"val acc":>8} {"test acc":>9} '
        f'{"test auc":>9}')
  for name, s in summary.items():
    print(f'{name:<12} {s["trainable_params"]:>11,} {s["epochs_run"]:>7} '
          f'{s["validation_accuracy"]:>8.4f} {s["test_accuracy"]:>9.4f} {s["test_auc"]:>9.4f}')
  print(f'Pipeline summary in {os.path.join(workdir, "pipeline.json")}', flush=True)
  return summary
