"""Synthetic CBIS-DDSM: mammogram-like DICOMs, masks, crops and CSVs in the real on-disk format.

`generate` writes a small, fully deterministic stand-in for the CBIS-DDSM release so the
builder, its tests and benchmarks can run without the 163 GB download:

* the four case-description CSVs, byte-for-byte in the TCIA format (CRLF, one quoted path
  cell ending in a bare LF per row, `breast density` vs `breast_density`, `N/A`);
* a DICOM tree in the classic UID layout or the current NBIA Data Retriever layout;
* the data quirks a reader must survive (crop/mask swapped, two series per abnormality,
  masks of another size, blank SeriesDescription, several abnormalities per image,
  patients crossing the official split, study folders without `NA`);
* images in which mass vs calcification is easy and benign vs malignant is as hard as the
  `difficulty` knob says (see `_blend_score`).

Randomness comes from `np.random.default_rng` streams keyed by the seed: one stream plans
the dataset (patients, labels, quirks, UIDs), and image i is rendered from its own stream
(seed, 1, i). So the output does not depend on worker count or order, and the layout only
changes paths. Only numpy, scipy and pydicom are used, so worker processes stay light.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Sequence

import numpy as np
from scipy import ndimage

from tfds_cbis import dicom

DEFAULT_PATIENTS = 160
DEFAULT_IMAGE_SHAPE = (1024, 640)
LAYOUTS = ('nbia', 'classic')
MANIFEST_NAME = 'synthetic_manifest.json'
UID_ROOT = '1.3.6.1.4.1.9590.100.1.2.'
ROW_QUIRKS = ('swapped', 'two_series', 'mask_size_mismatch', 'blank_series_description')

# The exact header lines of the TCIA files (note the density column names).
CSV_HEADERS = {
    'calc': ('patient_id,breast density,left or right breast,image view,abnormality id,'
             'abnormality type,calc type,calc distribution,assessment,pathology,subtlety,'
             'image file path,cropped image file path,ROI mask file path'),
    'mass': ('patient_id,breast_density,left or right breast,image view,abnormality id,'
             'abnormality type,mass shape,mass margins,assessment,pathology,subtlety,'
             'image file path,cropped image file path,ROI mask file path'),
}
CSV_FILES = {
    ('calc', 'train'): 'calc_case_description_train_set.csv',
    ('calc', 'test'): 'calc_case_description_test_set.csv',
    ('mass', 'train'): 'mass_case_description_train_set.csv',
    ('mass', 'test'): 'mass_case_description_test_set.csv',
}
# The quoted (LF-terminated) cell sits in a fixed column per type, even in two-series rows.
_QUOTED_COLUMN = {'calc': 12, 'mass': 13}
_TYPE_NAME = {'calc': 'calcification', 'mass': 'mass'}
_SUBJECT_PREFIX = {('calc', 'train'): 'Calc-Training', ('calc', 'test'): 'Calc-Test',
                   ('mass', 'train'): 'Mass-Training', ('mass', 'test'): 'Mass-Test'}
FULL_DESCRIPTION = 'full mammogram images'
MASK_DESCRIPTION = 'ROI mask images'
CROP_DESCRIPTION = 'cropped images'

# Descriptor vocabularies by morphology score band (score 0 = textbook benign, 1 = malignant).
_CALC_TYPES = (
    (0.3, ('ROUND_AND_REGULAR', 'LUCENT_CENTER', 'COARSE', 'VASCULAR', 'EGGSHELL',
           'ROUND_AND_REGULAR-LUCENT_CENTER', 'LUCENT_CENTERED', 'DYSTROPHIC')),
    (0.5, ('PUNCTATE', 'AMORPHOUS', 'PUNCTATE-AMORPHOUS', 'LUCENT_CENTER-PUNCTATE')),
    (0.75, ('PLEOMORPHIC', 'PUNCTATE-PLEOMORPHIC', 'AMORPHOUS-PLEOMORPHIC')),
    (1.01, ('PLEOMORPHIC', 'FINE_LINEAR_BRANCHING', 'PLEOMORPHIC-FINE_LINEAR_BRANCHING')),
)
_MASS_SHAPES = (
    (0.3, ('ROUND', 'OVAL', 'OVAL')),
    (0.55, ('OVAL', 'LOBULATED', 'LOBULATED')),
    (1.01, ('IRREGULAR', 'IRREGULAR', 'IRREGULAR', 'LOBULATED', 'ARCHITECTURAL_DISTORTION',
            'IRREGULAR-ARCHITECTURAL_DISTORTION')),
)
_MASS_MARGINS = (
    (0.3, ('CIRCUMSCRIBED', 'CIRCUMSCRIBED', 'OBSCURED')),
    (0.55, ('OBSCURED', 'MICROLOBULATED', 'ILL_DEFINED', 'CIRCUMSCRIBED')),
    (1.01, ('SPICULATED', 'SPICULATED', 'ILL_DEFINED', 'MICROLOBULATED')),
)
_CALC_DISTRIBUTIONS = ('CLUSTERED', 'CLUSTERED', 'CLUSTERED', 'REGIONAL', 'SEGMENTAL',
                       'LINEAR')
# Assessment (BI-RADS 0-5) given the true pathology; roughly the real CSV frequencies.
_ASSESSMENT = {
    'MALIGNANT': ((0, 0.06), (3, 0.08), (4, 0.46), (5, 0.40)),
    'BENIGN': ((0, 0.12), (2, 0.22), (3, 0.26), (4, 0.37), (5, 0.03)),
    'BENIGN_WITHOUT_CALLBACK': ((2, 0.80), (3, 0.15), (4, 0.05)),
}
_SUBTLETY = ((1, 0.06), (2, 0.14), (3, 0.28), (4, 0.25), (5, 0.27))
_DENSITY = ((1, 0.16), (2, 0.38), (3, 0.30), (4, 0.16))


# ------------------------------------------------------------------------------------------
# Plan: everything decided before rendering (labels, quirks, UIDs, paths).
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Lesion:
  """One lesion of one breast; every view of that breast shows it under the same id."""

  abn_id: int
  kind: str  # 'calc' or 'mass'
  pathology: str
  score: float  # Morphology score in [0, 1] after difficulty blending.
  descriptor1: str  # calc type / mass shape
  descriptor2: str  # calc distribution / mass margins
  assessment: int
  subtlety: int
  contrast: float  # Multiplies the lesion amplitude.

  @property
  def malignant(self) -> bool:
    return self.pathology == 'MALIGNANT'

  @property
  def label(self) -> str:
    kind = 'CALCIFICATION' if self.kind == 'calc' else 'MASS'
    return f'{"MALIGNANT" if self.malignant else "BENIGN"}_{kind}'


@dataclasses.dataclass
class _File:
  """One DICOM file: its CSV-style path, where it lies on disk and its header values."""

  csv_path: str = ''
  disk_path: str = ''
  subject: str = ''
  study_uid: str = ''
  series_uid: str = ''
  sop_uid: str = ''
  description: str = ''
  instance: int = 1
  study_date: str = ''  # MM-DD-YYYY, as in NBIA folder names.
  study_has_na: bool = True
  folder_description: str = ''  # The one description an NBIA series folder shows.
  index_in_series: int = 0  # 0 -> 000000.dcm / 1-1.dcm, 1 -> 000001.dcm / 1-2.dcm.


@dataclasses.dataclass
class _Row:
  """One abnormality on one image: one CSV row, one mask file and one crop file."""

  lesion: _Lesion
  quirks: list[str] = dataclasses.field(default_factory=list)
  mask_aspect_ok: bool | None = None
  crop: _File = dataclasses.field(default_factory=_File)  # The file that holds the crop.
  mask: _File = dataclasses.field(default_factory=_File)  # The file that holds the mask.
  csv_crop_path: str = ''
  csv_roi_path: str = ''


@dataclasses.dataclass
class _Image:
  """One full mammogram (one CSV image path) and its abnormality rows."""

  index: int  # Seeds the image's own random stream.
  patient_id: str
  kind: str
  split: str
  breast: str
  view: str
  density: int
  rows: list[_Row]
  full: _File = dataclasses.field(default_factory=_File)
  quirks: list[str] = dataclasses.field(default_factory=list)

  @property
  def subject(self) -> str:
    return f'{_SUBJECT_PREFIX[self.kind, self.split]}_{self.patient_id}_{self.breast}_{self.view}'


def _pick(u: float, options: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
  """Chooses from options with one uniform draw, so every call consumes the same randomness."""
  if probs is None:
    return options[min(int(u * len(options)), len(options) - 1)]
  edges = np.cumsum(probs) / np.sum(probs)
  return options[min(int(np.searchsorted(edges, u, side='right')), len(options) - 1)]


def _pick_weighted(u: float, table: Sequence[tuple[Any, float]]) -> Any:
  return _pick(u, [v for v, _ in table], [p for _, p in table])


def _band(score: float, bands: Sequence[tuple]) -> tuple:
  return next(b for b in bands if score < b[0])


def _blend_score(malignant: bool, difficulty: float, z: float) -> float:
  """Morphology score: the class value pulled toward 0.5 and blurred as difficulty rises.

  At difficulty 0 benign lesions get 0 and malignant 1; at difficulty 1 both get
  0.5 + N(0, 0.4²) clipped, i.e. the same distribution, so morphology says nothing.
  """
  target = 1.0 if malignant else 0.0
  return float(np.clip(target + (0.5 - target) * difficulty + 0.4 * difficulty * z, 0, 1))


def _make_lesion(rng: np.random.Generator, kind: str, abn_id: int, difficulty: float,
                 malignant_hint: bool | None) -> _Lesion:
  """Draws one lesion's labels and descriptors; always consumes the same randomness."""
  u = rng.random(10)
  z = float(rng.standard_normal())
  malignant = u[0] < 0.4
  if malignant_hint is not None and u[9] < 0.85:  # Lesions of one breast mostly agree.
    malignant = malignant_hint
  if malignant:
    pathology = 'MALIGNANT'
  else:
    pathology = 'BENIGN_WITHOUT_CALLBACK' if u[1] < 0.2 else 'BENIGN'
  score = _blend_score(malignant, difficulty, z)
  if kind == 'calc':
    d1 = _pick(u[2], _band(score, _CALC_TYPES)[1])
    if score >= 0.7 and u[3] < 0.5:
      d2 = 'LINEAR' if u[3] < 0.3 else 'SEGMENTAL'
    else:
      d2 = _pick(u[3], _CALC_DISTRIBUTIONS[:5] if score < 0.7 else _CALC_DISTRIBUTIONS)
    d1 = 'N/A' if u[7] < 0.015 else d1
    d2 = 'N/A' if u[8] < 0.15 else d2
  else:
    d1 = _pick(u[2], _band(score, _MASS_SHAPES)[1])
    d2 = _pick(u[3], _band(score, _MASS_MARGINS)[1])
    d1 = 'N/A' if u[7] < 0.01 else d1
    d2 = 'N/A' if u[8] < 0.03 else d2
  subtlety = _pick_weighted(u[5], _SUBTLETY)
  # Higher difficulty lowers contrast; subtle lesions (low subtlety score) are fainter.
  fade = 0.45 if kind == 'mass' else 0.3
  contrast = (1 - fade * difficulty) * (0.7 + 0.075 * subtlety) * (0.9 + 0.2 * u[6])
  return _Lesion(abn_id=abn_id, kind=kind, pathology=pathology, score=score,
                 descriptor1=d1, descriptor2=d2,
                 assessment=_pick_weighted(u[4], _ASSESSMENT[pathology]),
                 subtlety=subtlety, contrast=float(contrast))


