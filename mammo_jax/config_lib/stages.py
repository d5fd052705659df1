"""Multi-stage (pipeline) configs: an experiment's base config plus its stages' overrides.

A pipeline config has three more fields (mammo_jax.pipeline runs and checks them):
  config.pipeline  'fe_hardaug,ft1,ft2': the stages, in order;
  config.stages    one ConfigDict of overrides per stage (any base field, nested);
  config.stage_field_defaults  bookkeeping (JSON): the file's base values of the fields that
                   stages set, to catch command-line changes that would not reach them;
and, where the study published numbers for the stages, config.published holds one entry per
stage: a stage's resolved config gets its own entry as its `published`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import ml_collections

from mammo_jax.config_lib import overrides as overrides_lib

PIPELINE_FIELDS = ('pipeline', 'stages', 'stage_field_defaults')


def make_config(base: ml_collections.ConfigDict, stages: Mapping[str, Mapping],
                chain: tuple[str, ...],
                published: Mapping[str, Mapping] | None = None) -> ml_collections.ConfigDict:
  """base + `pipeline` (the chain) + `stages` (each stage's overrides) [+ `published`]."""
  unknown = [s for s in chain if s not in stages]
  if unknown:
    raise ValueError(f'pipeline stages {unknown} have no overrides; known: {list(stages)}')
  config = ml_collections.ConfigDict(base)
  config.pipeline = ','.join(chain)
  config.stages = ml_collections.ConfigDict({s: dict(stages[s]) for s in chain})
  # The base values of every field some stage sets, as the config file made them: a
  # command-line change of such a field would not reach those stages (stage_configs refuses).
  paths = sorted({p for s in chain for p in overrides_lib.flatten(stages[s])})
  config.stage_field_defaults = json.dumps(
      {p: overrides_lib.get_field(base, p) for p in paths}, sort_keys=True)
  if published:
    config.published = ml_collections.ConfigDict(
        {s: dict(published[s]) for s in chain if s in published})
  return config


def stage_config(base: ml_collections.ConfigDict, overrides: Mapping,
                 published: Mapping | None = None) -> ml_collections.ConfigDict:
  """The resolved config of one stage: base (without pipeline fields) + its overrides, and
  `published` (the stage's own numbers) in place of base's."""
  config = ml_collections.ConfigDict(base.to_dict())
  for field in PIPELINE_FIELDS + ('published',):
    if field in config:
      del config[field]
  overrides = overrides.to_dict() if hasattr(overrides, 'to_dict') else overrides
  overrides_lib.apply_nested(config, overrides, 'stage override')
  if published is not None:
    config.published = dict(published)
  return ml_collections.ConfigDict(config.to_dict())


def stage_published(config: ml_collections.ConfigDict, stage: str) -> dict | None:
  """A pipeline config's published numbers of one stage (None when it has none)."""
  published = config.get('published')
  return published[stage].to_dict() if published and stage in published else None
