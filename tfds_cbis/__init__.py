"""tfds_cbis: CBIS-DDSM DICOM downloads turned into TFDS patch and whole-image datasets.

Importing the package registers the TFDS builder `cbis_ddsm` (configs `roi150`, `s10_224`,
`whole_1152x896`, `whole_288x224`) where tensorflow_datasets is installed; without it (a GPU
machine that runs only the model code) the plain modules still import and `Builder` is absent.
TensorFlow itself is imported lazily by TFDS, so the plain modules (dicom, cases, index,
geometry, splits, patches, whole, build_lock, build_plan, build_report, pool, strict_json,
synthetic) stay cheap to import in worker processes.
"""

# The cbis_ddsm builder's version (its RELEASE_NOTES say what each changed); here, importable
# without TFDS, because a run records the dataset version it trained on (mammo_jax.workdir).
VERSION = '1.1.0'

from tfds_cbis.patches import PatchSpec  # noqa: E402  pylint: disable=g-import-not-at-top

try:
  import tensorflow_datasets  # noqa: F401  pylint: disable=unused-import
except ImportError:
  __all__ = ['PatchSpec', 'VERSION']
else:
  from tfds_cbis.cbis_ddsm import Builder, CbisDdsmConfig, WholeImageConfig  # registers cbis_ddsm
  __all__ = ['Builder', 'CbisDdsmConfig', 'PatchSpec', 'VERSION', 'WholeImageConfig']
