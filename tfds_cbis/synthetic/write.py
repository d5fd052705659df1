"""The files of a synthetic release: each image's DICOMs, the four CSVs and the manifest.

`render_and_write` is the worker: it renders one full mammogram from the image's own stream
(seed, 1, index) and writes it with its masks and crops. The CSVs are byte-for-byte in the TCIA
format.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import numpy as np

from tfds_cbis import dicom
from tfds_cbis import strict_json
from tfds_cbis.synthetic import render
from tfds_cbis.synthetic.plan import CSV_FILES, ROW_QUIRKS, TYPE_NAME, File, Image, Row

MANIFEST_NAME = 'synthetic_manifest.json'

# The exact header lines of the TCIA files (note the density column names).
CSV_HEADERS = {
    'calc': ('patient_id,breast density,left or right breast,image view,abnormality id,'
             'abnormality type,calc type,calc distribution,assessment,pathology,subtlety,'
             'image file path,cropped image file path,ROI mask file path'),
    'mass': ('patient_id,breast_density,left or right breast,image view,abnormality id,'
             'abnormality type,mass shape,mass margins,assessment,pathology,subtlety,'
             'image file path,cropped image file path,ROI mask file path'),
}
# The quoted (LF-terminated) cell sits in a fixed column per type, even in two-series rows.
_QUOTED_COLUMN = {'calc': 12, 'mass': 13}


def _resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  ri = np.minimum(((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0]).astype(int),
                  mask.shape[0] - 1)
  ci = np.minimum(((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1]).astype(int),
                  mask.shape[1] - 1)
  return mask[ri][:, ci]


def _mismatch_shape(h: int, w: int, aspect_ok: bool) -> tuple[int, int]:
  """About 13 % smaller in both axes (aspect kept within 1 %), or rows x0.87, cols x0.95."""
  return round(h * 0.87), round(w * (0.87 if aspect_ok else 0.95))


@dataclasses.dataclass
class Job:
  """Everything a worker needs for one image; paths are already resolved for the layout."""

  seed: int
  out_dir: str
  shape: tuple[int, int]
  image: Image


def _write(out_dir: str, f: File, pixels: np.ndarray, breast: str, view: str) -> None:
  date = datetime.datetime.strptime(f.study_date, '%m-%d-%Y').strftime('%Y%m%d')
  dicom.write_image(
      os.path.join(out_dir, f.disk_path), pixels, patient_id=f.subject,
      study_uid=f.study_uid, series_uid=f.series_uid, sop_uid=f.sop_uid,
      series_description=f.description, instance_number=f.instance,
      bits_stored=pixels.dtype.itemsize * 8,
      extra={'ImageLaterality': breast[0], 'ViewPosition': view, 'StudyDate': date})


def render_and_write(job: Job) -> list[dict]:
  """Renders one image with its lesions, writes all its files; returns per-row geometry."""
  img = job.image
  h, w = job.shape
  rng = np.random.default_rng([job.seed, 1, img.index])
  breast = render.breast_geometry(rng, h, w, img.view)
  pixels = render.render_tissue(rng, breast, h, w, img.density)
  taken: list = []
  drawn = [render.render_lesion(rng, row.lesion, breast, taken, h, w) for row in img.rows]
  for d in drawn:
    win = pixels[d.y0:d.y0 + d.delta.shape[0], d.x0:d.x0 + d.delta.shape[1]]
    win += d.delta
  pixels += rng.standard_normal((h, w), dtype=np.float32) * 140.0
  np.clip(pixels, 0, 65535, out=pixels)
  full = np.rint(pixels).astype(np.uint16)
  flip = img.breast == 'RIGHT'
  if flip:
    full = np.ascontiguousarray(full[:, ::-1])
  _write(job.out_dir, img.full, full, img.breast, img.view)
  results = []
  for row, d in zip(img.rows, drawn):
    mask = np.zeros((h, w), np.uint8)
    mask[d.y0:d.y0 + d.mask.shape[0], d.x0:d.x0 + d.mask.shape[1]][d.mask] = 255
    if flip:
      mask = np.ascontiguousarray(mask[:, ::-1])
    bbox = _bbox(mask)
    crop = _crop(rng, full, bbox)
    stored = mask
    if row.mask_aspect_ok is not None:
      stored = _resize_nearest(mask, _mismatch_shape(h, w, row.mask_aspect_ok))
    _write(job.out_dir, row.mask, stored, img.breast, img.view)
    _write(job.out_dir, row.crop, crop, img.breast, img.view)
    results.append({'bbox': bbox, 'mask_shape': list(stored.shape),
                    'crop_shape': list(crop.shape)})
  return results


def _bbox(mask: np.ndarray) -> list[int]:
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  return [int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1]


def _crop(rng: np.random.Generator, image: np.ndarray, bbox: list[int]) -> np.ndarray:
  """The lesion's bounding box plus a random margin on each side, clipped to the image."""
  y0, x0, y1, x1 = bbox
  size = max(y1 - y0, x1 - x0)
  m = np.rint(size * rng.uniform(0.05, 0.4, 4)).astype(int) + 2
  return image[max(y0 - m[0], 0):y1 + m[1], max(x0 - m[2], 0):x1 + m[3]].copy()


