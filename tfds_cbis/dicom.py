"""Reading (and, for tests and synthetic data, writing) CBIS-DDSM DICOM files.

Everything here uses pydicom only, so worker processes and Beam workers can import it without
TensorFlow. `read_image` is the one way the project turns a file into pixels; every failure is
a `DicomReadError` naming the file and the reason, so a build can skip the file and say why.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

# Which PyPI package provides a decoder for each family of compressed transfer syntaxes.
_DECODER_PACKAGES = {
    'JPEG 2000': 'pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)',
    'JPEG-LS': 'pylibjpeg-libjpeg or pyjpegls (pip install pylibjpeg pylibjpeg-libjpeg)',
    'JPEG': 'pillow, or pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)',
    'RLE': 'pylibjpeg-rle (pip install pylibjpeg pylibjpeg-rle)',
    'Deflate': 'nothing extra (zlib); the file may be damaged',
}
_HEADER_TAGS = (
    'PatientID', 'StudyInstanceUID', 'SeriesInstanceUID', 'SOPInstanceUID',
    'SeriesDescription', 'InstanceNumber', 'Rows', 'Columns', 'BitsAllocated', 'BitsStored',
    'PhotometricInterpretation', 'SamplesPerPixel', 'NumberOfFrames',
)
# CBIS-DDSM's files are Secondary Capture objects; so are the ones write_image makes.
SECONDARY_CAPTURE_SOP_CLASS = UID('1.2.840.10008.5.1.4.1.1.7')


class DicomReadError(ValueError):
  """A DICOM file that cannot be turned into a greyscale image; the message says why."""

  def __init__(self, path: str | os.PathLike[str], reason: str):
    self.path = os.fspath(path)
    self.reason = reason
    super().__init__(f'{self.path}: {reason}')


@dataclasses.dataclass(frozen=True)
class DicomHeader:
  """The header fields that indexing needs, read without the pixel data."""

  path: str
  patient_id: str
  study_uid: str
  series_uid: str
  sop_uid: str
  series_description: str
  instance_number: int | None
  rows: int
  columns: int
  bits_stored: int


def _dcmread(path, fileobj=None, **kwargs) -> pydicom.Dataset:
  try:
    return pydicom.dcmread(fileobj or os.fspath(path), **kwargs)
  except FileNotFoundError:
    raise DicomReadError(path, 'file not found') from None
  except IsADirectoryError:
    raise DicomReadError(path, 'is a directory, not a DICOM file') from None
  except InvalidDicomError as e:
    raise DicomReadError(
        path, f'not a DICOM file (no DICM preamble or valid dataset: {e})') from None
  except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    # pydicom raises a variety of these on truncated or garbled headers.
    raise DicomReadError(path, f'unreadable DICOM header ({type(e).__name__}: {e})') from None


def read_header(path: str | os.PathLike[str]) -> DicomHeader:
  """Reads the indexing fields of one file; never touches the pixel data."""
  ds = _dcmread(path, stop_before_pixels=True, specific_tags=list(_HEADER_TAGS))
  missing = [t for t in ('StudyInstanceUID', 'SeriesInstanceUID', 'Rows', 'Columns')
             if t not in ds]
  if missing:
    raise DicomReadError(path, f'DICOM header lacks {", ".join(missing)}')
  instance = ds.get('InstanceNumber')
  return DicomHeader(
      path=os.fspath(path),
      patient_id=str(ds.get('PatientID', '')),
      study_uid=str(ds.StudyInstanceUID),
      series_uid=str(ds.SeriesInstanceUID),
      sop_uid=str(ds.get('SOPInstanceUID', '')),
      series_description=str(ds.get('SeriesDescription', '') or '').strip(),
      instance_number=int(instance) if instance not in (None, '') else None,
      rows=int(ds.Rows),
      columns=int(ds.Columns),
      bits_stored=int(ds.get('BitsStored', ds.get('BitsAllocated', 16)) or 16),
  )


def _decoder_problem(ds: pydicom.Dataset) -> str | None:
  """Names the package to install when the file's transfer syntax has no usable decoder."""
  tsyntax = ds.file_meta.get('TransferSyntaxUID') if 'file_meta' in ds.__dict__ else None
  if tsyntax is None or not UID(tsyntax).is_compressed:
    return None
  from pydicom.pixels import get_decoder  # pylint: disable=g-import-not-at-top
  try:
    decoder = get_decoder(tsyntax)
  except NotImplementedError:
    return f'no pydicom decoder exists for transfer syntax {UID(tsyntax).name} ({tsyntax})'
  if decoder.is_available:
    return None
  name = UID(tsyntax).name
  package = next((p for k, p in _DECODER_PACKAGES.items() if k in name), 'a pydicom decoder plugin')
  return (f'missing decoder for compressed transfer syntax {name} ({tsyntax}); '
          f'install {package}')