@dataclasses.dataclass
class _BreastCase:
  """One breast of one (patient, type, split) case: its lesions and the views taken."""

  patient_id: str
  kind: str
  split: str
  breast: str
  density: int
  views: list[str]
  lesions: list[_Lesion]


def _make_case(rng: np.random.Generator, patient_id: str, kind: str, split: str, density: int,
               difficulty: float) -> list[_BreastCase]:
  u = rng.random(3)
  breasts = ['LEFT', 'RIGHT'] if u[0] < 0.08 else [_pick(u[1], ('LEFT', 'RIGHT'))]
  cases = []
  for breast in breasts:
    v = rng.random(2)
    views = _pick(v[0], (['CC', 'MLO'], ['CC'], ['MLO']), (0.8, 0.08, 0.12))
    n_lesions = _pick(v[1], (1, 2, 3), (0.88, 0.08, 0.04))
    lesions: list[_Lesion] = []
    for abn_id in range(1, n_lesions + 1):
      hint = lesions[0].malignant if lesions else None
      lesions.append(_make_lesion(rng, kind, abn_id, difficulty, hint))
    cases.append(_BreastCase(patient_id, kind, split, breast, density, views, lesions))
  return cases


def _plan_cases(patients: int, seed: int, difficulty: float) -> tuple[list[_BreastCase], set[str]]:
  """Patients, their official split(s), types, breasts, views and lesions."""
  rng = np.random.default_rng([seed, 0])
  cases: list[_BreastCase] = []
  crossing: set[str] = set()
  number = 0
  for _ in range(patients):
    u = rng.random(6)
    number += 1 + int(u[0] < 0.3)
    pid = f'P_{number:05d}'
    density = _pick_weighted(u[1], _DENSITY)
    split = 'test' if u[2] < 0.2 else 'train'
    kind = 'mass' if u[3] < 0.54 else 'calc'
    other_kind = 'calc' if kind == 'mass' else 'mass'
    other_split = 'train' if split == 'test' else 'test'
    plan = [(kind, split)]
    if u[4] < 0.02:  # Calc case in one official split, mass case in the other.
      plan.append((other_kind, other_split))
      crossing.add(pid)
    elif u[4] < 0.07:
      plan.append((other_kind, split))
    for k, s in plan:
      cases.extend(_make_case(rng, pid, k, s, density, difficulty))
  n_rows = sum(len(c.views) * len(c.lesions) for c in cases)
  if n_rows >= 8:  # Make sure tiny sets still show every structural quirk.
    cases = _fill_empty_csvs(rng, cases, crossing, difficulty)
    if not crossing:
      first = cases[0]
      other_kind = 'calc' if first.kind == 'mass' else 'mass'
      other_split = 'train' if first.split == 'test' else 'test'
      extra = _make_case(rng, first.patient_id, other_kind, other_split, first.density,
                         difficulty)
      cases[1:1] = extra
      crossing.add(first.patient_id)
    if not any(len(c.lesions) > 1 for c in cases):
      target = cases[0]
      target.lesions.append(_make_lesion(rng, target.kind, len(target.lesions) + 1,
                                         difficulty, target.lesions[0].malignant))
    calcs = [l for c in cases if c.kind == 'calc' for l in c.lesions]
    if calcs and not any(l.descriptor2 == 'N/A' for l in calcs):
      calcs[-1].descriptor2 = 'N/A'
  return cases, crossing


