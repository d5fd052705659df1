"""Shared by configs/ensemble2.py, ensemble4.py and composite4.py (not a config itself)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top
from mammo_jax import ensemble  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ('demo', 'study')


def get_config(arg: str | None, members: dict, methods: tuple[str, ...], demo_shape: dict,
               demo_training: dict, config_file: str):
  """`demo` (the default), `study`, either with `,smoke`: the study's members as they are
  (study), or reshaped by demo_shape and, unless smoke, sized by demo_training (demo)."""
  variant, smoke = default.parse_args(arg, VARIANTS, 'demo', config_file)
  overrides = [] if variant == 'study' else [demo_shape] + ([] if smoke else [demo_training])
  specs = ensemble.member_specs(members, smoke, *overrides)
  data = default.get_config('smoke' if smoke else None).data
  return ensemble.make_config(specs, methods, data)
