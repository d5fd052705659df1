"""tfds_cbis.dicom: pixel decoding rules and the named errors for unreadable files."""

import os

import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.pixels import get_decoder
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         JPEGLSNearLossless, RLELossless)
import pytest

from tfds_cbis import dicom


def _image(bits=16, shape=(40, 30), seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 1 << bits, shape).astype(np.uint16 if bits > 8 else np.uint8)


@pytest.mark.parametrize('syntax', [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian, RLELossless])
def test_round_trip_every_uncompressed_encoding_and_rle(tmp_path, syntax):
  pixels = _image(12)
  path = tmp_path / 'x.dcm'
  dicom.write_image(path, pixels, transfer_syntax=syntax, bits_stored=12)
  assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
  out = dicom.read_image(path)
  assert out.dtype == np.uint16 and out.shape == pixels.shape
  np.testing.assert_array_equal(out, pixels)


@pytest.mark.parametrize('name', ['CT_small.dcm', 'MR_small.dcm', 'MR_small_implicit.dcm',
                                  'MR_small_bigendian.dcm', 'MR_small_RLE.dcm',
                                  'liver_1frame.dcm'])
def test_fast_path_equals_pydicom_on_its_test_files(name):
  path = get_testdata_file(name, download=False)
  ds = pydicom.dcmread(path)
  expected = ds.pixel_array.astype(np.int64)
  if ds.PixelRepresentation:
    expected += 1 << (ds.BitsStored - 1)
  expected &= (1 << ds.BitsStored) - 1
  if ds.PhotometricInterpretation == 'MONOCHROME1':
    expected = (1 << ds.BitsStored) - 1 - expected
  np.testing.assert_array_equal(dicom.read_image(path), expected)


def test_bits_above_bits_stored_are_masked(tmp_path):
  pixels = _image(12)
  path = tmp_path / 'x.dcm'
  dicom.write_image(path, pixels | np.uint16(0xF000), bits_stored=12)  # garbage high bits
  np.testing.assert_array_equal(dicom.read_image(path), pixels)


def test_monochrome1_is_inverted_against_bits_stored(tmp_path):
  pixels = _image(12)
  path = tmp_path / 'x.dcm'
  dicom.write_image(path, pixels, bits_stored=12, photometric='MONOCHROME1')
  np.testing.assert_array_equal(dicom.read_image(path), 4095 - pixels)


def test_eight_bit_masks_keep_their_values(tmp_path):
  mask = (_image(8) > 128).astype(np.uint8) * 255
  path = tmp_path / 'm.dcm'
  dicom.write_image(path, mask)
  assert dicom.read_pixels(path).dtype == np.uint8
  out = dicom.read_image(path)
  assert out.dtype == np.uint16
  np.testing.assert_array_equal(out, mask)


def test_signed_pixels_are_shifted_to_unsigned():
  path = get_testdata_file('MR_small.dcm', download=False)
  ds = pydicom.dcmread(path)
  assert ds.PixelRepresentation == 1
  expected = ds.pixel_array.astype(np.int32) + (1 << (ds.BitsStored - 1))
  np.testing.assert_array_equal(dicom.read_image(path), expected)


def test_compressed_syntax_decodes_with_an_installed_plugin():
  path = get_testdata_file('JPEG2000.dcm', download=False)
  assert get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID).is_available
  out = dicom.read_image(path)
  assert out.shape == (1024, 256) and out.dtype == np.uint16
  ds = pydicom.dcmread(path)
  shift = (1 << (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
  np.testing.assert_array_equal(out, ds.pixel_array.astype(np.int32) + shift)


def test_missing_decoder_names_the_package():
  if get_decoder(JPEGLSNearLossless).is_available:
    pytest.skip('a JPEG-LS decoder is installed here')
  path = get_testdata_file('JPEGLSNearLossless_16.dcm', download=False)
  with pytest.raises(dicom.DicomReadError, match='missing decoder.*pylibjpeg') as e:
    dicom.read_image(path)
  assert e.value.path == path


def _assert_error(path, pattern):
  with pytest.raises(dicom.DicomReadError, match=pattern) as e:
    dicom.read_image(path)
  assert str(path) in str(e.value)
  assert isinstance(e.value, ValueError)


def test_not_dicom(tmp_path):
  path = tmp_path / 'notes.dcm'
  path.write_text('patient_id,breast density\n')
  _assert_error(path, 'not a DICOM file')


def test_missing_file(tmp_path):
  _assert_error(tmp_path / 'absent.dcm', 'file not found')


def test_truncated_pixel_data(tmp_path):
  path = tmp_path / 'cut.dcm'
  dicom.write_image(path, _image(16, (200, 100)))
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 5000])
  # The header is still fine for indexing, which never reads pixels.
  assert dicom.read_header(path).rows == 200
  _assert_error(path, 'truncated pixel data')


def test_no_pixel_data(tmp_path):
  path = tmp_path / 'nopix.dcm'
  dicom.write_image(path, _image(16))
  ds = pydicom.dcmread(path)
  del ds.PixelData
  ds.save_as(path)
  _assert_error(path, 'no pixel data')


def test_colour_image(tmp_path):
  _assert_error(get_testdata_file('SC_jpeg_no_color_transform.dcm', download=False),
                'colour image')


def test_multi_frame(tmp_path):
  path = tmp_path / 'frames.dcm'
  dicom.write_image(path, _image(16, (20, 10)), extra={'NumberOfFrames': 2})
  ds = pydicom.dcmread(path)
  ds.Rows = 10  # two 10x10 frames in the same bytes
  ds.save_as(path)
  _assert_error(path, 'multi-frame')


def test_header_reads_uids_without_pixels(tmp_path):
  path = tmp_path / 'h.dcm'
  dicom.write_image(path, _image(16), patient_id='Mass-Training_P_00001_LEFT_CC',
                    study_uid='1.2.3', series_uid='1.2.3.4', series_description='cropped images',
                    instance_number=2)
  header = dicom.read_header(path)
  assert header == dicom.DicomHeader(
      path=os.fspath(path), patient_id='Mass-Training_P_00001_LEFT_CC', study_uid='1.2.3',
      series_uid='1.2.3.4', sop_uid=header.sop_uid, series_description='cropped images',
      instance_number=2, rows=40, columns=30, bits_stored=16)
  with pytest.raises(dicom.DicomReadError, match='not a DICOM file'):
    dicom.read_header(tmp_path)  # a directory
