"""Shen et al.'s whole-image classifier (docs/SHEN_2019.md), for configs/whole.py.

The backbone of a finished S10 patch run (configs/shen_patch.py) without its head, Shen's
convolutional top, global average pooling and a 2-way softmax (models/whole.py), trained on
one image per breast view (cbis_ddsm/whole_1152x896: BENIGN / MALIGNANT, task whole_image) in
two stages, each in WORKDIR/STAGE:
  top  only the new layers (model.trainable='top,logits'), from the patch run's backbone
       (init_from the S10 run's last stage: the backbone is loaded strictly, the patch head
       left out);
  all  every layer, from the first stage's best checkpoint.
The best checkpoint of each stage is the one with the highest validation AUC; the final
evaluation adds the AUC with horizontal-flip test-time augmentation. The demo (and `smoke`)
trains its own S10 patch classifier first, as stage `patch` (DEMO_CHAIN).
"""

from __future__ import annotations

import ml_collections

from mammo_jax.config_lib import base
from mammo_jax.config_lib import shen
from mammo_jax.config_lib import stages as stages_lib

VARIANTS = ('resnet50', 'vgg16', 'demo')
CHAIN = ('top', 'all')
TRAINABLE = {'top': 'top,logits', 'all': 'all'}
# Where stage `top` looks for the S10 patch run (shen_patch's last stage) by default; set
# --config.stages.top.init_from=... for another.
PATCH_RUN = {'resnet50': 'runs/shen_resnet50/all', 'vgg16': 'runs/shen_vgg16/all'}
# Adam; learning rates and epochs per stage. Unverified: recalled from the paper (Adam,
# batch 2, 1e-4 for the new top then 1e-5 for everything, about 50 epochs in all); the split
# of the epochs between the stages is this config's choice.
LEARNING_RATES = {'top': 1e-4, 'all': 1e-5}
EPOCHS = {'top': 10, 'all': 40}
BATCH_SIZE = 2
# Early stopping: epochs without a better validation AUC. 10 is their INbreast script's
# patience (on the validation loss there); the CBIS-DDSM value is unverified.
PATIENCE = 10

# The demo follows Shen's recipe at CPU scale: stage `patch` trains the S10 patch classifier
# `small` (the whole_small backbone, pooling and Dense(5)) from random weights on the synthetic
# CBIS-DDSM's S10 patches at the whole images' pixel scale (a 224-px patch of the 1152x896
# image is 56 px of the 288x224 one), then `top` and `all` train whole_small on its backbone.
# The synthetic set is easier than its default (difficulty 0.5): at 0.25 the patch classifier
# reached test macro AUC 0.92 in 6 epochs (0.82 in 3 at 0.5), the whole-image model still only
# 0.61 (README "Whole mammograms").
DEMO_PATIENTS = 160
DEMO_DIFFICULTY = 0.25
DEMO_PATCH_SIZE = 56
DEMO_CHAIN = ('patch',) + CHAIN
DEMO_LEARNING_RATES = {'patch': 1e-3, 'top': 1e-3, 'all': 1e-4}
DEMO_EPOCHS = {'patch': 6, 'top': 8, 'all': 8}


def base_config(variant: str) -> ml_collections.ConfigDict:
  """Shen's settings shared by both stages."""
  config = base.base_config()
  config.task = 'whole_image'
  config.data.name = 'cbis_ddsm/whole_1152x896'
  config.model.name = f'whole_{variant}'
  config.model.preprocess = 'shen'
  config.model.dropout = 0.0  # add_top_layers' default; the scripts' value was not read
  config.optimizer.name = 'adam'
  config.optimizer.decay = 0.0
  config.class_balance = 'batch'
  config.augment = ml_collections.ConfigDict(shen.AUGMENT)
  config.batch_size = BATCH_SIZE
  config.eval_batch_size = 8
  config.checkpoint_metric = 'auc'
  config.patience = PATIENCE
  config.evaluation.flip_tta = True
  config.evaluation.localisation = True  # pointing game and test heatmaps (localisation.json)
  config.log_every_steps = 50
  return config


def stage_overrides(learning_rates: dict, epochs: dict, patch_run: str) -> dict:
  start = {'top': patch_run, 'all': '@top'}
  return {s: {'model': {'trainable': TRAINABLE[s]}, 'init_from': start[s],
              'optimizer': {'learning_rate': learning_rates[s]}, 'num_epochs': epochs[s]}
          for s in CHAIN}


def parse_arg(arg: str | None, config_file: str) -> tuple[str, bool]:
  """'[VARIANT][,smoke]' -> (variant, smoke); 'smoke' alone is the demo at the smoke size."""
  parts = [p for p in (arg or '').split(',') if p]
  smoke = 'smoke' in parts
  rest = [p for p in parts if p != 'smoke']
  if len(rest) > 1 or (rest and rest[0] not in VARIANTS):
    raise ValueError(f'{config_file} takes one of {", ".join(VARIANTS)} (default '
                     f'{VARIANTS[0]}), optionally with ",smoke", or "smoke"; got {arg!r}')
  return (rest[0] if rest else 'demo' if smoke else VARIANTS[0]), smoke


def get_config(arg: str | None, config_file: str) -> ml_collections.ConfigDict:
  variant, smoke = parse_arg(arg, config_file)
  if variant != 'demo' and not smoke:
    config = base_config(variant)
    overrides = stage_overrides(LEARNING_RATES, EPOCHS, PATCH_RUN[variant])
    return stages_lib.make_config(config, overrides, CHAIN)
  # The demo, and any variant at the smoke size: synthetic 288x224 images, random weights.
  config = base_config('small' if variant == 'demo' else variant)
  config.data.name = 'cbis_ddsm/whole_288x224'
  config.data.synthetic.patients = DEMO_PATIENTS
  config.batch_size = 16
  config.eval_batch_size = 32
  config.patience = 0
  config.log_every_steps = 10
  epochs = DEMO_EPOCHS
  if smoke:
    base.smoke(config)  # the tests' shared synthetic set (difficulty 0.5)
    epochs = {s: config.num_epochs for s in DEMO_CHAIN}
  elif variant == 'demo':
    config.data.synthetic.difficulty = DEMO_DIFFICULTY
  if variant != 'demo':
    return stages_lib.make_config(config, stage_overrides(DEMO_LEARNING_RATES, epochs, ''), CHAIN)
  overrides = stage_overrides(DEMO_LEARNING_RATES, epochs, '@patch')
  overrides['patch'] = {
      'task': 'five_class', 'data': {'name': 'cbis_ddsm/s10_224', 'image_size': DEMO_PATCH_SIZE},
      'model': {'name': 'small', 'trainable': 'all'}, 'init_from': '',
      'optimizer': {'learning_rate': DEMO_LEARNING_RATES['patch']},
      'num_epochs': epochs['patch'], 'checkpoint_metric': 'loss',
      # No localisation: its heatmaps take ResNet50/VGG16 patch classifiers, not `small`.
      'evaluation': {'flip_tta': False, 'localisation': False}}
  return stages_lib.make_config(config, overrides, DEMO_CHAIN)
