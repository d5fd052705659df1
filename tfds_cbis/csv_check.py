"""Checking the description CSVs a build uses against the official CBIS-DDSM release.

CSVs in manual_dir that differ from the official files are valid input (a researcher's own
subset, the synthetic trees), so they are named, not refused: the console and the report's
`csv_check` say which files differ, where they were taken from and their row counts against
the official ones, and call a file that is the official one cut short (e.g. an interrupted
download that ends at a row boundary) truncated.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping

from absl import logging

from tfds_cbis import cases as cases_lib


def count_rows(path: str | os.PathLike[str]) -> int:
  """Data rows (CSV records after the header, blank ones not counted)."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    return max(0, sum(1 for row in csv.reader(f) if any(c.strip() for c in row)) - 1)


def _check_file(path: str) -> dict:
  name = os.path.basename(path)
  official_path = os.path.join(cases_lib.PACKAGED_CSV_DIR, name)
  official_rows = count_rows(official_path)
  entry = {'path': os.path.abspath(path), 'sha256': cases_lib.sha256_of(path),
           'official_rows': official_rows}
  if entry['sha256'] == cases_lib.OFFICIAL_SHA256[name]:
    return {**entry, 'status': 'official', 'rows': official_rows}
  rows = count_rows(path)
  with open(path, 'rb') as f, open(official_path, 'rb') as g:
    own, official = f.read(), g.read()
  truncated = rows < official_rows and official.startswith(own)
  return {**entry, 'status': 'truncated' if truncated else 'differs', 'rows': rows}


def check_csvs(csv_paths: Mapping[tuple[str, str], str], source: str) -> dict:
  """The report's `csv_check`: per file its path, digest, status and rows vs the official.

  Args:
    csv_paths: the four CSVs the build reads (`cases.find_csvs`).
    source: where they were found, 'manual_dir' or 'packaged'.

  Returns:
    {'source', 'official': all four official?, 'files': {name: {'path', 'sha256', 'status'
    ('official', 'truncated' or 'differs'), 'rows', 'official_rows'}}}.
  """
  files = {os.path.basename(p): _check_file(p) for p in sorted(csv_paths.values())}
  return {'source': source, 'official': all(f['status'] == 'official' for f in files.values()),
          'files': files}


def describe(check: dict) -> str:
  """One console line naming the CSVs that are not the official ones; '' when all are."""
  if check['official']:
    return ''
  parts = []
  for name, f in check['files'].items():
    if f['status'] == 'truncated':
      parts.append(f'{f["path"]} is the official file TRUNCATED after {f["rows"]} of its '
                   f'{f["official_rows"]} rows (re-download it from TCIA)')
    elif f['status'] == 'differs':
      parts.append(f'{f["path"]}: {f["rows"]} rows, the official {name} has '
                   f'{f["official_rows"]}')
  return ('cbis_ddsm: the description CSVs in manual_dir differ from the official CBIS-DDSM '
          'release: ' + '; '.join(parts) + '. Fine for a subset of your own or a synthetic '
          'tree; for the full data set use the four TCIA CSVs unmodified.')


def log_check(check: dict) -> None:
  message = describe(check)
  if message:
    logging.warning('%s', message)
  else:
    logging.info('cbis_ddsm: the description CSVs (%s) are the official release.',
                 check['source'])