def _fill_empty_csvs(rng: np.random.Generator, cases: list[_BreastCase], crossing: set[str],
                     difficulty: float) -> list[_BreastCase]:
  """Moves single-case patients into (type, split) pairs that have none, so all 4 CSVs have rows.

  Only patients from pairs that keep at least one other patient are moved.
  """
  for kind, split in CSV_FILES:
    pairs = collections.defaultdict(set)
    for c in cases:
      pairs[c.patient_id].add((c.kind, c.split))
    if any((kind, split) in p for p in pairs.values()):
      continue
    members = collections.Counter(next(iter(p)) for p in pairs.values() if len(p) == 1)
    movable = [pid for pid, p in pairs.items()
               if len(p) == 1 and pid not in crossing and members[next(iter(p))] > 1]
    if not movable:
      continue
    pid = movable[-1]
    old = [c for c in cases if c.patient_id == pid]
    new = _make_case(rng, pid, kind, split, old[0].density, difficulty)
    at = cases.index(old[0])
    cases = [c for c in cases if c.patient_id != pid]
    cases[at:at] = new
  return cases


def _images_from_cases(cases: list[_BreastCase], crossing: set[str]) -> list[_Image]:
  images = []
  for case in cases:
    for view in case.views:
      img = _Image(index=len(images), patient_id=case.patient_id, kind=case.kind,
                   split=case.split, breast=case.breast, view=view, density=case.density,
                   rows=[_Row(lesion=l) for l in case.lesions])
      if len(img.rows) > 1:
        img.quirks.append('multiple_abnormalities')
      if case.patient_id in crossing:
        img.quirks.append('cross_split_patient')
      images.append(img)
  return images


def _assign_row_quirks(images: list[_Image], seed: int, rate: float) -> None:
  """Each row quirk independently at `rate`; each forced at least once in sets of >= 8 rows.

  Forced quirks go to distinct, so far quirk-free rows (mass rows first for the two
  quirks that are mass-typical in the real data), so each can be tested on its own.
  """
  rng = np.random.default_rng([seed, 3])
  rows = [r for img in images for r in img.rows]
  draws = rng.random((len(rows), len(ROW_QUIRKS)))
  if rate > 0:
    for row, u in zip(rows, draws):
      row.quirks = [q for q, x in zip(ROW_QUIRKS, u) if x < rate]
    if len(rows) >= 8:
      order = [rows[i] for i in rng.permutation(len(rows))]
      needed = ['two_series', 'mask_size_mismatch', 'mask_size_mismatch', 'swapped',
                'blank_series_description']
      have = {q: sum(q in r.quirks for r in rows) for q in ROW_QUIRKS}
      for quirk in needed:
        if have[quirk] > 0 and not (quirk == 'mask_size_mismatch' and have[quirk] < 2):
          continue
        free = [r for r in order if not r.quirks]
        if quirk in ('two_series', 'mask_size_mismatch'):
          free.sort(key=lambda r: r.lesion.kind != 'mass')  # Stable: keeps the shuffle.
        if free:
          free[0].quirks.append(quirk)
          have[quirk] += 1
  mismatches = [r for r in rows if 'mask_size_mismatch' in r.quirks]
  for k, row in enumerate(mismatches):
    row.mask_aspect_ok = k % 2 == 0  # Alternate the two variants.
  for row in rows:
    row.quirks.sort(key=ROW_QUIRKS.index)


