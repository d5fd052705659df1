"""Scratch CNN, four classes (MB/MM/CB/CM): the study's M1-M3 (REFERENCE_STUDY.md §2.2).

Command (the argument picks the model; default m2, the study's best single 4-class model):
  python -m mammo_jax.main --config=configs/scratch4.py --workdir=runs/scratch4
  python -m mammo_jax.main --config=configs/scratch4.py:m3 --workdir=runs/scratch4_m3
  python -m mammo_jax.main --config=configs/scratch4.py:m1,smoke --workdir=/tmp/smoke

Study's test accuracy (336 real test patches): m1 57.74, m2 61.31, m3 61.01. All three:
RMSprop lr 1e-3 (decay 1e-3 for m1, 5e-4 for m2/m3), batch 128, 500 epochs, early stopping
with patience 80 on validation loss, augmentation setting A; the best-validation-loss
checkpoint is the one evaluated on test.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = ('m1', 'm2', 'm3')


def get_config(arg: str | None = None):
  variant, smoke = default.parse_args(arg, VARIANTS, 'm2', 'configs/scratch4.py')
  config = default.get_config()
  config.task = 'four_class'
  config.model.name = f'scratch4_{variant}'
  config.optimizer.decay = 1e-3 if variant == 'm1' else 5e-4
  if smoke:
    default.smoke(config)
  return config
