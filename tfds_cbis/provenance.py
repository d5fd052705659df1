"""Where a cbis_ddsm build came from: its `provenance`, recorded in build_report.json.

A build's provenance is its source (the resolved manual_dir, or for a synthetic tree the
generator's parameters from its manifest, so a cached tree that moves keeps its identity), the
four CSVs' SHA-256 and whether each is the official release's, and a digest of the matched
DICOM series' SeriesInstanceUIDs. `provenance_id` digests all of it: two builds with the same
id hold the same data. mammo_jax compares ids (runs) and sources (reused builds).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping

from tfds_cbis import cases as cases_lib

SYNTHETIC_MANIFEST = 'synthetic_manifest.json'
# The generator's parameters, as its manifest records them (not the per-image entries).
SYNTHETIC_PARAMS = ('seed', 'layout', 'patients', 'difficulty', 'image_shape', 'quirk_rate')


def _digest(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def source_of(manual_dir: str | os.PathLike[str]) -> dict:
  """{'synthetic': generator parameters} for a synthetic tree, else {'manual_dir': its
  resolved path}."""
  manifest = os.path.join(manual_dir, SYNTHETIC_MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      params = json.load(f)
    return {'synthetic': {k: params.get(k) for k in SYNTHETIC_PARAMS}}
  return {'manual_dir': os.path.realpath(os.path.expanduser(os.fspath(manual_dir)))}


def describe_source(source: Mapping) -> str:
  """One readable phrase for a source, for error messages."""
  if 'synthetic' in source:
    params = ', '.join(f'{k}={v}' for k, v in source['synthetic'].items())
    return f'synthetic data ({params})'
  return f'manual_dir {source.get("manual_dir")}'


def provenance(manual_dir: str, csv_sha256: Mapping[str, str],
               series_uids: Iterable[str]) -> dict:
  """The `provenance` of a build from manual_dir with these CSVs ({file name: SHA-256}, as
  the csv_check measured them) and matched series."""
  csvs = {name: {'sha256': digest, 'official': digest == cases_lib.OFFICIAL_SHA256.get(name)}
          for name, digest in sorted(csv_sha256.items())}
  record = {
      'source': source_of(manual_dir),
      'csvs': csvs,
      'series_uids_sha256': _digest(sorted(set(series_uids))),
  }
  record['provenance_id'] = _digest(record)[:12]
  return record


def of_report(report: Mapping | None) -> dict | None:
  """A build report's provenance; None for a build written before provenance existed."""
  return (report or {}).get('provenance')
