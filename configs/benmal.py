"""Scratch CNN, benign vs malignant (REFERENCE_STUDY.md §2.3): M2's layers with a sigmoid head.

Command (the argument picks the run, i.e. the seed; the study ran three):
  python -m mammo_jax.main --config=configs/benmal.py --workdir=runs/benmal
  python -m mammo_jax.main --config=configs/benmal.py:run3 --workdir=runs/benmal_run3
  python -m mammo_jax.main --config=configs/benmal.py:smoke --workdir=/tmp/smoke

Study's test accuracy (336 real test patches): run1 64.88, run2 63.99, run3 69.05 (run 3 is
the severity half of the composite model). RMSprop lr 1e-3, decay 1e-3, batch 128, the full 500
epochs (the notebook built an EarlyStopping callback but never used it, so patience is 0
here), augmentation setting A; the best-validation-loss checkpoint is evaluated on test.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ('run1', 'run2', 'run3')


def get_config(arg: str | None = None):
  variant, smoke = default.parse_args(arg, VARIANTS, 'run1', 'configs/benmal.py')
  config = default.get_config()
  config.seed = int(variant[3:])
  config.task = 'benign_vs_malignant'
  config.model.name = 'benmal'
  config.optimizer.decay = 1e-3
  config.patience = 0
  if smoke:
    default.smoke(config)
  return config
