"""Scratch CNN, mass vs calcification: the study's Exps 0-11 (REFERENCE_STUDY.md §2.1, §4).

Command (the argument picks the experiment; default exp5, the study's best scratch model):
  python -m mammo_jax.main --config=configs/scratch2.py --workdir=runs/scratch2
  python -m mammo_jax.main --config=configs/scratch2.py:exp9 --workdir=runs/scratch2_exp9
  python -m mammo_jax.main --config=configs/scratch2.py:exp5,smoke --workdir=/tmp/smoke

Study's test accuracy (336 real test patches): exp0 77.38, exp1 80.65, exp2 79.76, exp3 85.42,
exp4 87.50, exp5 88.69 (AUC 0.954), exp6 87.80, exp7 87.50, exp8 81.55, exp9 88.10,
exp10 85.42, exp11 85.12.

Where the study is silent (marked [assumed]): Exps 3-4 epoch caps are 500 like the later
notebooks; Exp 3's patience is 40 (its curve suggests it) and 80 from Exp 4 on; Exps 7-11
keep Exp 6's decay of 1e-4; Exp 8's Adam uses Keras's default LR 1e-3; Exp 9's "small" L2
is 1e-4 on every kernel. An epoch is one pass over the training split, not the notebooks'
inconsistent 16 or 20 steps (defect D6).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top

VARIANTS = tuple(f'exp{i}' for i in range(12))


def get_config(arg: str | None = None):
  variant, smoke = default.parse_args(arg, VARIANTS, 'exp5', 'configs/scratch2.py')
  exp = int(variant[3:])
  config = default.get_config()
  config.task = 'mass_vs_calc'
  config.model.name = f'scratch2_{variant}'
  config.optimizer.decay = 0.0
  if exp <= 2:  # batch 32, 100 epochs, no early stopping
    config.batch_size = config.eval_batch_size = 32
    config.num_epochs = 100
    config.patience = 0
    if exp < 2:
      config.augment.rotation = config.augment.shear = config.augment.zoom = 0.0
      config.augment.horizontal_flip = config.augment.vertical_flip = False
  else:
    config.patience = 40 if exp == 3 else 80
    config.optimizer.decay = {5: 1e-3}.get(exp, 1e-4 if exp >= 6 else 0.0)
  if exp == 8:
    config.optimizer.name = 'adam'
  if exp == 9:
    config.l2 = 1e-4
  if smoke:
    default.smoke(config)
  return config
