"""Dual-input CNN, mass vs calcification with baseline patches (REFERENCE_STUDY.md §2.6, §4).

Command:
  python -m mammo_jax.main --config=configs/dual.py --workdir=runs/dual
  python -m mammo_jax.main --config=configs/dual.py:smoke --workdir=/tmp/smoke_dual

Study's test accuracy (336 real test pairs): 87.20.

The model gets each abnormality patch with its healthy baseline patch (data.inputs =
'image+baseline'); abnormalities without a baseline are left out of training and evaluation,
and results.json counts them per split (examples_without_baseline). Settings are the
notebook's: RMSprop 1e-3 with Keras decay 1e-3 per update, batch 128, 500 epochs, early
stopping patience 80 on validation loss, augmentation set D (rotation 180, shear 15, zoom 0.2,
flips, reflect), the same random transform for both patches of a pair.

Assumptions and departures: an epoch is one pass over the training split, not the notebook's
steps_per_epoch = 2676 // 128 = 20, which overruns its 2,141 training pairs, and its 4
validation steps (defect D6); so the decay's per-epoch effect and the patience in updates
differ from the notebook's. Validation pairs are not augmented (D2).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # any cwd
from configs import default  # noqa: E402  pylint: disable=g-import-not-at-top


def pair_config(model_name: str, config_file: str, arg: str | None):
  """The study's Dual / Siamese training settings (identical in both notebooks)."""
  # No variants, so not default.parse_args (its message lists variants); same rule as
  # default.py's own argument.
  if arg not in (None, '', 'smoke'):
    raise ValueError(f'{config_file} takes no argument or "smoke", got {arg!r}')
  smoke = arg == 'smoke'
  config = default.get_config()
  config.task = 'mass_vs_calc'
  config.model.name = model_name
  config.model.preprocess = 'unit'  # uint16 / 65535
  config.data.inputs = 'image+baseline'
  config.optimizer.name = 'rmsprop'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.decay = 1e-3
  config.batch_size = config.eval_batch_size = 128
  config.num_epochs = 500
  config.patience = 80
  aug = config.augment  # set D (REFERENCE_STUDY.md §1.7)
  aug.rotation, aug.shear, aug.zoom = 180.0, 15.0, 0.2
  aug.width_shift = aug.height_shift = 0.0
  aug.horizontal_flip = aug.vertical_flip = True
  aug.fill_mode = 'reflect'
  if smoke:
    default.smoke(config)
  return config


def get_config(arg: str | None = None):
  return pair_config('dual', 'configs/dual.py', arg)
