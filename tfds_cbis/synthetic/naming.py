"""Which file holds what, and where: UIDs, study dates, series folders, CSV and disk paths.

UIDs and dates come from the stream (seed, 2). The two layouts differ only in `disk_path`: the
classic UID tree (as the CSVs name the files) or the current NBIA Data Retriever tree.
"""

from __future__ import annotations

import datetime
from typing import Callable, Sequence

import numpy as np

from tfds_cbis.synthetic.plan import File, Image, Row, pick

LAYOUTS = ('nbia', 'classic')
UID_ROOT = '1.3.6.1.4.1.9590.100.1.2.'
FULL_DESCRIPTION = 'full mammogram images'
MASK_DESCRIPTION = 'ROI mask images'
CROP_DESCRIPTION = 'cropped images'


class _UidMaker:
  """CBIS-style UIDs (root + 36-39 digits), unique, from one deterministic stream."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._seen: set[str] = set()

  def new(self, avoid: Sequence[str] = ()) -> str:
    while True:
      u = self._rng.random(40)
      n = pick(u[0], (39, 38, 37, 36), (0.77, 0.2, 0.025, 0.005))
      digits = [str(1 + int(u[1] * 9))] + [str(int(x * 10)) for x in u[2:n + 1]]
      uid = UID_ROOT + ''.join(digits)
      if uid not in self._seen and uid[-5:] not in avoid:
        self._seen.add(uid)
        return uid


def _study_date(u: float) -> str:
  day = datetime.date(2016, 1, 1) + datetime.timedelta(days=int(u * 730))
  return day.strftime('%m-%d-%Y')


def _assign_uids(images: list[Image], seed: int, rate: float) -> str:
  """Fills UIDs, dates and series-folder names; returns the NBIA manifest-folder stamp."""
  rng = np.random.default_rng([seed, 2])
  stamp = str(1_500_000_000_000 + int(rng.random() * 1e11))
  uids = _UidMaker(rng)
  no_na_rate = rate / 2  # A few percent of study folders lack the 'NA' part.
  studies: list[File] = []

  def study(f: File, subject: str, avoid: Sequence[str] = ()) -> None:
    u = rng.random(2)
    f.subject, f.study_uid = subject, uids.new(avoid)
    f.study_date, f.study_has_na = _study_date(u[0]), not u[1] < no_na_rate
    studies.append(f)

  for img in images:
    study(img.full, img.subject)
    img.full.series_uid, img.full.sop_uid = uids.new(), uids.new()
    img.full.description = img.full.folder_description = FULL_DESCRIPTION
    for row in img.rows:
      _assign_row_files(row, img.subject, uids, study, rng)
  if rate > 0 and len([r for i in images for r in i.rows]) >= 8:
    if all(s.study_has_na for s in studies):
      studies[int(rng.random() * len(studies))].study_has_na = False
  return stamp


def _assign_row_files(row: Row, subject: str, uids: _UidMaker,
                      study: Callable[..., None], rng: np.random.Generator) -> None:
  """Decides which file (series, index) holds the crop and which the mask, and the CSV paths."""
  abn_subject = f'{subject}_{row.lesion.abn_id}'
  first, second = File(), File()
  study(first, abn_subject)
  first.series_uid = uids.new()
  u = rng.random()
  if 'two_series' in row.quirks:
    # Real two-series folders use a second study too; keep folder suffixes distinct.
    study(second, abn_subject, avoid=(first.study_uid[-5:],))
    second.series_uid = uids.new(avoid=(first.series_uid[-5:],))
    csv_crop, csv_roi = first, second
  else:
    for attr in ('subject', 'study_uid', 'study_date', 'study_has_na', 'series_uid'):
      setattr(second, attr, getattr(first, attr))
    second.index_in_series = 1
    folder = MASK_DESCRIPTION if u < 0.85 else CROP_DESCRIPTION
    first.folder_description = second.folder_description = folder
    # Calc CSVs: crop = 000001, ROI = 000000; mass CSVs the reverse.
    csv_crop, csv_roi = (second, first) if row.lesion.kind == 'calc' else (first, second)
  crop, mask = (csv_roi, csv_crop) if 'swapped' in row.quirks else (csv_crop, csv_roi)
  crop.sop_uid, mask.sop_uid = uids.new(), uids.new()
  blank = 'blank_series_description' in row.quirks
  crop.description = '' if blank else CROP_DESCRIPTION
  mask.description = '' if blank else MASK_DESCRIPTION
  if 'two_series' in row.quirks:
    crop.folder_description, mask.folder_description = CROP_DESCRIPTION, MASK_DESCRIPTION
  for f in (first, second):
    f.instance = f.index_in_series + 1
    f.csv_path = f'{f.subject}/{f.study_uid}/{f.series_uid}/{f.index_in_series:06d}.dcm'
  row.crop, row.mask = crop, mask
  row.csv_crop_path, row.csv_roi_path = csv_crop.csv_path, csv_roi.csv_path


def _full_csv_path(img: Image) -> str:
  f = img.full
  return f'{f.subject}/{f.study_uid}/{f.series_uid}/000000.dcm'


def _disk_path(f: File, layout: str, stamp: str) -> str:
  """Path relative to out_dir: the classic UID tree or the NBIA descriptive tree."""
  if layout == 'classic':
    return f'CBIS-DDSM/{f.csv_path}'
  na = 'NA-' if f.study_has_na else ''
  study_dir = f'{f.study_date}-DDSM-{na}{f.study_uid[-5:]}'
  series_dir = f'1.000000-{f.folder_description}-{f.series_uid[-5:]}'
  return (f'manifest-{stamp}/CBIS-DDSM/{f.subject}/{study_dir}/{series_dir}/'
          f'1-{f.index_in_series + 1}.dcm')


def assign_files(images: list[Image], seed: int, quirk_rate: float, layout: str) -> None:
  """Gives every file of the plan its UIDs and paths; notes study folders without 'NA'."""
  stamp = _assign_uids(images, seed, quirk_rate)
  for img in images:
    img.full.csv_path = _full_csv_path(img)
    img.full.disk_path = _disk_path(img.full, layout, stamp)
    if not img.full.study_has_na:
      img.quirks.append('study_folder_without_na')
    for row in img.rows:
      if not (row.crop.study_has_na and row.mask.study_has_na):
        row.quirks.append('study_folder_without_na')
      row.crop.disk_path = _disk_path(row.crop, layout, stamp)
      row.mask.disk_path = _disk_path(row.mask, layout, stamp)
