"""The cbis_ddsm build report: `build_report.json` beside the prepared dataset.

It starts as the plan's record (`build_plan.plan_build`: inputs, exclusions, skips) and
gathers the per-split counts while examples are generated; `finish_report` adds the totals and
`write_report` writes it as strict JSON (no NaN/Infinity) and logs a one-line summary.
"""

from __future__ import annotations

import collections
import json
import os

from absl import logging
from etils import epath

from tfds_cbis import strict_json

REPORT_NAME = 'build_report.json'
_LISTED = 3  # series named on the console per check; the report lists all


def read_report(data_dir: str | os.PathLike[str]) -> dict | None:
  """The report of the build in data_dir (local or e.g. gs://); None when there is none."""
  path = epath.Path(data_dir) / REPORT_NAME
  return json.loads(path.read_text()) if path.exists() else None


def finish_report(report: dict) -> dict:
  """Adds totals; counts become plain dicts (labels, 'without_baseline')."""
  report = dict(report)
  report['counts'] = {s: dict(sorted(c.items())) for s, c in report.get('counts', {}).items()}
  report['examples'] = {s: sum(v for k, v in c.items() if k != 'without_baseline')
                        for s, c in report['counts'].items()}
  report['duplicate_series_count'] = len(report.get('duplicate_series', []))
  report['unused_series_count'] = len(report.get('unused_series', []))
  report['skip_counts'] = dict(collections.Counter(s['reason'] for s in report.get('skips', [])))
  report['skips'] = sorted(report.get('skips', []),
                           key=lambda s: (s['split'], s['subject'], s['abnormality_id'] or 0))
  return report


def _listed(items: list[str]) -> str:
  more = len(items) - _LISTED
  return '; '.join(items[:_LISTED]) + (f'; and {more} more' if more > 0 else '')


def log_inputs(report: dict) -> None:
  """Console lines on the plan's inputs: where the CSVs were taken from (a warning when from a
  folder inside manual_dir), series in several copies and series no CSV row uses."""
  manual_dir = os.path.abspath(report['manual_dir'])
  dirs = ', '.join(report['csv_dirs'])
  if report['csv_source'] == 'manual_dir' and report['csv_dirs'] != [manual_dir]:
    logging.warning('cbis_ddsm: the description CSVs were taken from %s inside manual_dir %s '
                    '(the shallowest copies found); if another tree there is meant, pass its '
                    'folder as manual_dir', dirs, manual_dir)
  else:
    logging.info('cbis_ddsm: description CSVs taken from %s', dirs)

  def rel(path: str) -> str:
    return os.path.relpath(path, manual_dir)

  # Series with a damaged copy first: they are the ones where the choice mattered.
  duplicates = sorted(report['duplicate_series'], key=lambda d: not any(
      r['reason'].startswith('damaged') for r in d['rejected']))
  if duplicates:
    logging.warning(
        'cbis_ddsm: %d DICOM series are in more than one copy under %s (e.g. two copies of the '
        'tree); of each file an intact copy is used before a damaged one, then the shortest '
        'path: %s (all in %s, "duplicate_series")', len(duplicates), manual_dir,
        _listed([', '.join(map(rel, d['chosen'])) + ' used, not ' + ', '.join(
            f'{rel(r["path"])} ({r["reason"].split(";")[0]})' for r in d['rejected'])
                 for d in duplicates]), REPORT_NAME)
  unused = report['unused_series']
  if unused:
    logging.warning(
        'cbis_ddsm: %d DICOM series under %s are used by no CSV row (another data set in '
        'manual_dir, or CSVs that do not match the download?): %s (all in %s, '
        '"unused_series")', len(unused), manual_dir,
        _listed([rel(u['files'][0]) + (f' (+{len(u["files"]) - 1} files)'
                                       if len(u['files']) > 1 else '') for u in unused]),
        REPORT_NAME)


def log_summary(report: dict, path: str) -> None:
  logging.info(
      'cbis_ddsm build: examples %s; skipped %s; %d patients excluded from train/validation '
      'because they appear in the official test CSVs; %d series in several copies, %d used by '
      'no CSV row; CSVs from %s; full report: %s',
      report['examples'], report['skip_counts'] or 'nothing',
      len(report['excluded_patients']), report['duplicate_series_count'],
      report['unused_series_count'], ', '.join(report.get('csv_dirs', [])), path)


def write_report(report: dict, data_dir: str | os.PathLike[str],
                 final_dir: str | os.PathLike[str]) -> None:
  """Finishes the report, writes it into data_dir (local or e.g. gs://) and logs a summary.

  During a build data_dir is TFDS's `incomplete.*` folder, renamed to final_dir when the build
  succeeds: the summary names the report's path there, the one that will exist.
  """
  report = finish_report(report)
  (epath.Path(data_dir) / REPORT_NAME).write_text(
      strict_json.dumps(report, indent=1, sort_keys=True))
  log_summary(report, os.fspath(epath.Path(final_dir) / REPORT_NAME))
