"""Dual-input CNN, mass vs calcification with baseline patches (docs/REFERENCE_STUDY.md §2.6, §4).

Command:
  python -m mammo_jax.main --config=configs/dual.py --workdir=runs/dual
  python -m mammo_jax.main --config=configs/dual.py:smoke --workdir=/tmp/smoke_dual

The study's published numbers (336 real test pairs): config.published.

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

from mammo_jax.config_lib import base
from mammo_jax.config_lib import pairs


def get_config(arg: str | None = None):
  config = pairs.pair_config('dual', 'configs/dual.py', arg)
  config.published = base.published(None, 87.20)
  return config
