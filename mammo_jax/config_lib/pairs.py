"""The Dual and Siamese CNNs' configs (docs/REFERENCE_STUDY.md §2.6-2.7): identical settings."""

import ml_collections

from mammo_jax.config_lib import base


def pair_config(model_name: str, config_file: str, arg: str | None) -> ml_collections.ConfigDict:
  """The study's Dual / Siamese training settings (identical in both notebooks)."""
  smoke = base.parse_smoke_arg(arg, config_file)
  config = base.base_config()
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
  config.augment.update(base.augmentation('D'))
  if smoke:
    base.smoke(config)
  return config
