"""tfds_cbis.index: header-only indexing by UIDs, unreadable files, odd trees."""

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
