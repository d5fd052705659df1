"""Fields shared by every mammo_jax experiment (mammo_jax.config_lib.base), as a runnable config.

Experiment configs (scratch2.py, scratch4.py, benmal.py, ...) start from these fields. On its own
this file trains the study's best 2-class scratch CNN, Exp 5, with the study's settings (and
configs/scratch2.py:exp5's published numbers):
  python -m mammo_jax.main --config=configs/default.py --workdir=runs/default
  python -m mammo_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke
  python -m mammo_jax.main --config=configs/scratch2.py --workdir=runs/real \
      --config.data.manual_dir=/data/tcia/CBIS-DDSM --config.data.data_dir=gs://bucket/tfds

With `data.manual_dir` empty the run uses the synthetic CBIS-DDSM of `tfds_cbis.synthetic`,
generated and built once into `data.cache_dir`, and says so loudly: such results say nothing
about real mammograms.
"""

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import loader


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  smoke = base.parse_smoke_arg(arg, 'configs/default.py')
  config = base.base_config()
  exp5 = loader.load_config('configs/scratch2.py:exp5', loader.project_root(__file__))
  config.published = exp5.published
  if smoke:
    base.smoke(config)
  return config
