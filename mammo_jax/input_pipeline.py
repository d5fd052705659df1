"""Where the patch datasets come from: a real CBIS-DDSM download or the synthetic one.

`prepare_builder(config.data)` returns a prepared TFDS builder. Real builds go to
`data.data_dir` (reused across runs, local or gs://). Synthetic data are generated and built
once per parameter set under `data.cache_dir`, in their own TFDS data_dir, so a synthetic build
can never be mistaken for a real one.
"""

from __future__ import annotations

import json
import os
import shutil

from absl import logging
from etils import epath
import ml_collections
import tensorflow_datasets as tfds

import tfds_cbis  # noqa: F401  (registers cbis_ddsm)
from tfds_cbis import synthetic
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as cbis_builder

SYNTHETIC_BANNER = """
************************************************************************************
*  SYNTHETIC DATA: no data.manual_dir was given, so this run uses the synthetic     *
*  CBIS-DDSM of tfds_cbis.synthetic. Its numbers say nothing about real mammograms. *
************************************************************************************"""


def cache_dir(data: ml_collections.ConfigDict) -> str:
  return os.path.expanduser(data.cache_dir or os.environ.get('MAMMO_JAX_CACHE')
                            or '~/.cache/mammo_jax')


def synthetic_tree(data: ml_collections.ConfigDict) -> str:
  """Generates the synthetic CBIS-DDSM once per parameter set; returns its folder."""
  s = data.synthetic
  key = (f'p{s.patients}-seed{s.seed}-d{s.difficulty:g}-{s.layout}-{s.height}x{s.width}')
  root = os.path.join(cache_dir(data), 'synthetic', key)
  tree = os.path.join(root, 'cbis_ddsm')
  if os.path.exists(os.path.join(tree, 'synthetic_manifest.json')):
    return tree
  partial = tree + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  logging.info('Generating synthetic CBIS-DDSM (%s) in %s', key, tree)
  synthetic.generate(partial, patients=s.patients, layout=s.layout, seed=s.seed,
                     difficulty=s.difficulty, image_shape=(s.height, s.width),
                     workers=data.num_workers or None)
  os.replace(partial, tree)  # only complete trees are ever reused
  return tree


def prepare_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) the dataset named by `data.name`; returns its builder."""
  if data.manual_dir:
    manual_dir = os.path.expanduser(data.manual_dir)
    data_dir = data.data_dir or None
  else:
    print(SYNTHETIC_BANNER, flush=True)
    manual_dir = synthetic_tree(data)
    data_dir = os.path.join(os.path.dirname(manual_dir), 'tensorflow_datasets')
  builder = tfds.builder(data.name, data_dir=data_dir,
                         num_workers=data.num_workers or None)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def build_report(builder: tfds.core.DatasetBuilder) -> dict | None:
  """The JSON report the cbis_ddsm builder writes beside the prepared dataset."""
  path = epath.Path(builder.data_dir) / cbis_builder.REPORT_NAME  # local or gs://
  if not path.exists():
    return None
  return json.loads(path.read_text())


def describe(builder: tfds.core.DatasetBuilder) -> str:
  """Human-readable statistics: examples per split and class, skips, exclusions."""
  lines = [f'{builder.info.full_name} in {builder.data_dir}']
  report = build_report(builder) or {}
  names = builder.info.features['label'].names
  for split, info in builder.info.splits.items():
    counts = report.get('counts', {}).get(split, {})
    per_class = ', '.join(f'{n} {counts.get(n, 0)}' for n in names)
    extra = ''
    if 'without_baseline' in counts:
      extra = f'; without baseline {counts["without_baseline"]}'
    lines.append(f'  {split:<10} {info.num_examples:>6} examples ({per_class}{extra})')
  if report:
    lines.append(f'  patients: {report.get("patients")}; excluded from train/validation '
                 f'(also in the official test CSVs): {len(report.get("excluded_patients", []))}')
    lines.append(f'  skipped: {report.get("skip_counts") or "nothing"} '
                 f'(details in {cbis_builder.REPORT_NAME})')
  return '\n'.join(lines)
