"""What a build finds in manual_dir besides the CSV rows: copies of series, unused series, and
where the CSVs came from (issue 11, item 5)."""

import json
import os
import shutil
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_cbis import build_plan
from tfds_cbis import build_report
from tfds_cbis import dicom
from tfds_cbis import synthetic
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib
from tfds_cbis.patches import PatchSpec

CONFIG = types.SimpleNamespace(name='roi150', validation_fraction=0.1, spec=PatchSpec())


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  out = tmp_path_factory.mktemp('checks') / 'tree'
  synthetic.generate(out, patients=8, seed=4, layout='classic', image_shape=(128, 128),
                     workers=1)
  return out


def _build(manual_dir, data_dir):
  builder = builder_lib.Builder(config='roi150', data_dir=str(data_dir), num_workers=1)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False))
  examples = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      examples[ex['id'].decode()] = dict(ex, split=split)
  with open(os.path.join(builder.data_dir, build_report.REPORT_NAME)) as f:
    return examples, json.load(f)


def _truncate(path, keep_bytes):
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) - keep_bytes)


def test_pixel_data_problem_tells_intact_from_truncated(tmp_path):
  pixels = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
  path = tmp_path / 'a.dcm'
  dicom.write_image(path, pixels)
  assert dicom.pixel_data_problem(path) is None
  _truncate(path, 100)
  assert dicom.pixel_data_problem(path) == 'truncated pixel data (6044 of 6144 bytes)'
  rle = tmp_path / 'rle.dcm'  # compressed: judged by decoding
  dicom.write_image(rle, pixels, transfer_syntax=dicom.RLELossless)
  assert dicom.pixel_data_problem(rle) is None
  _truncate(rle, 300)
  assert 'pixel data' in dicom.pixel_data_problem(rle)


