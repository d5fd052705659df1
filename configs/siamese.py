"""Siamese CNN, mass vs calcification with baseline patches (docs/REFERENCE_STUDY.md §2.7, §4).

Command:
  python -m mammo_jax.main --config=configs/siamese.py --workdir=runs/siamese
  python -m mammo_jax.main --config=configs/siamese.py:smoke --workdir=/tmp/smoke_siamese

The study's published numbers (336 real test pairs): config.published (it ran all 500
epochs; early stopping never triggered).

One shared encoder embeds the abnormality and its baseline patch; the head sees their signed
difference, trained with plain binary cross-entropy on the mass/calc label (no contrastive
loss). Data and training settings are the Dual CNN's (configs/dual.py): pairs via
data.inputs='image+baseline', examples without a baseline left out and counted, RMSprop 1e-3
with decay 1e-3 per update, batch 128, 500 epochs, patience 80, augmentation set D with one
transform per pair.

Assumptions and departures: an epoch is one pass over the training split, not the notebook's
steps_per_epoch = int(0.8 * 2676) // 128 = 16 with 4 validation steps (defect D6), so the
decay's per-epoch effect differs from the notebook's. Validation pairs are not augmented (D2).
"""

from mammo_jax.config_lib import base
from mammo_jax.config_lib import pairs


def get_config(arg: str | None = None):
  config = pairs.pair_config('siamese', 'configs/siamese.py', arg)
  config.published = base.published(None, 86.61)
  return config
