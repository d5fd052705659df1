"""The plan of a synthetic release: patients, cases, lesions with their labels, and row quirks.

Everything is decided here, before any pixel is drawn, from the stream (seed, 0) for the cases
and (seed, 3) for the quirks; `naming` then gives the files their UIDs and paths. The records
(`Lesion`, `File`, `Row`, `Image`) carry the plan to the renderer and the writers.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Sequence

import numpy as np

ROW_QUIRKS = ('swapped', 'two_series', 'mask_size_mismatch', 'blank_series_description')
CSV_FILES = {
    ('calc', 'train'): 'calc_case_description_train_set.csv',
    ('calc', 'test'): 'calc_case_description_test_set.csv',
    ('mass', 'train'): 'mass_case_description_train_set.csv',
    ('mass', 'test'): 'mass_case_description_test_set.csv',
}
TYPE_NAME = {'calc': 'calcification', 'mass': 'mass'}
_SUBJECT_PREFIX = {('calc', 'train'): 'Calc-Training', ('calc', 'test'): 'Calc-Test',
                   ('mass', 'train'): 'Mass-Training', ('mass', 'test'): 'Mass-Test'}

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


@dataclasses.dataclass
class Lesion:
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
class File:
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
class Row:
  """One abnormality on one image: one CSV row, one mask file and one crop file."""

  lesion: Lesion
  quirks: list[str] = dataclasses.field(default_factory=list)
  mask_aspect_ok: bool | None = None
  crop: File = dataclasses.field(default_factory=File)  # The file that holds the crop.
  mask: File = dataclasses.field(default_factory=File)  # The file that holds the mask.
  csv_crop_path: str = ''
  csv_roi_path: str = ''


@dataclasses.dataclass
class Image:
  """One full mammogram (one CSV image path) and its abnormality rows."""

  index: int  # Seeds the image's own random stream.
  patient_id: str
  kind: str
  split: str
  breast: str
  view: str
  density: int
  rows: list[Row]
  full: File = dataclasses.field(default_factory=File)
  quirks: list[str] = dataclasses.field(default_factory=list)

  @property
  def subject(self) -> str:
    return f'{_SUBJECT_PREFIX[self.kind, self.split]}_{self.patient_id}_{self.breast}_{self.view}'


def pick(u: float, options: Sequence[Any], probs: Sequence[float] | None = None) -> Any:
  """Chooses from options with one uniform draw, so every call consumes the same randomness."""
  if probs is None:
    return options[min(int(u * len(options)), len(options) - 1)]
  edges = np.cumsum(probs) / np.sum(probs)
  return options[min(int(np.searchsorted(edges, u, side='right')), len(options) - 1)]


def _pick_weighted(u: float, table: Sequence[tuple[Any, float]]) -> Any:
  return pick(u, [v for v, _ in table], [p for _, p in table])


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
                 malignant_hint: bool | None) -> Lesion:
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
    d1 = pick(u[2], _band(score, _CALC_TYPES)[1])
    if score >= 0.7 and u[3] < 0.5:
      d2 = 'LINEAR' if u[3] < 0.3 else 'SEGMENTAL'
    else:
      d2 = pick(u[3], _CALC_DISTRIBUTIONS[:5] if score < 0.7 else _CALC_DISTRIBUTIONS)
    d1 = 'N/A' if u[7] < 0.015 else d1
    d2 = 'N/A' if u[8] < 0.15 else d2
  else:
    d1 = pick(u[2], _band(score, _MASS_SHAPES)[1])
    d2 = pick(u[3], _band(score, _MASS_MARGINS)[1])
    d1 = 'N/A' if u[7] < 0.01 else d1
    d2 = 'N/A' if u[8] < 0.03 else d2
  subtlety = _pick_weighted(u[5], _SUBTLETY)
  # Higher difficulty lowers contrast; subtle lesions (low subtlety score) are fainter.
  fade = 0.45 if kind == 'mass' else 0.3
  contrast = (1 - fade * difficulty) * (0.7 + 0.075 * subtlety) * (0.9 + 0.2 * u[6])
  return Lesion(abn_id=abn_id, kind=kind, pathology=pathology, score=score,
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
  lesions: list[Lesion]


def _make_case(rng: np.random.Generator, patient_id: str, kind: str, split: str, density: int,
               difficulty: float) -> list[_BreastCase]:
  u = rng.random(3)
  breasts = ['LEFT', 'RIGHT'] if u[0] < 0.08 else [pick(u[1], ('LEFT', 'RIGHT'))]
  cases = []
  for breast in breasts:
    v = rng.random(2)
    views = pick(v[0], (['CC', 'MLO'], ['CC'], ['MLO']), (0.8, 0.08, 0.12))
    n_lesions = pick(v[1], (1, 2, 3), (0.88, 0.08, 0.04))
    lesions: list[Lesion] = []
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


def _images_from_cases(cases: list[_BreastCase], crossing: set[str]) -> list[Image]:
  images = []
  for case in cases:
    for view in case.views:
      img = Image(index=len(images), patient_id=case.patient_id, kind=case.kind,
                   split=case.split, breast=case.breast, view=view, density=case.density,
                   rows=[Row(lesion=l) for l in case.lesions])
      if len(img.rows) > 1:
        img.quirks.append('multiple_abnormalities')
      if case.patient_id in crossing:
        img.quirks.append('cross_split_patient')
      images.append(img)
  return images


def _assign_row_quirks(images: list[Image], seed: int, rate: float) -> None:
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


def plan_images(patients: int, seed: int, difficulty: float, quirk_rate: float) -> list[Image]:
  """The images with their rows and quirks; files still without UIDs and paths."""
  cases, crossing = _plan_cases(patients, seed, difficulty)
  images = _images_from_cases(cases, crossing)
  _assign_row_quirks(images, seed, quirk_rate)
  return images
