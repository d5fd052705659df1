"""K-fold cross-validation of any training config (mammo_jax.repeats; fields:
mammo_jax.config_lib.repeats). The argument is the config to cross-validate, default
configs/default.py; fold F trains in WORKDIR/fold_F with patient fold F of kfoldK as its test
split (tfds_cbis.splits), and WORKDIR/cv.json gives mean ± SD and the pooled out-of-fold metrics:
  python -m mammo_jax.main --config=configs/cv.py:configs/scratch2.py:exp5 --workdir=runs/cv5
  python -m mammo_jax.main --config=configs/cv.py:configs/scratch2.py:smoke \
      --config.cv.folds=2 --workdir=/tmp/cv_smoke
"""

from mammo_jax.config_lib import loader
from mammo_jax.config_lib import repeats


def get_config(arg: str | None = None):
  return repeats.wrap('cv', arg, loader.project_root(__file__))