class _UidMaker:
  """CBIS-style UIDs (root + 36-39 digits), unique, from one deterministic stream."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._seen: set[str] = set()

  def new(self, avoid: Sequence[str] = ()) -> str:
    while True:
      u = self._rng.random(40)
      n = _pick(u[0], (39, 38, 37, 36), (0.77, 0.2, 0.025, 0.005))
      digits = [str(1 + int(u[1] * 9))] + [str(int(x * 10)) for x in u[2:n + 1]]
      uid = UID_ROOT + ''.join(digits)
      if uid not in self._seen and uid[-5:] not in avoid:
        self._seen.add(uid)
        return uid


def _study_date(u: float) -> str:
  day = datetime.date(2016, 1, 1) + datetime.timedelta(days=int(u * 730))
  return day.strftime('%m-%d-%Y')


def _assign_uids(images: list[_Image], seed: int, rate: float) -> str:
  """Fills UIDs, dates and series-folder names; returns the NBIA manifest-folder stamp."""
  rng = np.random.default_rng([seed, 2])
  stamp = str(1_500_000_000_000 + int(rng.random() * 1e11))
  uids = _UidMaker(rng)
  no_na_rate = rate / 2  # A few percent of study folders lack the 'NA' part.
  studies: list[_File] = []

  def study(f: _File, subject: str, avoid: Sequence[str] = ()) -> None:
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


def _assign_row_files(row: _Row, subject: str, uids: _UidMaker,
                      study: Callable[..., None], rng: np.random.Generator) -> None:
  """Decides which file (series, index) holds the crop and which the mask, and the CSV paths."""
  abn_subject = f'{subject}_{row.lesion.abn_id}'
  first, second = _File(), _File()
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


def _full_csv_path(img: _Image) -> str:
  f = img.full
  return f'{f.subject}/{f.study_uid}/{f.series_uid}/000000.dcm'


def _disk_path(f: _File, layout: str, stamp: str) -> str:
  """Path relative to out_dir: the classic UID tree or the NBIA descriptive tree."""
  if layout == 'classic':
    return f'CBIS-DDSM/{f.csv_path}'
  na = 'NA-' if f.study_has_na else ''
  study_dir = f'{f.study_date}-DDSM-{na}{f.study_uid[-5:]}'
  series_dir = f'1.000000-{f.folder_description}-{f.series_uid[-5:]}'
  return (f'manifest-{stamp}/CBIS-DDSM/{f.subject}/{study_dir}/{series_dir}/'
          f'1-{f.index_in_series + 1}.dcm')


def _plan(patients: int, seed: int, difficulty: float, quirk_rate: float,
          layout: str) -> list[_Image]:
  cases, crossing = _plan_cases(patients, seed, difficulty)
  images = _images_from_cases(cases, crossing)
  _assign_row_quirks(images, seed, quirk_rate)
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
  return images


# ------------------------------------------------------------------------------------------
# Rendering. Everything is drawn with the chest wall on the left (x = 0) and mirrored for
# RIGHT breasts, so a LEFT breast has its chest wall on the left image edge.
# ------------------------------------------------------------------------------------------


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


@dataclasses.dataclass(frozen=True)
class _Breast:
  """A half-ellipse centred on the chest wall, plus the pectoral triangle in MLO views."""

  cy: float
  ry: float
  rx: float
  pect_x: float  # Pectoral triangle reaches this far along the top edge (0: none).
  pect_y: float  # ... and this far down the chest wall.

  def radius(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sqrt(((y - self.cy) / self.ry) ** 2 + (x / self.rx) ** 2)


def _breast_geometry(rng: np.random.Generator, h: int, w: int, view: str) -> _Breast:
  u = rng.random(5)
  if view == 'CC':
    return _Breast(cy=h * (0.47 + 0.06 * u[0]), ry=h * (0.40 + 0.07 * u[1]),
                   rx=w * (0.72 + 0.16 * u[2]), pect_x=0.0, pect_y=0.0)
  return _Breast(cy=h * (0.40 + 0.08 * u[0]), ry=h * (0.48 + 0.07 * u[1]),
                 rx=w * (0.74 + 0.16 * u[2]), pect_x=w * (0.25 + 0.17 * u[3]),
                 pect_y=h * (0.35 + 0.2 * u[4]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma: tuple[float, float]) -> np.ndarray:
  n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma,
                              mode='reflect')
  return n / (n.std() + 1e-6)


def _render_tissue(rng: np.random.Generator, breast: _Breast, h: int, w: int,
                   density: int) -> np.ndarray:
  """Background, breast and pectoral muscle as float32, built at low resolution and zoomed."""
  f = int(np.clip(h // 128, 1, 8))
  lh, lw = -(-h // f), -(-w // f)
  # Full-resolution coordinates of the low-resolution samples under zoom's corner mapping.
  ys = np.arange(lh, dtype=np.float32) * ((lh * f - 1) / max(lh - 1, 1))
  xs = np.arange(lw, dtype=np.float32) * ((lw * f - 1) / max(lw - 1, 1))
  y, x = ys[:, None], xs[None, :]
  r = breast.radius(y, x)
  edge = max(2.0 * f, 0.004 * h) / breast.rx
  inside = _smoothstep((1.0 - r) / edge)
  thick = np.sqrt(_smoothstep((1.0 - r) / 0.35))  # Thinner, darker tissue near the skin.
  # Fibroglandular texture: multi-scale noise stretched toward the nipple (along x).
  coarse = _smooth_noise(rng, (lh, lw), (0.05 * h / f, 0.09 * h / f))
  mid = _smooth_noise(rng, (lh, lw), (0.018 * h / f, 0.035 * h / f))
  fine = _smooth_noise(rng, (lh, lw), (max(0.6, 0.006 * h / f), max(0.6, 0.012 * h / f)))
  texture = 0.55 * coarse + 0.35 * mid + 0.25 * fine
  bias = {1: -1.3, 2: -0.6, 3: 0.0, 4: 0.6}[density]
  where = np.exp(-(((x / breast.rx) - 0.4) / 0.5) ** 2)  # Glands sit behind the nipple.
  gland = thick * where / (1.0 + np.exp(-2.5 * (texture + bias)))
  fat = 15000.0 + 1500.0 * density
  tissue = inside * (fat * (0.55 + 0.45 * thick) + (11000.0 + 1500.0 * density) * gland)
  low = 350.0 + tissue
  if breast.pect_x > 0:
    p = _smoothstep((1.0 - (x / breast.pect_x + y / breast.pect_y)) / 0.05) * inside
    low += p * (9000.0 + 800.0 * mid)
  full = ndimage.zoom(low.astype(np.float32), f, order=1)
  return np.ascontiguousarray(full[:h, :w])


@dataclasses.dataclass
class _Drawn:
  """A lesion rendered in its window: intensity added, mask, and the window's placement."""

  y0: int
  x0: int
  delta: np.ndarray  # float32
  mask: np.ndarray  # bool, same shape


