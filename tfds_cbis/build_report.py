"""The cbis_ddsm build report: `build_report.json` beside the prepared dataset.

It starts as the plan's record (`build_plan.plan_build`: inputs, exclusions, skips) and
gathers the per-split counts while examples are generated; `finish_report` adds the totals and
`write_report` writes it as strict JSON (no NaN/Infinity) and logs a one-line summary.
"""

from __future__ import annotations

import collections
import os

from absl import logging
from etils import epath

from tfds_cbis import strict_json

REPORT_NAME = 'build_report.json'


def finish_report(report: dict) -> dict:
  """Adds totals; counts become plain dicts (labels, 'without_baseline')."""
  report = dict(report)
  report['counts'] = {s: dict(sorted(c.items())) for s, c in report.get('counts', {}).items()}
  report['examples'] = {s: sum(v for k, v in c.items() if k != 'without_baseline')
                        for s, c in report['counts'].items()}
  report['skip_counts'] = dict(collections.Counter(s['reason'] for s in report.get('skips', [])))
  report['skips'] = sorted(report.get('skips', []),
                           key=lambda s: (s['split'], s['subject'], s['abnormality_id'] or 0))
  return report


def log_summary(report: dict, path: str) -> None:
  logging.info(
      'cbis_ddsm build: examples %s; skipped %s; %d patients excluded from train/validation '
      'because they appear in the official test CSVs; full report: %s',
      report['examples'], report['skip_counts'] or 'nothing',
      len(report['excluded_patients']), path)


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
