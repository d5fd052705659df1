"""`python -m tfds_cbis.splits --protocol P --csv_dir DIR --out FILE.csv`: a protocol's patient
list, `patient_id,split` (official, tfds) or `patient_id,fold` (kfoldK, folds 0..K-1)."""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Sequence

from tfds_cbis import cases as cases_lib
from tfds_cbis import splits


def write_patient_list(protocol: str, csv_dir: str, out: str) -> int:
  """Writes the patient list of `protocol` for the four CSVs in csv_dir; returns its rows."""
  splits.parse_protocol(protocol)  # before reading anything
  if not os.path.isdir(csv_dir):
    raise ValueError(f'--csv_dir {csv_dir} is not a folder; give the folder holding the four '
                     'CBIS-DDSM description CSVs')
  names = {os.path.join(csv_dir, n) for n in os.listdir(csv_dir)}
  paths, _ = cases_lib.find_csvs(csv_dir, names)
  if not any(p in names for p in paths.values()):
    raise ValueError(f'--csv_dir {csv_dir} holds none of the CBIS-DDSM description CSVs '
                     f'({", ".join(sorted(cases_lib.CSV_FILES.values()))})')
  column, values = splits.patient_list(protocol, cases_lib.load_cases(paths))
  try:
    with open(out, 'w', newline='') as f:
      writer = csv.writer(f, lineterminator='\n')
      writer.writerow(['patient_id', column])
      writer.writerows(sorted(values.items()))
  except OSError as e:
    raise ValueError(f'--out {out}: cannot write it ({e.strerror}); give a file in an existing, '
                     'writable folder') from None
  return len(values)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tfds_cbis.splits', description='Writes the patient list of a split '
      'protocol: patient_id,split (official, tfds) or patient_id,fold (kfoldK).')
  parser.add_argument('--protocol', required=True, help='official, tfds or kfoldK (e.g. kfold5)')
  parser.add_argument('--csv_dir', required=True, help='folder with the four description CSVs')
  parser.add_argument('--out', required=True, help='the CSV file to write')
  args = parser.parse_args(argv)
  try:
    rows = write_patient_list(args.protocol, args.csv_dir, args.out)
  except ValueError as e:  # CsvFormatError is a ValueError
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{args.out}: {rows} patients ({args.protocol})')
  return 0
