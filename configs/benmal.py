"""Scratch CNN, benign vs malignant (docs/REFERENCE_STUDY.md §2.3): M2's layers, a sigmoid
head.

Command (the argument picks the run, i.e. the seed; the study ran three):
  python -m mammo_jax.main --config=configs/benmal.py --workdir=runs/benmal
  python -m mammo_jax.main --config=configs/benmal.py:run3 --workdir=runs/benmal_run3
  python -m mammo_jax.main --config=configs/benmal.py:smoke --workdir=/tmp/smoke

The study's published numbers (336 real test patches): config.published (run 3 is the
severity half of the composite model). RMSprop lr 1e-3, decay 1e-3, batch 128, the full 500
epochs (the notebook built an EarlyStopping callback but never used it, so patience is 0
here), augmentation setting A; the best-validation-loss checkpoint is evaluated on test.
"""

from mammo_jax.config_lib import base

VARIANTS = ('run1', 'run2', 'run3')
# Validation and test accuracy (%).
PUBLISHED = {'run1': (69.91, 64.88), 'run2': (71.59, 63.99), 'run3': (68.97, 69.05)}


def get_config(arg: str | None = None):
  variant, smoke = base.parse_args(arg, VARIANTS, 'run1', 'configs/benmal.py')
  config = base.base_config()
  config.seed = int(variant[3:])
  config.task = 'benign_vs_malignant'
  config.model.name = 'benmal'
  config.optimizer.decay = 1e-3
  config.patience = 0
  config.published = base.published(*PUBLISHED[variant])
  if smoke:
    base.smoke(config)
  return config
