"""The cbis_ddsm build's plan: which CSV image goes to which split, and what is skipped.

Driver side, headers only: reads the CSVs and indexes the DICOM headers under manual_dir,
assigns patient-level splits and resolves each image to an `ImageTask` (each breast view to a
`whole.ViewTask` for the whole-image configs). The report it starts
(`build_report`) records the inputs (where the CSVs were taken from, series in several copies
and the copy used, series no CSV row uses), exclusions and skips. No TensorFlow here.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging

from tfds_cbis import build_report
from tfds_cbis import cases as cases_lib
from tfds_cbis import csv_check
from tfds_cbis import index as index_lib
from tfds_cbis import patches
from tfds_cbis import provenance as provenance_lib
from tfds_cbis import splits as splits_lib
from tfds_cbis import whole

SPLITS = (*splits_lib.SPLITS, splits_lib.LEAKING)


def plan_build(manual_dir: str, config: Any, instructions: str = '') -> tuple[dict, dict]:
  """Reads the CSVs and DICOM headers, assigns splits and lists the work per split.

  Args:
    manual_dir: the CBIS-DDSM download.
    config: the builder config (its `name` and `validation_fraction` are used).
    instructions: appended to the error when manual_dir does not exist.

  Returns:
    ({split: [ImageTask]} (whole-image configs: [whole.ViewTask]), the build report so far:
    inputs, exclusions, skips; whole-image configs add `merged_views`).

  Raises:
    FileNotFoundError: manual_dir does not exist.
    ValueError: manual_dir holds no CBIS-DDSM image of the CSVs at all.
  """
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f'manual_dir {manual_dir} does not exist. ' + instructions)
  logging.info('cbis_ddsm: indexing DICOM headers under %s', manual_dir)
  index = index_lib.build_index(manual_dir)
  csv_paths, csv_source = cases_lib.find_csvs(manual_dir, index.other_files)
  check = csv_check.check_csvs(csv_paths, csv_source)
  csv_sha256 = {name: f['sha256'] for name, f in check['files'].items()}
  csv_check.log_check(check)
  csv_dirs = sorted({os.path.dirname(os.path.abspath(p)) for p in csv_paths.values()})
  all_cases = cases_lib.load_cases(csv_paths)
  plan = splits_lib.plan_splits(all_cases, config.validation_fraction)
  tasks = {s: [] for s in SPLITS}
  skips: list[patches.Skip] = []
  extra = {}
  if isinstance(config.spec, whole.WholeSpec):  # one task per breast view
    planned, skips, extra = whole.plan_views(all_cases, plan.split_of, plan.excluded_subjects,
                                             index)
  else:
    planned = []
    for case in all_cases:
      # Not in the plan: an official-train image of a patient who is in the test CSVs.
      split = plan.split_of.get(case.subject, splits_lib.LEAKING)
      task, case_skips = patches.resolve(case, split, index)
      skips.extend(case_skips)
      if task is not None:
        planned.append(task)
  for task in planned:
    tasks[task.split].append(task)
  if not any(index.files(c.image.series_key) for c in all_cases):
    raise ValueError(
        f'manual_dir {manual_dir} holds no CBIS-DDSM image of the CSVs: {index.num_files} '
        f'readable .dcm files, {len(index.unreadable)} unreadable, '
        f'{len(index.unreadable_dirs)} folders that cannot be listed, none whose Study/Series UIDs '
        f'match a CSV image path (CSVs: {csv_source}). Expected the TCIA download, e.g. '
        'CBIS-DDSM/<Subject>/.../1-1.dcm (NBIA) or CBIS-DDSM/<Subject>/<StudyUID>/<SeriesUID>/'
        '000000.dcm (classic). If you use your own CSVs, put all four in manual_dir.')
  report = {
      'manual_dir': manual_dir,
      'config': config.name,
      'csv_source': csv_source,
      'csv_dirs': csv_dirs,
      'csv_check': check,
      'csv_sha256': csv_sha256,
      'dicom_files': index.num_files,
      'unreadable_files': index.unreadable,
      'duplicate_series': index.duplicates,
      'unused_series': index.unused(_used_series(all_cases)),
      'images_in_csvs': len(all_cases),
      'abnormalities_in_csvs': sum(len(c.abnormalities) for c in all_cases),
      'excluded_patients': plan.excluded_patients,
      'excluded_images': plan.excluded_subjects,
      'patients': plan.patients,
      'skips': [s.to_json() for s in skips],
      'counts': {},
      'provenance': provenance_lib.provenance(manual_dir, csv_sha256, _matched_series(tasks)),
      **extra,
  }
  build_report.log_inputs(report)
  logging.info('cbis_ddsm: %d images planned (%s); %d patients of the official test CSVs '
               'excluded from train/validation (their official-train images: split %s)',
               sum(len(t) for t in tasks.values()),
               ', '.join(f'{s} {len(t)}' for s, t in tasks.items()),
               len(plan.excluded_patients), splits_lib.LEAKING)
  return tasks, report


def _used_series(all_cases: list[cases_lib.Case]) -> set[tuple[str, str]]:
  """(study, series) UIDs that some CSV row names: images, crops and masks, every split."""
  return {ref.series_key for case in all_cases
          for ref in (case.image, *(r for a in case.abnormalities for r in (a.crop, a.roi)))}


def _matched_series(tasks: dict) -> set[str]:
  """SeriesInstanceUIDs of the files the planned images and abnormalities use."""
  return {h.series_uid for ts in tasks.values() for t in ts for h in t.headers()}
