"""`python -m tfds_cbis.synthetic`: write a synthetic release and print its `summary`."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from tfds_cbis.synthetic import naming
from tfds_cbis.synthetic.generator import DEFAULT_IMAGE_SHAPE, DEFAULT_PATIENTS, generate


def summary(manifest: dict) -> str:
  """One paragraph: counts per official split and class, and the quirks present."""
  c = manifest['counts']
  parts = []
  for split, s in c['per_split'].items():
    parts.append(
        f'{split}: {s["patients"]} patients, {s["images"]} images, {s["abnormalities"]} '
        f'abnormalities (benign/malignant calc {s["BENIGN_CALCIFICATION"]}/'
        f'{s["MALIGNANT_CALCIFICATION"]}, mass {s["BENIGN_MASS"]}/{s["MALIGNANT_MASS"]})')
  quirks = ', '.join(f'{k} {v}' for k, v in c['quirks'].items())
  h, w = manifest['image_shape']
  return (f'Synthetic CBIS-DDSM ({manifest["layout"]} layout, seed {manifest["seed"]}, '
          f'difficulty {manifest["difficulty"]}, {h}x{w}): {c["patients"]} patients, '
          f'{c["images"]} images, {c["abnormalities"]} abnormalities, {c["files"]} DICOM '
          f'files. ' + '; '.join(parts) + f'. Quirks: {quirks}.')


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tfds_cbis.synthetic',
      description='Write a synthetic CBIS-DDSM release (DICOM tree + the four CSVs).')
  parser.add_argument('--out', required=True, help='empty or missing output folder')
  parser.add_argument('--patients', type=int, default=DEFAULT_PATIENTS)
  parser.add_argument('--layout', choices=naming.LAYOUTS, default='nbia')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--difficulty', type=float, default=0.5)
  parser.add_argument('--height', type=int, default=DEFAULT_IMAGE_SHAPE[0])
  parser.add_argument('--width', type=int, default=DEFAULT_IMAGE_SHAPE[1])
  parser.add_argument('--quirk-rate', type=float, default=0.06)
  parser.add_argument('--workers', type=int, default=None)
  args = parser.parse_args(argv)
  start = time.time()
  try:
    manifest = generate(args.out, patients=args.patients, layout=args.layout, seed=args.seed,
                        difficulty=args.difficulty, image_shape=(args.height, args.width),
                        quirk_rate=args.quirk_rate, workers=args.workers)
  except (ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{summary(manifest)} Written to {args.out} in {time.time() - start:.1f} s.')
  return 0
