"""A fresh run's starting parameters: another run's best checkpoint, or pretrained weights.

`config.init_from` (a workdir, or '@STAGE' for the sibling workdir STAGE, which is how pipeline
stages chain) restores every parameter and batch statistic of that run's best checkpoint (a
whole-image model from a run of another model, an S10 patch classifier: its backbone only); it
takes precedence over `config.model.pretrained`, which the model family's own loader merges
(models.REGISTRY's `family`: `check_pretrained(spec)` and `load(variables, spec, ...)`,
{'params', 'batch_stats'?} in and out). Merges
are strict: names or shapes that differ raise, listing the differences and the fix.
"""

from __future__ import annotations

import os

import ml_collections

from mammo_jax import checkpointing
from mammo_jax import distributed
from mammo_jax import models
from mammo_jax import workdir as workdir_lib
from mammo_jax.models import whole


def resolve_init_from(init_from: str, workdir: str) -> str:
  """'@STAGE' -> the sibling workdir STAGE (pipeline stages live side by side)."""
  if init_from.startswith('@'):
    return os.path.join(os.path.dirname(os.path.abspath(workdir)), init_from[1:])
  return init_from


def _family(config: ml_collections.ConfigDict):
  family = models.family_of(config.model.name)
  if family is None:
    loaders = sorted(n for n, e in models.REGISTRY.items() if e.family)
    raise ValueError(f'model.pretrained applies to models with pretrained weights '
                     f'({", ".join(loaders)}), not {config.model.name}')
  return family


def check_sources(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Fails fast, before data preparation, on a fresh run's missing or unusable start."""
  if config.model.pretrained:
    family = _family(config)
  if workdir_lib.has_checkpoint(workdir):
    return  # resuming: the checkpoint holds the starting point already
  if config.init_from:
    source = resolve_init_from(config.init_from, workdir)
    if not workdir_lib.is_finished(source):
      raise FileNotFoundError(
          f'init_from={config.init_from}: {source} holds no finished run (no results.json). '
          f'Run that stage to the end first, in that workdir, or run the whole chain with '
          f'the config\'s :pipeline argument.')
  elif config.model.pretrained:
    family.check_pretrained(config.model.pretrained)


def _merge(target, loaded, source: str, fix: str, keep: str | None = None):
  """Strict merge whose error names where the values came from and what to change."""
  from mammo_jax.weights import merge  # pylint: disable=g-import-not-at-top
  try:
    return merge.merge_params(target, loaded, keep=keep)
  except ValueError as e:
    raise ValueError(f'{source}: {e}\n{fix}') from None


def _patch_backbone(config: ml_collections.ConfigDict, source: str) -> str | None:
  """The backbone subtree to load when a whole-image model starts from another model's run."""
  backbone = whole.backbone_of(models.get_model(config.model.name))
  source_model = workdir_lib.read_config(source).get('model', {}).get('name')
  return backbone if backbone and source_model != config.model.name else None


def _load_backbone(backbone: str, params, batch_stats, best_params, best_stats, what: str):
  """The patch run's `backbone` parameters and statistics, strictly; the rest (Shen's top, the
  output layer) keeps its initialisation, and the patch run's head is left out."""
  fix = (f'A whole-image model with the {backbone} backbone starts from an S10 patch run of '
         f'model.name={backbone} (configs/shen_patch.py:{backbone}); compare its config.json.')
  if backbone not in best_params:
    raise ValueError(f'{what}: that run has no {backbone} backbone (its parameters: '
                     f'{", ".join(sorted(best_params))}). {fix}')
  keep = f'^(?!{backbone}/)'
  params = _merge(params, {backbone: best_params[backbone]}, what, fix, keep)
  if batch_stats is not None and backbone in batch_stats:
    loaded = (best_stats or {}).get(backbone)
    if loaded is None:
      raise ValueError(f'{what}: that run\'s {backbone} has no batch statistics. {fix}')
    batch_stats = _merge(batch_stats, {backbone: loaded}, what, fix, keep)
  return params, batch_stats


def warm_start(config: ml_collections.ConfigDict, workdir: str, state):
  """state with its starting parameters replaced as config.init_from or model.pretrained say."""
  params, batch_stats = state.params, state.batch_stats
  if config.init_from:
    source = os.path.abspath(resolve_init_from(config.init_from, workdir))
    best_params, best_stats, best_step = checkpointing.best_variables(source)
    what = f'init_from={config.init_from} ({source}, best step {best_step})'
    fix = ('The model (model.name, model.fc, the task) must be the one that run trained; '
           'compare its config.json.')
    backbone = _patch_backbone(config, source)
    if backbone:
      params, batch_stats = _load_backbone(backbone, params, batch_stats, best_params,
                                           best_stats, what)
    else:
      params = _merge(params, best_params, what, fix)
      if (batch_stats is None) != (best_stats is None):
        raise ValueError(f'{what}: one of the two models has batch norm and the other not. '
                         f'{fix}')
      if batch_stats is not None:
        batch_stats = _merge(batch_stats, best_stats, what, fix)
    print(f'{"The " + backbone + " backbone" if backbone else "Parameters"} initialised from '
          f'the best checkpoint of {source} (step {best_step})', flush=True)
    workdir_lib.write_init_from(workdir, source)
  elif config.model.pretrained:
    cache = os.path.join(config.data.cache_dir, 'weights') if config.data.cache_dir else None
    variables = {'params': params}
    if batch_stats is not None:
      variables['batch_stats'] = batch_stats
    # Process 0 first: a file it downloads into a shared cache is there for the others.
    variables, meta = distributed.main_first(
        _family(config).load, variables, config.model.pretrained,
        preprocess=config.model.preprocess, cache_dir=cache, dont_load=config.model.dont_load)
    params, batch_stats = variables['params'], variables.get('batch_stats')
    print(f'{config.model.name} initialised from {config.model.pretrained} '
          f'({meta.get("format")}, source sha256 {str(meta.get("source_sha256"))[:12]})',
          flush=True)
  return state.replace(params=params, batch_stats=batch_stats)
