"""The study's learning-rate range test per optimizer (docs/REFERENCE_STUDY.md §2.11).

Command (the argument picks the optimizer; default all, each swept into WORKDIR/<optimizer>):
  python -m mammo_jax.main --config=configs/lr_range.py --workdir=runs/lr_range
  python -m mammo_jax.main --config=configs/lr_range.py:adam --workdir=runs/lr_range_adam
  python -m mammo_jax.main --config=configs/lr_range.py:rmsprop,smoke --workdir=/tmp/lr_smoke

The LR of epoch e (0-based) is start_lr x factor^e, for up to max_epochs; a sweep stops at the
first epoch whose mean training loss is above stop_above after an earlier epoch went below
stop_below. Outputs and the suggestion rule: mammo_jax/lr_range.py.

The study's published result per optimizer (training loss on the real data, mass vs
calcification: epochs run, minimum loss and its LR from its logs, the LR it chose for the
100-epoch comparison): config.published, which lr_range.json repeats beside ours.

Model: Exp 4's C32-C64-C128 + D48 without dropout (1,868,385 parameters); augmentation set E
(set A without shear); batch 128; Keras's optimizer defaults (SGD without momentum). Where we
differ from the study: an epoch is one pass over the training split in full batches, not its
fixed 20 steps (defect D6); a non-finite loss also ends a sweep (Keras would go on with NaNs).
No validation: the test watches the training loss only.
"""

import ml_collections

from mammo_jax.config_lib import base

OPTIMIZERS = ('sgd', 'rmsprop', 'adam', 'nadam')
START_LRS = {'sgd': 1e-3, 'rmsprop': 1e-5, 'adam': 1e-6, 'nadam': 1e-6}
PUBLISHED = {
    'sgd': {'epochs_run': 60, 'min_loss': 0.586, 'lr_at_min_loss': 0.129, 'chosen_lr': 3e-2},
    'rmsprop': {'epochs_run': 50, 'min_loss': 0.497, 'lr_at_min_loss': 2.3e-4,
                'chosen_lr': 1e-4},
    'adam': {'epochs_run': 83, 'min_loss': 0.385, 'lr_at_min_loss': 2.5e-4, 'chosen_lr': 1e-4},
    'nadam': {'epochs_run': 86, 'min_loss': 0.401, 'lr_at_min_loss': 1.9e-4,
              'chosen_lr': 1e-4},
}


def get_config(arg: str | None = None):
  variant, smoke = base.parse_args(arg, OPTIMIZERS + ('all',), 'all', 'configs/lr_range.py')
  config = base.base_config()
  config.runner = 'lr_range'
  config.task = 'mass_vs_calc'
  config.model.name = 'scratch2_exp4'  # dropout removed by lr_range.dropout
  config.augment.update(base.augmentation('E'))
  # The training runner's fields that the sweep replaces (kept consistent for config.json).
  config.optimizer.name = variant if variant != 'all' else 'rmsprop'
  config.optimizer.decay = 0.0
  config.patience = 0

  config.lr_range = lr = ml_collections.ConfigDict()
  lr.optimizers = ','.join(OPTIMIZERS) if variant == 'all' else variant  # comma-separated
  lr.start_lrs = ml_collections.ConfigDict(START_LRS)  # every optimizer's, used or not
  lr.factor = 1.1  # LR multiplier per epoch
  lr.max_epochs = 300
  lr.stop_below = 0.60  # arms the stop rule
  lr.stop_above = 0.69  # then stops the sweep (~ln 2, chance level)
  lr.dropout = 0.0  # the study's LR model has none
  # The suggestion: LR at the minimum of the running median (this many epochs, centred) of
  # the training loss, divided by suggest_divisor (why 3: mammo_jax/lr_range.py).
  lr.smooth_window = 5
  lr.suggest_divisor = 3.0
  config.num_epochs = lr.get_ref('max_epochs')  # one value, whichever is overridden
  config.published = PUBLISHED  # every optimizer's, swept or not
  if smoke:
    base.smoke(config)
    lr.max_epochs = 3
  return config
