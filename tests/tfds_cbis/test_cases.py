"""tfds_cbis.cases: the real CSVs, their format quirks and malformed input."""

import collections
import os
import shutil

import pytest

from tfds_cbis import cases

REAL = os.path.join(os.path.dirname(__file__), '..', '..', 'tfds_cbis', 'csv')


def test_packaged_csvs_are_the_official_release():
  paths, source = cases.find_csvs(None)
  assert source == 'packaged'
  for path in paths.values():
    assert cases.sha256_of(path) == cases.OFFICIAL_SHA256[os.path.basename(path)]


def test_counts_of_the_real_csvs():
  all_cases = cases.load_cases(cases.find_csvs(None)[0])
  assert len(all_cases) == 3103
  assert sum(len(c.abnormalities) for c in all_cases) == 3568
  assert len({c.patient_id for c in all_cases}) == 1566
  counts = collections.Counter(
      (c.official_split, cases.label_name(c.abnormality_type, a.pathology))
      for c in all_cases for a in c.abnormalities)
  assert counts == {
      ('train', 'BENIGN_CALCIFICATION'): 1002, ('train', 'MALIGNANT_CALCIFICATION'): 544,
      ('train', 'BENIGN_MASS'): 681, ('train', 'MALIGNANT_MASS'): 637,
      ('test', 'BENIGN_CALCIFICATION'): 197, ('test', 'MALIGNANT_CALCIFICATION'): 129,
      ('test', 'BENIGN_MASS'): 231, ('test', 'MALIGNANT_MASS'): 147}


def test_quoted_path_cell_with_trailing_lf_is_stripped():
  all_cases = cases.read_csv(os.path.join(REAL, 'mass_case_description_train_set.csv'),
                             'MASS', 'train')
  first = next(c for c in all_cases if c.subject == 'Mass-Training_P_00001_LEFT_CC')
  abn = first.abnormalities[0]
  assert abn.roi.filename == '000001.dcm' and abn.crop.filename == '000000.dcm'
  assert abn.roi.subject == 'Mass-Training_P_00001_LEFT_CC_1'
  assert first.image.study_uid.startswith('1.3.6.1.4.1.9590.100.1.2.')
  assert abn.descriptors == {'mass_shape': 'IRREGULAR-ARCHITECTURAL_DISTORTION',
                             'mass_margins': 'SPICULATED'}
  assert (first.patient_id, first.breast, first.view, first.breast_density) == (
      'P_00001', 'LEFT', 'CC', 3)


def test_older_csv_variant_with_backslash_paths(tmp_path):
  path = tmp_path / 'old.csv'
  path.write_text(
      'patient_id,breast_density,side,view,abn_num,abnormality_type,mass_shape,mass_margins,'
      'assessment,pathology,subtlety,od_img_path,od_crop_path,mask_path\r\n'
      'P_00001,3,LEFT,CC,1,mass,OVAL,NA,4,BENIGN_WITHOUT_CALLBACK,4,'
      'Mass-Training_P_00001_LEFT_CC\\1.2\\1.2.3\\000000.dcm,'
      'Mass-Training_P_00001_LEFT_CC_1\\1.5\\1.5.6\\000000.dcm,'
      'Mass-Training_P_00001_LEFT_CC_1\\1.5\\1.5.6\\000001.dcm\r\n', newline='')
  (case,) = cases.read_csv(str(path), 'MASS', 'train')
  assert case.image.series_key == ('1.2', '1.2.3')
  assert case.abnormalities[0].roi.filename == '000001.dcm'
  assert cases.label_name('MASS', case.abnormalities[0].pathology) == 'BENIGN_MASS'


def test_missing_columns_name_the_file(tmp_path):
  path = tmp_path / 'bad.csv'
  path.write_text('patient_id,whatever\r\nP_1,2\r\n')
  with pytest.raises(cases.CsvFormatError, match=r'bad\.csv.*missing columns'):
    cases.read_csv(str(path), 'MASS', 'train')


def test_bad_value_names_file_and_line(tmp_path):
  src = os.path.join(REAL, 'calc_case_description_test_set.csv')
  text = open(src, newline='').read().replace('MALIGNANT', 'MAYBE', 1)
  path = tmp_path / 'calc_case_description_test_set.csv'
  path.write_text(text, newline='')
  with pytest.raises(cases.CsvFormatError, match=r'calc_case_description_test_set\.csv:\d+: '
                     r"pathology 'MAYBE'"):
    cases.read_csv(str(path), 'CALCIFICATION', 'test')


def test_find_csvs_prefers_manual_dir_and_rejects_a_partial_set(tmp_path):
  for name in cases.CSV_FILES.values():
    shutil.copy(os.path.join(REAL, name), tmp_path / name)
  found = [str(p) for p in tmp_path.iterdir()]
  paths, source = cases.find_csvs(tmp_path, found)
  assert source == 'manual_dir' and all(str(tmp_path) in p for p in paths.values())
  with pytest.raises(cases.CsvFormatError, match='but not'):
    cases.find_csvs(tmp_path, found[:2])


def test_tampered_packaged_csv_is_refused(tmp_path, monkeypatch):
  for name in cases.CSV_FILES.values():
    shutil.copy(os.path.join(REAL, name), tmp_path / name)
  with open(tmp_path / 'mass_case_description_test_set.csv', 'ab') as f:
    f.write(b'\r\n')
  monkeypatch.setattr(cases, 'PACKAGED_CSV_DIR', str(tmp_path))
  with pytest.raises(cases.CsvFormatError, match='SHA-256'):
    cases.find_csvs(None)


def test_locations_are_editor_lines_not_record_numbers(tmp_path):
  # The official files' path cells end in a quoted bare LF: each record spans two lines.
  src = os.path.join(REAL, 'mass_case_description_train_set.csv')
  all_cases = cases.read_csv(src, 'MASS', 'train')
  sources = sorted(int(a.source.split(':')[1]) for c in all_cases for a in c.abnormalities)
  text = open(src, newline='').read()
  assert sources[:2] == [2, 4] and sources[-1] == text.count('\n') - 1
  # A bad value on the third record is reported at the line an editor shows for it.
  records = text.split('\r\n')
  assert 'MALIGNANT' in records[3] or 'BENIGN' in records[3]
  records[3] = records[3].replace('MALIGNANT', 'MAYBE').replace('BENIGN', 'MAYBE', 1)
  path = tmp_path / 'mass_case_description_train_set.csv'
  path.write_text('\r\n'.join(records), newline='')
  with pytest.raises(cases.CsvFormatError, match=r"set\.csv:6: pathology 'MAYBE"):
    cases.read_csv(str(path), 'MASS', 'train')
