"""tfds_cbis.csv_check: manual_dir CSVs against the official release (named, not refused)."""

import os
import shutil

from tfds_cbis import build_plan
from tfds_cbis import cases
from tfds_cbis import csv_check
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib

REAL = cases.PACKAGED_CSV_DIR


def _copies(folder):
  for name in cases.CSV_FILES.values():
    shutil.copy(os.path.join(REAL, name), folder / name)
  return cases.find_csvs(folder, [str(p) for p in folder.iterdir()])[0]


def test_official_copies_in_manual_dir_pass_with_their_paths(tmp_path):
  check = csv_check.check_csvs(_copies(tmp_path), 'manual_dir')
  assert check['official'] and csv_check.describe(check) == ''
  mass = check['files']['mass_case_description_train_set.csv']
  assert mass['path'] == str(tmp_path / 'mass_case_description_train_set.csv')
  assert mass['rows'] == mass['official_rows'] == 1318 and mass['status'] == 'official'


def test_truncated_at_a_row_boundary_and_own_subset_are_named(tmp_path):
  paths = _copies(tmp_path)
  calc = tmp_path / 'calc_case_description_test_set.csv'
  records = calc.read_bytes().split(b'\r\n')
  calc.write_bytes(b'\r\n'.join(records[:101]) + b'\r\n')  # header + 100 rows, cut at a row end
  mass = tmp_path / 'mass_case_description_test_set.csv'
  records = mass.read_bytes().split(b'\r\n')
  mass.write_bytes(b'\r\n'.join(records[:1] + records[5:9]) + b'\r\n')  # a subset of 4 rows
  assert len(cases.read_csv(str(calc), 'CALCIFICATION', 'test')) > 0  # parses: silent before
  check = csv_check.check_csvs(paths, 'manual_dir')
  files = check['files']
  assert not check['official']
  assert files[calc.name]['status'] == 'truncated'
  assert (files[calc.name]['rows'], files[calc.name]['official_rows']) == (100, 326)
  assert files[mass.name]['status'] == 'differs'
  assert (files[mass.name]['rows'], files[mass.name]['official_rows']) == (4, 378)
  assert files['calc_case_description_train_set.csv']['status'] == 'official'
  line = csv_check.describe(check)
  assert f'{calc} is the official file TRUNCATED after 100 of its 326 rows' in line
  assert f'{mass}: 4 rows, the official {mass.name} has 378' in line
  assert 'train_set' not in line and 'subset of your own' in line


def test_the_build_plan_reports_and_logs_the_check(monkeypatch):
  dummy = os.path.join(os.path.dirname(builder_lib.__file__), 'dummy_data')
  # Warnings read from absl's logging call itself: its handler may not propagate records to
  # pytest's log capture, depending on which tests ran before in the same process.
  warnings = []
  monkeypatch.setattr(csv_check.logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  _, report = build_plan.plan_build(dummy, builder_lib.ROI150)
  check = report['csv_check']
  assert check['source'] == 'manual_dir' and not check['official']
  assert {f['status'] for f in check['files'].values()} == {'differs'}
  assert all(f['path'].startswith(os.path.abspath(dummy)) for f in check['files'].values())
  assert any('differ from the official CBIS-DDSM release' in w for w in warnings)