def read_pixels(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads a greyscale image as a 2-D uint8 or uint16 array where larger means denser.

  MONOCHROME1 is inverted against BitsStored, signed data is shifted to unsigned, and bits
  above BitsStored are masked off. Raises DicomReadError for anything else.
  """
  # Validate from the header, then read the pixels. Uncompressed little-endian data (all of
  # CBIS-DDSM) goes straight from the file into the array; anything else is decoded by
  # pydicom.pixels.pixel_array. Both avoid Dataset.pixel_array, which loads the whole file
  # into memory and then copies it (several times slower on a 4000x3000 mammogram).
  try:
    fh = open(os.fspath(path), 'rb')
  except FileNotFoundError:
    raise DicomReadError(path, 'file not found') from None
  except OSError as e:
    raise DicomReadError(path, f'cannot open ({e})') from None
  with fh:
    ds = _dcmread(path, fh, stop_before_pixels=True)
    _check_greyscale(path, ds)
    arr = _native_pixels(path, fh, ds)
  if arr is None:
    arr = _decoded_pixels(path, ds)
  bits_stored = int(ds.get('BitsStored', arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
  if bits_stored > 16:
    raise DicomReadError(path, f'BitsStored={bits_stored}; only up to 16 bits are supported')
  if arr.dtype.kind == 'i':  # PixelRepresentation 1: shift [-2^(b-1), 2^(b-1)) to [0, 2^b).
    arr = arr.astype(np.int32) + (1 << (bits_stored - 1))
  out_dtype = np.uint8 if bits_stored <= 8 else np.uint16
  top = (1 << bits_stored) - 1
  if arr.dtype != out_dtype:
    arr = arr.astype(out_dtype)
  if bits_stored < out_dtype().itemsize * 8:
    arr &= out_dtype(top)
  if str(ds.get('PhotometricInterpretation', '')).strip() == 'MONOCHROME1':
    arr = out_dtype(top) - arr
  return arr


def _check_greyscale(path, ds: pydicom.Dataset) -> None:
  """Rejects multi-frame, colour and undecodable files with the reason."""
  frames = int(ds.get('NumberOfFrames', 1) or 1)
  if frames > 1:
    raise DicomReadError(path, f'multi-frame image ({frames} frames); expected one 2-D image')
  photometric = str(ds.get('PhotometricInterpretation', '')).strip()
  samples = int(ds.get('SamplesPerPixel', 1) or 1)
  if samples != 1 or photometric not in ('MONOCHROME1', 'MONOCHROME2'):
    raise DicomReadError(
        path, f'colour image ({photometric or "no PhotometricInterpretation"}, '
        f'{samples} samples per pixel); expected MONOCHROME1/2 greyscale')
  problem = _decoder_problem(ds)
  if problem:
    raise DicomReadError(path, problem)


def _native_layout(path, fh, ds: pydicom.Dataset) -> tuple[np.dtype, int] | None:
  """The dtype and pixel count of uncompressed little-endian pixel data, leaving fh at its
  first byte (right after the header read with stop_before_pixels).

  Returns None when the file needs pydicom's decoders (other syntaxes, unusual elements).
  """
  syntax = ds.file_meta.get('TransferSyntaxUID') if 'file_meta' in ds.__dict__ else None
  if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
    return None
  bits = int(ds.get('BitsAllocated', 0) or 0)
  if bits not in (8, 16) or 'Rows' not in ds or 'Columns' not in ds:
    return None
  head = fh.read(8)
  if len(head) < 8:
    raise DicomReadError(path, 'no pixel data (the file ends after the header)')
  group, element = struct.unpack('<HH', head[:4])
  if (group, element) != (0x7FE0, 0x0010):
    return None
  if syntax == ExplicitVRLittleEndian:
    if head[4:6] not in (b'OB', b'OW', b'UN'):
      return None
    head = fh.read(4)
    if len(head) < 4:
      raise DicomReadError(path, 'truncated pixel data (element header cut off)')
  length = struct.unpack('<I', head[-4:])[0]
  if length == 0xFFFFFFFF:
    return None  # encapsulated: leave it to pydicom
  dtype = np.dtype(f'<{"i" if ds.get("PixelRepresentation", 0) else "u"}{bits // 8}')
  return dtype, int(ds.Rows) * int(ds.Columns)


def _native_pixels(path, fh, ds: pydicom.Dataset) -> np.ndarray | None:
  """Reads uncompressed little-endian pixel data (see _native_layout); None: use pydicom."""
  layout = _native_layout(path, fh, ds)
  if layout is None:
    return None
  dtype, count = layout
  arr = np.fromfile(fh, dtype=dtype, count=count)
  if arr.size < count:
    raise DicomReadError(path, f'truncated pixel data ({arr.size * dtype.itemsize} of '
                         f'{count * dtype.itemsize} bytes)')
  return arr.reshape(int(ds.Rows), int(ds.Columns)).astype(dtype.newbyteorder('='), copy=False)


def pixel_data_problem(path: str | os.PathLike[str]) -> str | None:
  """Why `read_image` would fail on this file (e.g. pixel data shorter than the header says),
  or None. Uncompressed files, all of CBIS-DDSM, are judged by their size without reading the
  pixels; others are decoded."""
  try:
    with open(os.fspath(path), 'rb') as fh:
      ds = _dcmread(path, fh, stop_before_pixels=True)
      _check_greyscale(path, ds)
      layout = _native_layout(path, fh, ds)
      if layout is not None:
        dtype, count = layout
        have = os.fstat(fh.fileno()).st_size - fh.tell()
        if have < count * dtype.itemsize:
          return f'truncated pixel data ({have} of {count * dtype.itemsize} bytes)'
        return None
    read_pixels(path)
  except DicomReadError as e:
    return e.reason
  except OSError as e:
    return f'cannot open ({e})'
  return None


def _decoded_pixels(path, ds: pydicom.Dataset) -> np.ndarray:
  try:
    arr = pixel_array(os.fspath(path))
  except AttributeError as e:  # pydicom's way of saying there is no PixelData element
    raise DicomReadError(path, f'no pixel data ({e})') from None
  except (ValueError, RuntimeError, NotImplementedError, EOFError, OSError, TypeError) as e:
    msg = str(e)
    if any(k in msg.lower() for k in ('less than expected', 'truncated', 'end of',
                                      'cannot reshape')):
      raise DicomReadError(path, f'truncated pixel data ({msg})') from None
    raise DicomReadError(path, f'cannot decode pixel data ({type(e).__name__}: {msg})') from None
  if arr.ndim != 2:
    raise DicomReadError(path, f'pixel array has shape {arr.shape}; expected a 2-D image')
  return arr


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads a greyscale image as a 2-D uint16 array where larger means denser."""
  return read_pixels(path).astype(np.uint16, copy=False)


def write_image(path: str | os.PathLike[str], pixels: np.ndarray, *,
                patient_id: str = '', study_uid: str | None = None,
                series_uid: str | None = None, sop_uid: str | None = None,
                series_description: str | None = '', instance_number: int = 1,
                bits_stored: int | None = None, photometric: str = 'MONOCHROME2',
                transfer_syntax: str = ExplicitVRLittleEndian,
                extra: dict[str, Any] | None = None) -> None:
  """Writes a single-frame greyscale DICOM file in the layout CBIS-DDSM uses.

  Used by the synthetic CBIS-DDSM generator and by tests that need specific encodings
  (big endian, implicit VR, RLE, MONOCHROME1, reduced BitsStored).
  """
  pixels = np.ascontiguousarray(pixels)
  if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
    raise ValueError(f'write_image wants a 2-D uint8/uint16 array, got {pixels.dtype} '
                     f'{pixels.shape}')
  bits_allocated = pixels.dtype.itemsize * 8
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE_SOP_CLASS
  meta.MediaStorageSOPInstanceUID = sop_uid or pydicom.uid.generate_uid()
  meta.TransferSyntaxUID = UID(transfer_syntax)
  ds = FileDataset(os.fspath(path), {}, file_meta=meta, preamble=b'\0' * 128)
  ds.SOPClassUID = meta.MediaStorageSOPClassUID
  ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  ds.PatientID = patient_id
  ds.PatientName = patient_id
  ds.StudyInstanceUID = study_uid or pydicom.uid.generate_uid()
  ds.SeriesInstanceUID = series_uid or pydicom.uid.generate_uid()
  ds.Modality = 'MG'
  ds.SeriesNumber = 1
  ds.InstanceNumber = instance_number
  if series_description is not None:
    ds.SeriesDescription = series_description
  ds.BodyPartExamined = 'BREAST'
  for key, value in (extra or {}).items():
    setattr(ds, key, value)
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = photometric
  ds.Rows, ds.Columns = pixels.shape
  ds.BitsAllocated = bits_allocated
  ds.BitsStored = bits_stored or bits_allocated
  ds.HighBit = ds.BitsStored - 1
  ds.PixelRepresentation = 0
  syntax = UID(transfer_syntax)
  if syntax == RLELossless:
    ds.compress(RLELossless, pixels, encoding_plugin='pydicom')
  elif syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian):
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder('>' if big else '<')).tobytes()
  else:
    raise ValueError(f'write_image cannot encode transfer syntax {syntax.name}')
  os.makedirs(os.path.dirname(os.fspath(path)) or '.', exist_ok=True)
  pydicom.dcmwrite(os.fspath(path), ds, enforce_file_format=True,
                   implicit_vr=syntax == ImplicitVRLittleEndian,
                   little_endian=syntax != ExplicitVRBigEndian)
