"""Any training config trained with N seeds (mammo_jax.repeats; fields:
mammo_jax.config_lib.repeats). The argument is the config to repeat, default
configs/default.py; seed S trains in WORKDIR/seed_S (S = config.seed .. config.seed + N - 1),
and WORKDIR/repeat.json gives mean ± SD and the metrics of the seeds' pooled predictions:
  python -m mammo_jax.main --config=configs/repeat.py:configs/scratch2.py:exp5 --workdir=runs/r3
  python -m mammo_jax.main --config=configs/repeat.py:configs/scratch2.py:smoke \
      --config.repeat.seeds=2 --workdir=/tmp/repeat_smoke
"""

from mammo_jax.config_lib import loader
from mammo_jax.config_lib import repeats


def get_config(arg: str | None = None):
  return repeats.wrap('repeat', arg, loader.project_root(__file__))