def _mass_params(rng: np.random.Generator, lesion: _Lesion, h: int, scale: float) -> dict:
  m = lesion.score
  u = rng.random(8)
  radius = max(1.5, h * (0.015 + 0.03 * u[0]) * scale)  # Diameter 3-9 % of image height.
  shape, margin = lesion.descriptor1, lesion.descriptor2
  lo, hi = {'ROUND': (0.85, 1.0), 'OVAL': (0.5, 0.8), 'LOBULATED': (0.6, 0.95)}.get(
      shape, (0.6, 1.0))
  ks = np.arange(2, 10)
  amps = (0.02 + 0.2 * m) * rng.uniform(0.3, 1.0, ks.size) / np.sqrt(ks)
  amps[0] = 0.0  # Ellipticity comes from the aspect ratio.
  if shape == 'LOBULATED':
    amps[1:3] += 0.08
  amps *= min(1.0, 0.4 / amps.sum())  # Keep the outline star-shaped and the mass convex-ish.
  edge = {'CIRCUMSCRIBED': 0.04, 'OBSCURED': 0.1, 'MICROLOBULATED': 0.08,
          'ILL_DEFINED': 0.25, 'SPICULATED': 0.15}.get(margin, 0.04 + 0.2 * m)
  edge *= 0.7 + 0.6 * m
  micro = 0.05 if margin == 'MICROLOBULATED' else 0.0
  if margin == 'SPICULATED':
    n_spic = int(round((10 + 12 * u[3]) * (0.5 + 0.5 * m)))
  elif margin == 'N/A' or margin == 'ILL_DEFINED':
    n_spic = int(round(np.clip((m - 0.4) / 0.5, 0, 1) * (6 + 10 * u[3])))
  else:
    n_spic = 0
  spic_len = radius * rng.uniform(0.5, 1.3, n_spic) * (0.6 + 0.4 * m)
  return dict(
      radius=radius, aspect=lo + (hi - lo) * u[1], phi=np.pi * u[2], ks=ks, amps=amps,
      phases=rng.uniform(0, 2 * np.pi, ks.size), edge=edge, micro=micro,
      micro_phase=2 * np.pi * u[4], spic_angle=rng.uniform(0, 2 * np.pi, n_spic),
      spic_len=spic_len, spic_bend=rng.normal(0, 0.15, n_spic),
      amp=7000.0 * lesion.contrast * (0.85 + 0.3 * m),
      extent=(radius * (1 + amps.sum() + micro) * (1 + 2.5 * edge) + spic_len.max(initial=0)
              + 3 * max(0.6, 0.0008 * h) + 3))


def _mass_outline(p: dict, theta: np.ndarray) -> np.ndarray:
  """Boundary radius at each angle: a rotated ellipse times a low-order Fourier wobble."""
  c, s = np.cos(theta - p['phi']), np.sin(theta - p['phi'])
  ell = p['radius'] * p['aspect'] / np.sqrt((p['aspect'] * c) ** 2 + s ** 2)
  wobble = 1.0 + _micro_term(p, theta)
  for k, a, ph in zip(p['ks'], p['amps'], p['phases']):
    if a:
      wobble = wobble + a * np.cos(k * theta + ph)
  return ell * wobble


def _micro_term(p: dict, theta: np.ndarray) -> np.ndarray | float:
  return p['micro'] * np.cos(14 * theta + p['micro_phase']) if p['micro'] else 0.0


def _draw_mass(p: dict, cy: float, cx: float, h: int) -> _Drawn:
  e = p['extent']
  y0, x0 = int(math.floor(cy - e)), int(math.floor(cx - e))
  y1, x1 = int(math.ceil(cy + e)) + 1, int(math.ceil(cx + e)) + 1
  dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
  dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
  theta = np.arctan2(dy, dx)
  u = np.hypot(dy, dx) / _mass_outline(p, theta)
  body = 0.5 * (1.0 - np.tanh((u - 1.0) / p['edge']))
  delta = p['amp'] * body * (1.0 - 0.3 * np.clip(u, 0, 1) ** 2)
  if p['spic_len'].size:
    delta += p['amp'] * 0.6 * _spicules(p, cy - y0, cx - x0, delta.shape, h)
  return _Drawn(y0, x0, delta.astype(np.float32), u <= 1.0)


def _spicules(p: dict, cy: float, cx: float, shape: tuple[int, int], h: int) -> np.ndarray:
  """Thin lines radiating from the outline: splat points along each, then blur once."""
  acc = np.zeros(shape, np.float32)
  width = max(0.6, 0.0008 * h)
  for angle, length, bend in zip(p['spic_angle'], p['spic_len'], p['spic_bend']):
    start = 0.8 * float(_mass_outline(p, np.array([angle]))[0])
    t = np.linspace(0.0, 1.0, int(2 * length) + 2)
    a = angle + bend * t
    rad = start + t * length
    ys = np.rint(cy + rad * np.sin(a)).astype(int)
    xs = np.rint(cx + rad * np.cos(a)).astype(int)
    ok = (ys >= 0) & (ys < shape[0]) & (xs >= 0) & (xs < shape[1])
    np.add.at(acc, (ys[ok], xs[ok]), (0.5 * (1.0 - t) ** 0.8)[ok])
  acc = ndimage.gaussian_filter(acc, width)
  return acc * (math.sqrt(2 * math.pi) * width)  # A line's peak ends up at its weight.


