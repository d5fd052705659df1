"""tfds_cbis: CBIS-DDSM DICOM downloads turned into TFDS patch datasets.

Importing the package registers the TFDS builder `cbis_ddsm` (configs `roi150`, `s10_224`,
`whole_1152x896`, `whole_288x224`).
TensorFlow itself is imported lazily by TFDS, so the plain modules (dicom, cases, index,
geometry, splits, patches, whole, build_lock, build_plan, build_report, pool, strict_json, synthetic)
stay cheap to import in worker processes.
"""

from tfds_cbis.cbis_ddsm import Builder, CbisDdsmConfig, WholeImageConfig  # registers cbis_ddsm
from tfds_cbis.patches import PatchSpec

__all__ = ['Builder', 'CbisDdsmConfig', 'PatchSpec', 'WholeImageConfig']
