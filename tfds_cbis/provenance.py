"""Where a cbis_ddsm build came from: its `provenance`, recorded in build_report.json.

A build's provenance is its source (the resolved manual_dir, or for a synthetic tree the
generator's parameters from its manifest, so a cached tree that moves keeps its identity), the
four CSVs' SHA-256 and whether each is the official release's, and a digest of the matched
DICOM series' SeriesInstanceUIDs. `provenance_id` digests all of it: two builds with the same
id hold the same data. mammo_jax compares ids (runs); the builder compares sources before it
reuses a build (`check_reuse`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping

from tfds_cbis import build_report
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


def check_reuse(data_dir: str | os.PathLike[str], manual_dir: str | os.PathLike[str]) -> None:
  """Refuses to reuse the build in data_dir when its source is not manual_dir (another
  download, or a synthetic tree), so one dataset's numbers never appear under another's name.

  A build that recorded no source (none from before build reports) is reused as is.

  Raises:
    ValueError: one line naming both sources and the fix.
  """
  report = build_report.read_report(data_dir) or {}
  built = of_report(report)
  if built is not None:
    built_source = built['source']
  elif report.get('manual_dir'):  # a build from before provenance: its manual_dir
    built_source = source_of(report['manual_dir'])
  else:
    return
  asked = source_of(manual_dir)
  if built_source != asked:
    raise ValueError(
        f'{data_dir} holds a build of {describe_source(built_source)}, not of '
        f'{describe_source(asked)}; use another data_dir (tfds build --data_dir, mammo_jax '
        f'--config.data.data_dir) or delete {data_dir} to build it again')
