"""Synthetic CBIS-DDSM: mammogram-like DICOMs, masks, crops and CSVs in the real on-disk format.

`generate` writes a small, fully deterministic stand-in for the CBIS-DDSM release so the
builder, its tests and benchmarks can run without the 163 GB download:

* the four case-description CSVs, byte-for-byte in the TCIA format (CRLF, one quoted path
  cell ending in a bare LF per row, `breast density` vs `breast_density`, `N/A`);
* a DICOM tree in the classic UID layout or the current NBIA Data Retriever layout;
* the data quirks a reader must survive (crop/mask swapped, two series per abnormality,
  masks of another size, blank SeriesDescription, several abnormalities per image,
  patients crossing the official split, study folders without `NA`);
* images in which mass vs calcification is easy and benign vs malignant is as hard as the
  `difficulty` knob says (see `plan._blend_score`).

Randomness comes from `np.random.default_rng` streams keyed by the seed: one stream plans
the dataset (patients, labels, quirks, UIDs), and image i is rendered from its own stream
(seed, 1, i). So the output does not depend on worker count or order, and the layout only
changes paths. Only numpy, scipy and pydicom are used, so worker processes stay light.

The modules, in the order a release is made: `plan` (patients, lesions, labels, quirks),
`naming` (UIDs, dates, CSV and disk paths of both layouts), `render` (pixels), `write` (DICOM
files per image, CSVs, manifest), `generator` (`generate`: the above, with worker processes)
and `cli` (`python -m tfds_cbis.synthetic`, `summary`).
"""

from tfds_cbis.synthetic.cli import main, summary
from tfds_cbis.synthetic.generator import DEFAULT_IMAGE_SHAPE, DEFAULT_PATIENTS, generate
from tfds_cbis.synthetic.naming import (CROP_DESCRIPTION, FULL_DESCRIPTION, LAYOUTS,
                                        MASK_DESCRIPTION, UID_ROOT)
from tfds_cbis.synthetic.plan import CSV_FILES, ROW_QUIRKS
from tfds_cbis.synthetic.write import CSV_HEADERS, MANIFEST_NAME

__all__ = [
    'CROP_DESCRIPTION', 'CSV_FILES', 'CSV_HEADERS', 'DEFAULT_IMAGE_SHAPE', 'DEFAULT_PATIENTS',
    'FULL_DESCRIPTION', 'LAYOUTS', 'MANIFEST_NAME', 'MASK_DESCRIPTION', 'ROW_QUIRKS',
    'UID_ROOT', 'generate', 'main', 'summary',
]