def _calc_params(rng: np.random.Generator, lesion: _Lesion, h: int, scale: float) -> dict:
  """Speck positions (cluster-relative), sizes, elongations and brightness."""
  m = lesion.score
  u = rng.random(6)
  semi_a = max(2.0, h * (0.015 + 0.02 * u[0]) * scale)
  semi_b = max(1.5, semi_a * (0.5 + 0.5 * u[1]))
  n = max(3, int(round((5 + 25 * m) * (0.8 + 0.4 * u[2]))))
  linear = lesion.descriptor2 in ('LINEAR', 'SEGMENTAL')
  n_line = int(round(n * min(0.9, 0.7 * m ** 1.5 + (0.25 if linear else 0.0))))
  pts = np.concatenate([_branch_points(rng, n_line, m), _disc_points(rng, n - n_line)])
  base = max(0.4, h * (0.0042 - 0.0028 * m))  # Coarse benign specks, fine malignant ones.
  sizes = base * np.exp(rng.normal(0.0, 0.08 + 0.4 * m, n))
  elong = 1.0 + 1.3 * m * rng.random(n)
  orient = rng.uniform(0, np.pi, n)
  bright = rng.uniform(0.85 - 0.45 * m, 1.0, n)
  ring = any(k in lesion.descriptor1 for k in ('LUCENT', 'EGGSHELL'))
  pad = float((sizes * elong).max()) * 2.5 + 2
  return dict(a=semi_a, b=semi_b, phi=np.pi * u[3], pts=pts, sizes=sizes, elong=elong,
              orient=orient, bright=bright, ring=ring, base=base,
              amp=11000.0 * lesion.contrast, extent=max(semi_a, semi_b) * 1.15 + pad)


def _disc_points(rng: np.random.Generator, n: int) -> np.ndarray:
  r = 0.92 * np.sqrt(rng.random(n))
  a = rng.uniform(0, 2 * np.pi, n)
  return np.stack([r * np.sin(a), r * np.cos(a)], 1)


def _branch_points(rng: np.random.Generator, n: int, m: float) -> np.ndarray:
  """Points along 1-3 short branching random walks inside the unit disc."""
  if n == 0:
    return np.zeros((0, 2))
  n_branches = 1 + int(m > 0.6) + int(m > 0.85)
  pts = []
  for b in range(n_branches):
    count = n // n_branches + (1 if b < n % n_branches else 0)
    start = _disc_points(rng, 1)[0] * 0.5
    heading = rng.uniform(0, 2 * np.pi)
    steps = rng.uniform(0.1, 0.18, count)
    turns = heading + np.cumsum(rng.normal(0, 0.25, count))
    walk = start + np.cumsum(np.stack([steps * np.sin(turns), steps * np.cos(turns)], 1), 0)
    norm = np.linalg.norm(walk, axis=1, keepdims=True)
    walk = np.where(norm > 0.92, walk * (0.92 / np.maximum(norm, 1e-9)), walk)  # Stay inside.
    pts.append(walk)
  return np.concatenate(pts)


def _draw_calc(p: dict, cy: float, cx: float) -> _Drawn:
  e = p['extent']
  y0, x0 = int(math.floor(cy - e)), int(math.floor(cx - e))
  y1, x1 = int(math.ceil(cy + e)) + 1, int(math.ceil(cx + e)) + 1
  delta = np.zeros((y1 - y0, x1 - x0), np.float32)
  cphi, sphi = math.cos(p['phi']), math.sin(p['phi'])
  for (py, px), size, el, ori, br in zip(p['pts'], p['sizes'], p['elong'], p['orient'],
                                         p['bright']):
    # Cluster frame (unit disc scaled by the semi-axes, rotated) to window pixels.
    ly, lx = py * p['b'], px * p['a']
    sy = cy - y0 + lx * sphi + ly * cphi
    sx = cx - x0 + lx * cphi - ly * sphi
    _draw_speck(delta, sy, sx, max(size, 0.5), el, ori, p['amp'] * br, p['ring'])
  dy = (np.arange(y0, y1, dtype=np.float32) - cy)[:, None]
  dx = (np.arange(x0, x1, dtype=np.float32) - cx)[None, :]
  ry, rx = p['b'] * 1.1 + 2 * p['base'], p['a'] * 1.1 + 2 * p['base']
  along, across = dx * cphi + dy * sphi, -dx * sphi + dy * cphi
  mask = (along / rx) ** 2 + (across / ry) ** 2 <= 1.0  # The cluster region, not the specks.
  return _Drawn(y0, x0, delta, mask)


def _draw_speck(out: np.ndarray, sy: float, sx: float, size: float, elong: float,
                orient: float, amp: float, ring: bool) -> None:
  half = int(math.ceil(2.2 * size * elong)) + 1
  iy, ix = int(round(sy)), int(round(sx))
  ya, yb = max(iy - half, 0), min(iy + half + 1, out.shape[0])
  xa, xb = max(ix - half, 0), min(ix + half + 1, out.shape[1])
  dy = (np.arange(ya, yb) - sy)[:, None]
  dx = (np.arange(xa, xb) - sx)[None, :]
  c, s = math.cos(orient), math.sin(orient)
  q = ((dx * c + dy * s) / (size * elong)) ** 2 + ((-dx * s + dy * c) / size) ** 2
  val = np.exp(-q * q)  # Flat-topped: calcifications are dense, sharp-edged specks.
  if ring:
    val = val - 0.7 * np.exp(-(q / 0.3) ** 2)  # Lucent centre / eggshell.
  np.maximum(out[ya:yb, xa:xb], amp * val, out=out[ya:yb, xa:xb])


