"""Runner table: what `python -m mammo_jax.main` (and every ensemble member) does with a config.

  train     train.train_and_evaluate: one model in one workdir (the default);
  stages    pipeline.run: a chain of stages (feature extraction -> fine-tuning ...), each in
            WORKDIR/STAGE; chosen by a config with `pipeline` set;
  ensemble  ensemble.run: members trained or reused, then combined;
  lr_range  lr_range.run: the learning-rate range test;
  cv, repeat  repeats.run: a training config per fold of kfoldK or per seed, with mean ± SD
            and pooled metrics.
Each maps to `run(config, workdir)`; modules are imported when their runner is asked for, so a
config names a runner without importing the others. A new runner is one line here.

`run` is the one way in (main, ensemble members, pipeline stages): it takes the workdir's lock
(mammo_jax.workdir_lock: one run per workdir; process 0 takes it in a run of several
processes, mammo_jax.distributed), then checks the config for its runner
(mammo_jax.config_checks), both before anything else is written or any data is prepared.
When the run ends, the process's compiled programs are released if they crowd its memory
mappings (mammo_jax.compile_cache.release_if_crowded), so a process that runs many members,
stages or folds does not die in the compiler.
"""

from __future__ import annotations

import importlib

import ml_collections

from mammo_jax import compile_cache
from mammo_jax import config_checks
from mammo_jax import distributed

RUNNERS = {
    'train': ('mammo_jax.train', 'train_and_evaluate'),
    'stages': ('mammo_jax.pipeline', 'run'),
    'ensemble': ('mammo_jax.ensemble', 'run'),
    'lr_range': ('mammo_jax.lr_range', 'run'),
    'cv': ('mammo_jax.repeats', 'run'),
    'repeat': ('mammo_jax.repeats', 'run'),
}


def runner_name(config: ml_collections.ConfigDict) -> str:
  """config.runner, with a stage pipeline (config.pipeline set) run by 'stages'."""
  name = config.get('runner', 'train')
  return 'stages' if name == 'train' and config.get('pipeline') else name


def get_runner(name: str):
  if name not in RUNNERS:
    raise ValueError(f'unknown config.runner {name!r}; known: {", ".join(RUNNERS)}')
  module, function = RUNNERS[name]
  return getattr(importlib.import_module(module), function)


def run(config: ml_collections.ConfigDict, workdir: str):
  """Runs config with the runner it names, in workdir; returns what the runner returns."""
  with distributed.hold_workdir(workdir):
    runner = get_runner(runner_name(config))
    config_checks.check(config)
    try:
      return runner(config, workdir)
    finally:
      compile_cache.release_if_crowded()
