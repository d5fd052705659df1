"""Ensemble configs (mammo_jax.ensemble runs them) and their members' resolved configs.

  config.ensemble.members.NAME.config     'configs/scratch4.py:m1', a config file and argument,
                                          relative to config.ensemble.root;
  config.ensemble.members.NAME.overrides  'num_epochs=5 optimizer.learning_rate=3e-3' (shell
                                          words FIELD=VALUE, nested fields dotted; '' = none);
  config.ensemble.methods   'vote:m1+m2+m3,average:m1+m2+m3+vgg,...': RULE:MEMBER+MEMBER...;
  config.ensemble.grid_step  the weight grid's step (the study's 0.1);
  config.ensemble.root      the project root that holds the ensemble's config file, so that
                            members resolve from any current directory;
  config.data               reaches every member, so all of them see one dataset;
  config.published          the study's published numbers per method name, where it has them;
  config.evaluation         the methods' bootstrap intervals (ci_resamples, ci_seed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import loader
from mammo_jax.config_lib import overrides as overrides_lib

VARIANTS = ('demo', 'study')


def make_config(members: Mapping[str, tuple[str, str]], methods: Sequence[str],
                data: ml_collections.ConfigDict, root: str, grid_step: float = 0.1,
                published: Mapping[str, Mapping] | None = None) -> ml_collections.ConfigDict:
  """An ensemble config: members {name: (config spec, overrides)}, methods, shared data."""
  config = ml_collections.ConfigDict()
  config.runner = 'ensemble'
  config.ensemble = ml_collections.ConfigDict()
  config.ensemble.members = ml_collections.ConfigDict(
      {name: {'config': spec, 'overrides': overrides}
       for name, (spec, overrides) in members.items()})
  config.ensemble.methods = ','.join(methods)
  config.ensemble.grid_step = grid_step
  config.ensemble.root = root
  config.evaluation = base.evaluation()  # the methods' intervals (members use their own)
  config.data = ml_collections.ConfigDict(data.to_dict())
  if published:
    config.published = ml_collections.ConfigDict({m: dict(p) for m, p in published.items()})
  return config


def member_specs(specs: Mapping[str, str], smoke: bool,
                 *overrides: Mapping[str, str]) -> dict[str, tuple[str, str]]:
  """{name: (spec, overrides)} for make_config: ',smoke' appended to each spec when smoke,
  and each member's entries of the `overrides` dicts joined in order."""
  return {name: (spec + (',smoke' if smoke else ''),
                 ' '.join(o[name] for o in overrides if o.get(name)))
          for name, spec in specs.items()}


def get_config(arg: str | None, members: dict, methods: tuple[str, ...], demo_shape: dict,
               demo_training: dict, config_file: str,
               published: Mapping[str, Mapping] | None = None,
               demo_data: Mapping | None = None) -> ml_collections.ConfigDict:
  """An ensemble config file's get_config (config_file: its __file__). `demo` (the default),
  `study`, either with `,smoke`: the study's members as they are (study), or reshaped by
  demo_shape and, unless smoke, sized by demo_training and given demo_data's config.data
  fields (nested, e.g. {'synthetic': {'difficulty': 0.25}}) (demo)."""
  root = loader.project_root(config_file)
  name = os.path.relpath(os.path.abspath(config_file), root)
  variant, smoke = base.parse_args(arg, VARIANTS, 'demo', name)
  overrides = [] if variant == 'study' else [demo_shape] + ([] if smoke else [demo_training])
  specs = member_specs(members, smoke, *overrides)
  data = base.base_config()
  if smoke:
    base.smoke(data)
  elif variant == 'demo' and demo_data:
    overrides_lib.apply_nested(data.data, demo_data, f'{name} demo data')
  return make_config(specs, methods, data.data, root, published=published)


def member_config(name: str, member: ml_collections.ConfigDict,
                  data: ml_collections.ConfigDict, root: str) -> ml_collections.ConfigDict:
  """A member's resolved config: its file (relative to root), the ensemble's data fields,
  its overrides."""
  where = f'ensemble member {name} ({member.config}):'
  config = loader.load_config(member.config, root)
  config.unlock()
  overrides_lib.set_fields(config, overrides_lib.flatten(data.to_dict(), 'data').items(),
                           f'{where} ensemble field')
  words = overrides_lib.parse_words(member.overrides)
  for path, _ in words:
    if path == 'data' or path.startswith('data.'):
      raise ValueError(f'{where} override {path}: members share the ensemble\'s data; set '
                       f'--config.{path}=... on the ensemble instead')
  overrides_lib.set_fields(config, words, f'{where} override')
  config.lock()
  return config