def _place(rng: np.random.Generator, breast: _Breast, extent: float, taken: list,
           h: int, w: int) -> tuple[float, float] | None:
  """A centre whose whole window lies well inside the breast, off the pectoral muscle and
  clear of other lesions; None after too many tries."""
  margin = max(4.0, 0.02 * h)
  gap = 0.01 * h
  ylo, yhi = extent + margin, h - extent - margin
  xlo, xhi = extent + margin, min(w - extent - margin, breast.rx - extent)
  if ylo >= yhi or xlo >= xhi:
    return None
  for _ in range(200):
    cy, cx = ylo + (yhi - ylo) * rng.random(), xlo + (xhi - xlo) * rng.random()
    cy_s = np.array([cy - extent, cy - extent, cy + extent, cy + extent])
    cx_s = np.array([cx - extent, cx + extent, cx - extent, cx + extent])
    if breast.radius(cy_s, cx_s).max() > 0.85:
      continue
    if breast.pect_x > 0 and (cx_s / breast.pect_x + cy_s / breast.pect_y).min() < 1.15:
      continue
    if any(abs(cy - ty) < extent + te + gap and abs(cx - tx) < extent + te + gap
           for ty, tx, te in taken):
      continue
    return cy, cx
  return None


def _render_lesion(rng: np.random.Generator, lesion: _Lesion, breast: _Breast, taken: list,
                   h: int, w: int) -> _Drawn:
  """Draws the lesion somewhere it fits, shrinking it when the breast is crowded."""
  scale = 1.0
  for attempt in range(13):
    if lesion.kind == 'mass':
      params = _mass_params(rng, lesion, h, scale)
    else:
      params = _calc_params(rng, lesion, h, scale)
    # Last resort for very small images: allow overlap rather than fail.
    spot = _place(rng, breast, params['extent'], taken if attempt < 12 else [], h, w)
    if spot is not None:
      taken.append((spot[0], spot[1], params['extent']))
      if lesion.kind == 'mass':
        drawn = _draw_mass(params, spot[0], spot[1], h)
      else:
        drawn = _draw_calc(params, spot[0], spot[1])
      # Tiny images can leave no pixel centre inside the outline; keep the centre pixel.
      drawn.mask[int(round(spot[0])) - drawn.y0, int(round(spot[1])) - drawn.x0] = True
      return drawn
    scale = max(scale * 0.8, 0.1)
  raise RuntimeError(f'cannot place lesion {lesion.abn_id} in a {h}x{w} image; '
                     'use a larger image_shape')


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
class _Job:
  """Everything a worker needs for one image; paths are already resolved for the layout."""

  seed: int
  out_dir: str
  shape: tuple[int, int]
  image: _Image


def _write(out_dir: str, f: _File, pixels: np.ndarray, breast: str, view: str) -> None:
  date = datetime.datetime.strptime(f.study_date, '%m-%d-%Y').strftime('%Y%m%d')
  dicom.write_image(
      os.path.join(out_dir, f.disk_path), pixels, patient_id=f.subject,
      study_uid=f.study_uid, series_uid=f.series_uid, sop_uid=f.sop_uid,
      series_description=f.description, instance_number=f.instance,
      bits_stored=pixels.dtype.itemsize * 8,
      extra={'ImageLaterality': breast[0], 'ViewPosition': view, 'StudyDate': date})


def _render_and_write(job: _Job) -> list[dict]:
  """Renders one image with its lesions, writes all its files; returns per-row geometry."""
  img = job.image
  h, w = job.shape
  rng = np.random.default_rng([job.seed, 1, img.index])
  breast = _breast_geometry(rng, h, w, img.view)
  pixels = _render_tissue(rng, breast, h, w, img.density)
  taken: list = []
  drawn = [_render_lesion(rng, row.lesion, breast, taken, h, w) for row in img.rows]
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


# ------------------------------------------------------------------------------------------
# CSVs, manifest and the driver.
# ------------------------------------------------------------------------------------------


def _csv_cells(img: _Image, row: _Row) -> list[str]:
  les = row.lesion
  return [img.patient_id, str(img.density), img.breast, img.view, str(les.abn_id),
          _TYPE_NAME[img.kind], les.descriptor1, les.descriptor2, str(les.assessment),
          les.pathology, str(les.subtlety), img.full.csv_path, row.csv_crop_path,
          row.csv_roi_path]


def _csv_bytes(kind: str, entries: list[tuple[_Image, _Row]]) -> bytes:
  """The TCIA byte format: CRLF rows, one quoted cell per row ending in a bare LF."""
  lines = [CSV_HEADERS[kind] + '\r\n']
  for img, row in entries:
    cells = _csv_cells(img, row)
    col = _QUOTED_COLUMN[kind]
    cells[col] = f'"{cells[col]}\n"'
    lines.append(','.join(cells) + '\r\n')
  return ''.join(lines).encode('ascii')


def _write_csvs(out_dir: str, images: list[_Image]) -> None:
  for (kind, split), name in CSV_FILES.items():
    entries = [(img, row) for img in images if (img.kind, img.split) == (kind, split)
               for row in img.rows]
    entries.sort(key=lambda e: (e[0].patient_id, e[0].breast, e[0].view, e[1].lesion.abn_id))
    with open(os.path.join(out_dir, name), 'wb') as f:
      f.write(_csv_bytes(kind, entries))


def _manifest_image(img: _Image, shape: tuple[int, int], geometry: list[dict]) -> dict:
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
      'abnormality_type': _TYPE_NAME[img.kind], 'breast': img.breast, 'view': img.view,
      'density': img.density, 'study_uid': img.full.study_uid,
      'series_uid': img.full.series_uid, 'shape': list(shape), 'path': img.full.disk_path,
      'csv_path': img.full.csv_path, 'quirks': list(img.quirks),
      'abnormalities': abnormalities,
  }


def _counts(images: list[_Image]) -> dict:
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


