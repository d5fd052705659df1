"""tfds_cbis.index: header-only indexing by UIDs, unreadable files, odd trees."""

import os

import numpy as np

from tfds_cbis import dicom
from tfds_cbis import index


def test_index_by_uids_with_unreadable_files_and_a_symlink_loop(tmp_path):
  pixels = np.zeros((8, 6), np.uint16)
  a = tmp_path / 'CBIS-DDSM' / 'Mass-Training_P_00001_LEFT_CC' / 'x' / 'y' / '1-1.dcm'
  b = tmp_path / 'elsewhere' / 'renamed.DCM'
  dicom.write_image(a, pixels, study_uid='1.2', series_uid='1.2.3', instance_number=1)
  dicom.write_image(b, pixels, study_uid='1.2', series_uid='1.2.3', instance_number=2)
  bad = tmp_path / 'CBIS-DDSM' / 'Mass-Training_P_00001_LEFT_CC_1' / 'z' / '1-2.dcm'
  bad.parent.mkdir(parents=True)
  bad.write_bytes(b'garbage')
  (tmp_path / 'CBIS-DDSM' / 'loop').symlink_to(tmp_path / 'CBIS-DDSM')  # a cycle
  (tmp_path / 'metadata.csv').write_text('Series UID\n')
  idx = index.build_index(tmp_path)
  assert [h.path for h in idx.files(('1.2', '1.2.3'))] == [str(a), str(b)]  # by InstanceNumber
  assert idx.num_files == 2  # the cycle did not make the walk list a file twice
  assert list(idx.unreadable) == [str(bad)] and 'not a DICOM file' in idx.unreadable[str(bad)]
  assert idx.unreadable_under('Mass-Training_P_00001_LEFT_CC_1') == idx.unreadable
  assert idx.unreadable_under('Mass-Training_P_00001_LEFT_CC') == {}
  assert idx.other_files == [str(tmp_path / 'metadata.csv')]


def test_an_unreadable_folder_is_its_own_skip_reason(tmp_path, monkeypatch):
  from tfds_cbis import cases
  from tfds_cbis import patches
  pixels = np.zeros((8, 6), np.uint16)
  root = tmp_path / 'CBIS-DDSM'
  locked = root / 'Mass-Training_P_00002_LEFT_CC'
  dicom.write_image(locked / 'a' / 'b' / '1-1.dcm', pixels, study_uid='2.1', series_uid='2.1.1')
  dicom.write_image(root / 'Mass-Training_P_00001_LEFT_CC' / 'a' / '1-1.dcm', pixels,
                    study_uid='1.1', series_uid='1.1.1')
  real_scandir = os.scandir

  def scandir(path):  # as root, chmod cannot deny reading: fail the listing instead
    if os.fspath(path) == str(locked):
      raise PermissionError(13, 'Permission denied', os.fspath(path))
    return real_scandir(path)

  monkeypatch.setattr(os, 'scandir', scandir)
  idx = index.build_index(tmp_path)
  assert idx.unreadable_dirs == {str(locked): 'Permission denied'}
  assert idx.num_files == 1

  def case(subject, study, series):
    ref = cases.FileRef(subject, study, series, '000000.dcm')
    abn = cases.Abnormality(1, 'BENIGN', 3, 3, ref, ref, {}, 'x.csv:2')
    return cases.Case('MASS', 'train', 'P_1', 'LEFT', 'CC', 2, ref, (abn,))

  _, (skip,) = patches.resolve(case(locked.name, '2.1', '2.1.1'), 'train', idx)
  assert skip.reason == 'folder_unreadable' and str(locked) in skip.detail
  # A series missing from a readable subject folder is still just missing.
  _, (skip,) = patches.resolve(case('Mass-Training_P_00003_LEFT_CC', '3.1', '3.1.1'), 'train',
                               idx)
  assert skip.reason == 'file_missing'
  # A folder above every subject folder may hold anything.
  idx.unreadable_dirs = {str(root / 'more'): 'Permission denied'}
  _, (skip,) = patches.resolve(case('Mass-Training_P_00003_LEFT_CC', '3.1', '3.1.1'), 'train',
                               idx)
  assert skip.reason == 'folder_unreadable'
