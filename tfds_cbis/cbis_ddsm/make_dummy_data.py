"""Regenerates `dummy_data/`: a tiny synthetic CBIS-DDSM for the builder tests.

Run `python -m tfds_cbis.cbis_ddsm.make_dummy_data` (or `make dummy-data`). The tree is the
NBIA Data Retriever layout with the four CSVs at its root; every synthetic quirk is present.
After regenerating, update the exact split counts in tests/tfds_cbis/test_cbis_ddsm_builder.py,
tests/tfds_cbis/test_whole.py and tests/mammo_jax/test_whole_inputs.py.
"""

import os
import shutil
import sys

from tfds_cbis import synthetic

DUMMY_DIR = os.path.join(os.path.dirname(__file__), 'dummy_data')
# Small enough to commit (a few MB), large enough for every quirk and all three splits.
PARAMS = dict(patients=10, layout='nbia', seed=7, difficulty=0.3, image_shape=(256, 160),
              workers=1)


def main() -> int:
  shutil.rmtree(DUMMY_DIR, ignore_errors=True)
  manifest = synthetic.generate(DUMMY_DIR, **PARAMS)
  images = manifest['images']
  print(f'{DUMMY_DIR}: {len(images)} images, '
        f'{sum(len(i["abnormalities"]) for i in images)} abnormalities')
  return 0


if __name__ == '__main__':
  sys.exit(main())
