"""Multi-stage runs (feature extraction -> fine-tuning ...) as one command.

A pipeline config (fields: mammo_jax.config_lib.stages, which builds them) is an experiment's
base config plus its stages' overrides. Stage STAGE runs with the base config updated by its
overrides, in WORKDIR/STAGE, exactly as the single-stage config `configs/x.py:STAGE` would; a
stage starts from an earlier one with `init_from='@EARLIER'` (the sibling workdir's best
checkpoint). A stage that finished with the same config is reused, an interrupted one resumes,
and one that finished with a different config is refused (train.train_and_evaluate names the
differing fields). Command-line overrides of base fields (`--config.data.manual_dir=...`)
reach every stage; a field that a stage sets itself is changed with
`--config.stages.STAGE.FIELD=...` (changing it in the base instead is an error naming that
flag). A stage whose init_from run has been re-run since it started from it is refused too
(check_not_stale).
"""

from __future__ import annotations

import json
import os

import ml_collections

from mammo_jax import runners
from mammo_jax import warm_start
from mammo_jax import workdir as workdir_lib
from mammo_jax.config_lib import overrides as overrides_lib
from mammo_jax.config_lib import stages as stages_lib
from mammo_jax.metrics import fmt


def stage_configs(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """[(stage, its resolved config)] in pipeline order, after consistency checks."""
  if not config.get('pipeline') or 'stages' not in config:
    raise ValueError('the stages runner needs config.pipeline (the stages, in order) and '
                     'config.stages; use a config built by config_lib.stages.make_config, '
                     'e.g. configs/vgg16_2.py:pipeline')
  names = [s for s in config.pipeline.split(',') if s]
  if not names:
    raise ValueError('config.pipeline names no stage')
  missing = [s for s in names if s not in config.stages]
  if missing:
    raise ValueError(f'config.pipeline names stages {missing} that config.stages lacks')
  defaults = json.loads(config.stage_field_defaults)
  for name in names:
    overrides = overrides_lib.flatten(config.stages[name].to_dict())
    for path in overrides:
      if path in defaults and overrides_lib.get_field(config, path) != defaults[path]:
        raise ValueError(f'--config.{path} does not reach stage {name}, which sets {path} '
                         f'itself; use --config.stages.{name}.{path}=... instead')
    start = overrides.get('init_from', '')
    if start.startswith('@') and start[1:] in names[names.index(name):]:
      raise ValueError(f'stage {name} starts from {start[1:]}, which config.pipeline '
                       f'({config.pipeline}) does not run before it')
  return [(s, stages_lib.stage_config(config, config.stages[s],
                                      stages_lib.stage_published(config, s)))
          for s in names]


def check_not_stale(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses a stage (finished or interrupted) whose init_from run changed since it started."""
  record = workdir_lib.read_init_from(workdir)
  if not config.init_from or record is None:
    return  # not started yet, or made before records were kept
  source = warm_start.resolve_init_from(config.init_from, workdir)
  recorded = {k: record.get(k) for k in ('best_step', 'config_sha256')}
  current = workdir_lib.run_identity(source) if workdir_lib.is_finished(source) else None
  if current != recorded:
    raise ValueError(f'{workdir} started from a run of {source} that has since been re-run, '
                     f'changed or removed; delete {workdir} to train that stage again from '
                     f'the current one, or use another --workdir')


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or reuses) every stage in order; writes WORKDIR/pipeline.json; returns it."""
  os.makedirs(workdir, exist_ok=True)
  summary = {}
  for name, stage in stage_configs(config):
    stage_dir = os.path.join(workdir, name)
    check_not_stale(stage, stage_dir)
    if workdir_lib.finished_with(stage, stage_dir):
      print(f'=== stage {name}: finished in {stage_dir}; reusing it', flush=True)
      workdir_lib.write_config(stage, stage_dir)  # same fingerprint; refreshes added fields
      results = workdir_lib.read_results(stage_dir)
    else:
      print(f'=== stage {name} in {stage_dir}', flush=True)
      _, results = runners.run(stage, stage_dir)  # the stage's own lock and checks
    summary[name] = {
        'workdir': stage_dir, 'best_epoch': results['best_epoch'],
        'epochs_run': results['epochs_run'], 'trainable_params': results['trainable_params'],
        **{f'{split}_{k}': results[split][k] for split in ('validation', 'test')
           for k in ('accuracy', 'auc', 'loss')},
    }
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.PIPELINE_JSON), summary)
  print(f'{"stage":<12} {"trainable":>11} {"epochs":>7} {"val acc":>8} {"test acc":>9} '
        f'{"test auc":>9}')
  for name, s in summary.items():
    print(f'{name:<12} {s["trainable_params"]:>11,} {s["epochs_run"]:>7} '
          f'{fmt(s["validation_accuracy"]):>8} {fmt(s["test_accuracy"]):>9} '
          f'{fmt(s["test_auc"]):>9}')
  print(f'Pipeline summary in {os.path.join(workdir, workdir_lib.PIPELINE_JSON)}', flush=True)
  return summary