def test_an_intact_copy_wins_over_a_truncated_one(tree, tmp_path, monkeypatch):
  intact, intact_report = _build(tree, tmp_path / 'tfds_intact')
  manual_dir = tmp_path / 'two_trees'
  shutil.copytree(tree, manual_dir / 'a')
  shutil.copytree(tree, manual_dir / 'b')
  with open(tree / 'synthetic_manifest.json') as f:
    manifest = json.load(f)
  # Two full mammograms with examples, one truncated in each copy: neither the path order nor
  # the tree chosen decides, only which copy is intact.
  used = [img for img in manifest['images']
          if f'{img["subject"]}/abnorm_{img["abnormalities"][0]["abnormality_id"]}' in intact]
  first, second = used[0], used[1]
  _truncate(manual_dir / 'b' / first['path'], 1000)
  _truncate(manual_dir / 'a' / second['path'], 1000)

  warnings = []  # read from absl's call: its handler may not reach pytest's capture
  monkeypatch.setattr(build_report.logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  doubled, report = _build(manual_dir, tmp_path / 'tfds_doubled')
  assert doubled.keys() == intact.keys()
  for key, ex in intact.items():
    for field, value in ex.items():
      np.testing.assert_array_equal(value, doubled[key][field], err_msg=f'{key} {field}')
  assert report['skip_counts'] == intact_report['skip_counts']

  series = {d['series_uid']: d for d in report['duplicate_series']}
  assert report['duplicate_series_count'] == len(series) == len(
      {os.path.dirname(p) for p in _dcm_files(tree)})  # every series of the tree, once
  for img, kept, damaged in ((first, 'a', 'b'), (second, 'b', 'a')):
    record = series[img['series_uid']]
    assert record['files'] == [str(manual_dir / t / img['path']) for t in ('a', 'b')]
    assert record['chosen'] == [str(manual_dir / kept / img['path'])]
    [rejected] = record['rejected']
    assert rejected['path'] == str(manual_dir / damaged / img['path'])
    assert rejected['reason'].startswith('damaged: truncated pixel data')
  intact_pair = next(d for k, d in series.items()
                     if k not in (first['series_uid'], second['series_uid']))
  assert all(p.startswith(str(manual_dir / 'a')) for p in intact_pair['chosen'])
  assert all(r['reason'].startswith('intact too') for r in intact_pair['rejected'])
  # On the console: the count, and the series whose damaged copy was passed over first.
  [line] = [w for w in warnings if 'more than one copy' in w]
  assert line.startswith(f'cbis_ddsm: {len(series)} DICOM series are in more than one copy '
                         f'under {manual_dir}')
  listed = line.split(' then the shortest path: ')[1]
  for img, kept, damaged in ((first, 'a', 'b'), (second, 'b', 'a')):
    assert (f'{kept}/{img["path"]} used, not {damaged}/{img["path"]} (damaged: truncated pixel '
            'data') in listed
  assert listed.count('used, not') == 3 and listed.endswith(
      f'; and {len(series) - 3} more (all in build_report.json, "duplicate_series")')
  # The CSVs came from the first tree's folder, and the report says so.
  assert report['csv_dirs'] == [str(manual_dir / 'a')]
  assert intact_report['csv_dirs'] == [str(tree)]
  assert intact_report['duplicate_series'] == [] and intact_report['unused_series'] == []


def _dcm_files(root):
  return sorted(str(p) for p in root.rglob('*.dcm'))


def test_series_no_csv_row_uses_are_counted_listed_and_logged(tree, tmp_path, monkeypatch):
  manual_dir = tmp_path / 'tree'
  shutil.copytree(tree, manual_dir)
  stray = [manual_dir / 'CBIS-DDSM' / 'Mass-Training_P_09999_LEFT_CC' / 'x' / f'{i}.dcm'
           for i in (1, 2)]
  for i, path in enumerate(stray):  # one series of two files
    dicom.write_image(path, np.zeros((128, 128), np.uint16), study_uid='9.9',
                      series_uid='9.9.1', instance_number=i + 1)
  other = manual_dir / 'other_study' / '1-1.dcm'
  dicom.write_image(other, np.zeros((128, 128), np.uint16), study_uid='9.8', series_uid='9.8.1')
  warnings = []  # read from absl's call: its handler may not reach pytest's capture
  monkeypatch.setattr(build_report.logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))

  _, report = build_plan.plan_build(str(manual_dir), CONFIG)
  assert report['unused_series'] == [
      {'study_uid': '9.8', 'series_uid': '9.8.1', 'files': [str(other)]},
      {'study_uid': '9.9', 'series_uid': '9.9.1', 'files': [str(p) for p in stray]}]
  assert build_report.finish_report(report)['unused_series_count'] == 2
  [line] = [w for w in warnings if 'used by no CSV row' in w]
  assert line.startswith(f'cbis_ddsm: 2 DICOM series under {manual_dir} are used by no CSV row')
  assert 'other_study/1-1.dcm; CBIS-DDSM/Mass-Training_P_09999_LEFT_CC/x/1.dcm (+1 files)' in line
  assert not any('more than one copy' in w or 'taken from' in w for w in warnings)


def test_csvs_from_a_folder_inside_manual_dir_are_named(tree, tmp_path, monkeypatch):
  manual_dir = tmp_path / 'downloads'
  shutil.copytree(tree, manual_dir / 'cbis' / 'nested')
  warnings = []
  monkeypatch.setattr(build_report.logging, 'warning',
                      lambda fmt, *args: warnings.append(fmt % args))
  _, report = build_plan.plan_build(str(manual_dir), CONFIG)
  nested = str(manual_dir / 'cbis' / 'nested')
  assert report['csv_dirs'] == [nested]
  assert all(f['path'].startswith(nested + os.sep) for f in report['csv_check']['files'].values())
  assert [w for w in warnings if 'taken from' in w] == [
      f'cbis_ddsm: the description CSVs were taken from {nested} inside manual_dir {manual_dir} '
      '(the shallowest copies found); if another tree there is meant, pass its folder as '
      'manual_dir']