def _check_args(out_dir: str, patients: int, layout: str, seed: int, difficulty: float,
                image_shape: tuple[int, int], quirk_rate: float) -> None:
  if layout not in LAYOUTS:
    raise ValueError(f'layout must be one of {LAYOUTS}, got {layout!r}')
  if patients < 1:
    raise ValueError(f'patients must be >= 1, got {patients}')
  if seed < 0:
    raise ValueError(f'seed must be >= 0, got {seed}')
  if not 0.0 <= difficulty <= 1.0:
    raise ValueError(f'difficulty must be in [0, 1], got {difficulty}')
  if not 0.0 <= quirk_rate <= 1.0:
    raise ValueError(f'quirk_rate must be in [0, 1], got {quirk_rate}')
  if len(image_shape) != 2 or min(image_shape) < 128:
    raise ValueError(f'image_shape must be (height, width), each >= 128; got {image_shape}')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    # Mixing two generations would leave stale files that no CSV row mentions.
    raise FileExistsError(f'{out_dir} is not empty; generate into a new or empty folder')


def _pool_context() -> multiprocessing.context.BaseContext:
  """Fork on Linux; spawn elsewhere.

  Spawn would re-import the caller's main module in every worker, which breaks plain
  scripts without an `if __name__ == '__main__'` guard. Workers use only numpy, scipy and
  pydicom, so forking a process that has other threads (JAX, TF) is harmless here.
  """
  if sys.platform.startswith('linux'):
    return multiprocessing.get_context('fork')
  return multiprocessing.get_context('spawn')


def generate(out_dir: str | os.PathLike[str], *, patients: int = DEFAULT_PATIENTS,
             layout: str = 'nbia', seed: int = 0, difficulty: float = 0.5,
             image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE, quirk_rate: float = 0.06,
             workers: int | None = None) -> dict:
  """Writes a synthetic CBIS-DDSM release into out_dir and returns its manifest.

  Args:
    out_dir: an empty or missing folder; gets the four CSVs, the DICOM tree and
      `synthetic_manifest.json`.
    patients: number of patients (each has 1-4 images, most with one abnormality).
    layout: 'nbia' (current NBIA Data Retriever names) or 'classic' (UID folders, as in the
      CSVs). Only paths differ between the two.
    seed: non-negative; the whole output is a function of the arguments except `workers`.
    difficulty: 0 makes benign vs malignant morphology obvious, 1 makes it uninformative
      (mass vs calcification stays easy).
    image_shape: (height, width) of the full mammograms.
    quirk_rate: rate of each per-row file quirk (and half of it for study folders without
      'NA'); 0 disables them. With at least 8 abnormalities each quirk occurs at least once.
    workers: processes for rendering; None means os.cpu_count(), <= 1 runs inline.

  Returns:
    The manifest dict (also written as out_dir/synthetic_manifest.json).
  """
  out_dir = os.fspath(out_dir)
  image_shape = (int(image_shape[0]), int(image_shape[1]))
  _check_args(out_dir, patients, layout, seed, difficulty, image_shape, quirk_rate)
  os.makedirs(out_dir, exist_ok=True)
  images = _plan(patients, seed, difficulty, quirk_rate, layout)
  jobs = [_Job(seed, out_dir, image_shape, img) for img in images]
  if workers is None:
    workers = os.cpu_count() or 1
  workers = min(workers, len(jobs))
  if workers <= 1:
    geometry = [_render_and_write(job) for job in jobs]
  else:
    with _pool_context().Pool(workers) as pool:
      geometry = pool.map(_render_and_write, jobs, chunksize=1)
  _write_csvs(out_dir, images)
  manifest = {
      'seed': seed, 'layout': layout, 'patients': patients, 'difficulty': difficulty,
      'image_shape': list(image_shape), 'quirk_rate': quirk_rate,
      'images': [_manifest_image(img, image_shape, geo) for img, geo in zip(images, geometry)],
      'counts': _counts(images),
  }
  with open(os.path.join(out_dir, MANIFEST_NAME), 'w', encoding='utf-8') as f:
    json.dump(manifest, f, indent=1)
    f.write('\n')
  return manifest


def summary(manifest: dict) -> str:
  """One paragraph: counts per official split and class, and the quirks present."""
  c = manifest['counts']
  parts = []
  for split, s in c['per_split'].items():
    parts.append(
        f'{split}: {s["patients"]} patients, {s["images"]} images, {s["abnormalities"]} '
        f'abnormalities (benign/malignant calc {s["BENIGN_CALCIFICATION"]}/'
        f'{s["MALIGNANT_CALCIFICATION"]}, mass {s["BENIGN_MASS"]}/{s["MALIGNANT_MASS"]})')
  quirks = ', '.join(f'{k} {v}' for k, v in c['quirks'].items())
  h, w = manifest['image_shape']
  return (f'Synthetic CBIS-DDSM ({manifest["layout"]} layout, seed {manifest["seed"]}, '
          f'difficulty {manifest["difficulty"]}, {h}x{w}): {c["patients"]} patients, '
          f'{c["images"]} images, {c["abnormalities"]} abnormalities, {c["files"]} DICOM '
          f'files. ' + '; '.join(parts) + f'. Quirks: {quirks}.')


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m tfds_cbis.synthetic',
      description='Write a synthetic CBIS-DDSM release (DICOM tree + the four CSVs).')
  parser.add_argument('--out', required=True, help='empty or missing output folder')
  parser.add_argument('--patients', type=int, default=DEFAULT_PATIENTS)
  parser.add_argument('--layout', choices=LAYOUTS, default='nbia')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--difficulty', type=float, default=0.5)
  parser.add_argument('--height', type=int, default=DEFAULT_IMAGE_SHAPE[0])
  parser.add_argument('--width', type=int, default=DEFAULT_IMAGE_SHAPE[1])
  parser.add_argument('--quirk-rate', type=float, default=0.06)
  parser.add_argument('--workers', type=int, default=None)
  args = parser.parse_args(argv)
  start = time.time()
  try:
    manifest = generate(args.out, patients=args.patients, layout=args.layout, seed=args.seed,
                        difficulty=args.difficulty, image_shape=(args.height, args.width),
                        quirk_rate=args.quirk_rate, workers=args.workers)
  except (ValueError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{summary(manifest)} Written to {args.out} in {time.time() - start:.1f} s.')
  return 0


if __name__ == '__main__':
  sys.exit(main())
