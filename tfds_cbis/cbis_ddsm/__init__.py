"""The `cbis_ddsm` TFDS dataset (see cbis_ddsm_dataset_builder.py)."""

from tfds_cbis.cbis_ddsm.cbis_ddsm_dataset_builder import (Builder, CbisDdsmConfig,
                                                            WholeImageConfig)

__all__ = ['Builder', 'CbisDdsmConfig', 'WholeImageConfig']