def _csv_cells(img: Image, row: Row) -> list[str]:
  les = row.lesion
  return [img.patient_id, str(img.density), img.breast, img.view, str(les.abn_id),
          TYPE_NAME[img.kind], les.descriptor1, les.descriptor2, str(les.assessment),
          les.pathology, str(les.subtlety), img.full.csv_path, row.csv_crop_path,
          row.csv_roi_path]


def _csv_bytes(kind: str, entries: list[tuple[Image, Row]]) -> bytes:
  """The TCIA byte format: CRLF rows, one quoted cell per row ending in a bare LF."""
  lines = [CSV_HEADERS[kind] + '\r\n']
  for img, row in entries:
    cells = _csv_cells(img, row)
    col = _QUOTED_COLUMN[kind]
    cells[col] = f'"{cells[col]}\n"'
    lines.append(','.join(cells) + '\r\n')
  return ''.join(lines).encode('ascii')


def write_csvs(out_dir: str, images: list[Image]) -> None:
  for (kind, split), name in CSV_FILES.items():
    entries = [(img, row) for img in images if (img.kind, img.split) == (kind, split)
               for row in img.rows]
    entries.sort(key=lambda e: (e[0].patient_id, e[0].breast, e[0].view, e[1].lesion.abn_id))
    with open(os.path.join(out_dir, name), 'wb') as f:
      f.write(_csv_bytes(kind, entries))


def manifest_image(img: Image, shape: tuple[int, int], geometry: list[dict]) -> dict:
  abnormalities = []
  for row, geo in zip(img.rows, geometry):
    les = row.lesion
    entry = {
        'abnormality_id': les.abn_id, 'pathology': les.pathology, 'label': les.label,
        'bbox': geo['bbox'], 'mask_path': row.mask.disk_path, 'crop_path': row.crop.disk_path,
        'mask_shape': geo['mask_shape'], 'crop_shape': geo['crop_shape'],
        'quirks': list(row.quirks),
        'descriptors': [les.descriptor1, les.descriptor2],
        'assessment': les.assessment, 'subtlety': les.subtlety,
        'morphology_score': round(les.score, 4),
        'csv_crop_path': row.csv_crop_path, 'csv_roi_path': row.csv_roi_path,
        'mask_series_uid': row.mask.series_uid, 'crop_series_uid': row.crop.series_uid,
    }
    if row.mask_aspect_ok is not None:
      entry['mask_aspect_ok'] = row.mask_aspect_ok
    abnormalities.append(entry)
  return {
      'subject': img.subject, 'patient_id': img.patient_id, 'official_split': img.split,
      'abnormality_type': TYPE_NAME[img.kind], 'breast': img.breast, 'view': img.view,
      'density': img.density, 'study_uid': img.full.study_uid,
      'series_uid': img.full.series_uid, 'shape': list(shape), 'path': img.full.disk_path,
      'csv_path': img.full.csv_path, 'quirks': list(img.quirks),
      'abnormalities': abnormalities,
  }


def manifest_counts(images: list[Image]) -> dict:
  rows = [(img, r) for img in images for r in img.rows]
  per_split: dict[str, dict[str, int]] = {}
  for split in ('train', 'test'):
    labels = {'BENIGN_CALCIFICATION': 0, 'MALIGNANT_CALCIFICATION': 0, 'BENIGN_MASS': 0,
              'MALIGNANT_MASS': 0}
    for img, row in rows:
      if img.split == split:
        labels[row.lesion.label] += 1
    per_split[split] = {
        'patients': len({i.patient_id for i in images if i.split == split}),
        'images': sum(i.split == split for i in images),
        'abnormalities': sum(labels.values()), **labels}
  quirks = {q: sum(q in r.quirks for _, r in rows) for q in ROW_QUIRKS}
  quirks['mask_size_mismatch_aspect_changed'] = sum(r.mask_aspect_ok is False for _, r in rows)
  quirks['study_folder_without_na'] = (
      sum('study_folder_without_na' in i.quirks for i in images)
      + sum('study_folder_without_na' in r.quirks for _, r in rows))
  quirks['multiple_abnormalities_images'] = sum(len(i.rows) > 1 for i in images)
  quirks['cross_split_patients'] = len(
      {i.patient_id for i in images if 'cross_split_patient' in i.quirks})
  pathology = {p: sum(r.lesion.pathology == p for _, r in rows)
               for p in ('BENIGN', 'BENIGN_WITHOUT_CALLBACK', 'MALIGNANT')}
  csv_rows = {name: sum(1 for img, _ in rows if (img.kind, img.split) == key)
              for key, name in CSV_FILES.items()}
  return {'patients': len({i.patient_id for i in images}), 'images': len(images),
          'abnormalities': len(rows), 'files': len(images) + 2 * len(rows),
          'per_split': per_split, 'pathology': pathology, 'csv_rows': csv_rows,
          'quirks': quirks}


def write_manifest(out_dir: str, manifest: dict) -> None:
  with open(os.path.join(out_dir, MANIFEST_NAME), 'w', encoding='utf-8') as f:
    strict_json.dump(manifest, f, indent=1)
    f.write('\n')
