"""Scratch CNN, four classes (MB/MM/CB/CM): the study's M1-M3 (docs/REFERENCE_STUDY.md §2.2).

Command (the argument picks the model; default m2, the study's best single 4-class model):
  python -m mammo_jax.main --config=configs/scratch4.py --workdir=runs/scratch4
  python -m mammo_jax.main --config=configs/scratch4.py:m3 --workdir=runs/scratch4_m3
  python -m mammo_jax.main --config=configs/scratch4.py:m1,smoke --workdir=/tmp/smoke

The study's published numbers (336 real test patches): config.published. All three:
RMSprop lr 1e-3 (decay 1e-3 for m1, 5e-4 for m2/m3), batch 128, 500 epochs, early stopping
with patience 80 on validation loss, augmentation setting A; the best-validation-loss
checkpoint is the one evaluated on test.
"""

from mammo_jax.config_lib import base

VARIANTS = ('m1', 'm2', 'm3')
# Validation and test accuracy (%).
PUBLISHED = {'m1': (63.55, 57.74), 'm2': (65.42, 61.31), 'm3': (59.81, 61.01)}


def get_config(arg: str | None = None):
  variant, smoke = base.parse_args(arg, VARIANTS, 'm2', 'configs/scratch4.py')
  config = base.base_config()
  config.task = 'four_class'
  config.model.name = f'scratch4_{variant}'
  config.optimizer.decay = 1e-3 if variant == 'm1' else 5e-4
  config.published = base.published(*PUBLISHED[variant])
  if smoke:
    base.smoke(config)
  return config
