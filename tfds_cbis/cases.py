"""The four CBIS-DDSM case-description CSVs: finding, checking and parsing them.

A *case* here is one full mammogram (one CSV image path) with its abnormalities (CSV rows).
Rows name files by classic paths `<Subject>/<StudyUID>/<SeriesUID>/<file>`; only the UIDs are
used to find files, so any download layout works (see `index.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from collections.abc import Iterable, Mapping

LABEL_NAMES = ('BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION', 'MALIGNANT_CALCIFICATION')
ABNORMALITY_TYPES = ('MASS', 'CALCIFICATION')
PATHOLOGIES = ('BENIGN', 'MALIGNANT')
BREASTS = ('LEFT', 'RIGHT')
VIEWS = ('CC', 'MLO')
RAW_PATHOLOGIES = ('BENIGN', 'BENIGN_WITHOUT_CALLBACK', 'MALIGNANT')

# (abnormality type, official split) -> file name, and the released files' SHA-256.
CSV_FILES = {
    ('CALCIFICATION', 'train'): 'calc_case_description_train_set.csv',
    ('CALCIFICATION', 'test'): 'calc_case_description_test_set.csv',
    ('MASS', 'train'): 'mass_case_description_train_set.csv',
    ('MASS', 'test'): 'mass_case_description_test_set.csv',
}
OFFICIAL_SHA256 = {
    'calc_case_description_test_set.csv':
        '03a2f72efb6ed29f417e07f4598950e6a1e02e6b11250ff516ebe7924ace3689',
    'calc_case_description_train_set.csv':
        '3c7b07e8202f66709f446b9695e96c5d17484a65fda6a24d0170a0c1b81d56e3',
    'mass_case_description_test_set.csv':
        '60f0b4504ec024106bbdd1555030d220163ea9da0ea4688473a4c9c3e8ab0457',
    'mass_case_description_train_set.csv':
        'a4bcc1c32bfd040212737e6e8c304819334abe717cfefff56431dc50ae6db723',
}
PACKAGED_CSV_DIR = os.path.join(os.path.dirname(__file__), 'csv')

# Canonical column -> accepted header spellings (lower-cased, stripped). The second spellings
# are the older CSV variant (`djkatsaros/NN`, Li Shen's code) and the mass files' underscore.
_COLUMNS = {
    'patient_id': ('patient_id',),
    'breast_density': ('breast density', 'breast_density'),
    'breast': ('left or right breast', 'side'),
    'view': ('image view', 'view'),
    'abnormality_id': ('abnormality id', 'abn_num'),
    'assessment': ('assessment',),
    'pathology': ('pathology',),
    'subtlety': ('subtlety',),
    'image_path': ('image file path', 'od_img_path'),
    'crop_path': ('cropped image file path', 'od_crop_path'),
    'roi_path': ('roi mask file path', 'mask_path'),
}
_OPTIONAL_COLUMNS = {
    'calc_type': ('calc type', 'calc_type'),
    'calc_distribution': ('calc distribution', 'calc_distribution'),
    'mass_shape': ('mass shape', 'mass_shape'),
    'mass_margins': ('mass margins', 'mass_margins'),
}


class CsvFormatError(ValueError):
  """A description CSV that cannot be parsed; the message names the file, line and fix."""


@dataclasses.dataclass(frozen=True)
class FileRef:
  """A file named by a CSV path: found on disk through its study and series UIDs."""

  subject: str  # e.g. 'Mass-Training_P_00001_LEFT_CC_1'; '' when the path has no subject
  study_uid: str
  series_uid: str
  filename: str  # '000000.dcm' or '000001.dcm' (never trusted to say crop vs mask)

  @property
  def series_key(self) -> tuple[str, str]:
    return (self.study_uid, self.series_uid)


@dataclasses.dataclass(frozen=True)
class Abnormality:
  abnormality_id: int
  pathology: str  # raw CSV value, one of RAW_PATHOLOGIES
  assessment: int
  subtlety: int
  crop: FileRef
  roi: FileRef
  descriptors: Mapping[str, str]  # calc type/distribution or mass shape/margins, raw strings
  source: str  # 'file.csv:line', for reports


@dataclasses.dataclass(frozen=True)
class Case:
  """One full mammogram of the CSVs and the abnormalities marked on it."""

  abnormality_type: str  # 'MASS' or 'CALCIFICATION' (from which CSV, as TFDS does)
  official_split: str  # 'train' or 'test'
  patient_id: str  # 'P_00001'
  breast: str
  view: str
  breast_density: int
  image: FileRef
  abnormalities: tuple[Abnormality, ...]

  @property
  def subject(self) -> str:
    """A readable, unique name of the image, e.g. 'Mass-Training_P_00001_LEFT_CC'."""
    if self.image.subject:
      return self.image.subject
    kind = 'Mass' if self.abnormality_type == 'MASS' else 'Calc'
    split = 'Training' if self.official_split == 'train' else 'Test'
    return f'{kind}-{split}_{self.patient_id}_{self.breast}_{self.view}'


def label_name(abnormality_type: str, pathology: str) -> str:
  """The 4-class label; BENIGN_WITHOUT_CALLBACK counts as benign."""
  severity = 'MALIGNANT' if pathology.startswith('MALIGNANT') else 'BENIGN'
  return f'{severity}_{abnormality_type}'


def sha256_of(path: str | os.PathLike[str]) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def find_csvs(manual_dir: str | os.PathLike[str] | None,
              candidates: Iterable[str] = ()) -> tuple[dict[tuple[str, str], str], str]:
  """Returns the four CSV paths and where they came from ('manual_dir' or 'packaged').

  `candidates` are file paths already found under manual_dir (the indexer's walk); when all
  four names are among them, the shallowest copy of each is used. Otherwise the copies shipped
  with the package are used after checking their SHA-256 against the official release.
  """
  by_name: dict[str, str] = {}
  wanted = set(CSV_FILES.values())
  for path in sorted(candidates, key=lambda p: (p.count(os.sep), p)):
    name = os.path.basename(path)
    if name in wanted and name not in by_name:
      by_name[name] = path
  if by_name and len(by_name) < len(wanted):
    missing = sorted(wanted - set(by_name))
    raise CsvFormatError(
        f'{manual_dir}: found {sorted(by_name)} but not {missing}. Put all four CBIS-DDSM '
        'description CSVs in manual_dir, or none of them to use the copies shipped with '
        'tfds_cbis.')
  if by_name:
    return {key: by_name[name] for key, name in CSV_FILES.items()}, 'manual_dir'
  paths = {key: os.path.join(PACKAGED_CSV_DIR, name) for key, name in CSV_FILES.items()}
  for path in paths.values():
    name = os.path.basename(path)
    if not os.path.exists(path) or sha256_of(path) != OFFICIAL_SHA256[name]:
      raise CsvFormatError(
          f'{path}: the packaged CSV is missing or its SHA-256 differs from the official '
          f'{OFFICIAL_SHA256[name]}; reinstall tfds_cbis or put the TCIA CSVs in manual_dir.')
  return paths, 'packaged'


def _parse_path(value: str, where: str, column: str) -> FileRef:
  parts = [p for p in value.strip().replace('\\', '/').split('/') if p]
  if len(parts) < 3 or not parts[-1].lower().endswith('.dcm'):
    raise CsvFormatError(
        f'{where}: column {column!r} holds {value.strip()!r}, expected a path '
        '<Subject>/<StudyInstanceUID>/<SeriesInstanceUID>/<file>.dcm')
  subject = parts[-4] if len(parts) >= 4 else ''
  return FileRef(subject, parts[-3], parts[-2], parts[-1])


def _int(value: str, where: str, column: str) -> int:
  try:
    return int(value.strip())
  except ValueError:
    raise CsvFormatError(f'{where}: column {column!r} holds {value!r}, expected an integer') from None


def _header_map(header: list[str], path: str) -> dict[str, int]:
  normalised = [h.strip().lower() for h in header]
  columns = {}
  for name, spellings in {**_COLUMNS, **_OPTIONAL_COLUMNS}.items():
    for spelling in spellings:
      if spelling in normalised:
        columns[name] = normalised.index(spelling)
        break
  missing = [_COLUMNS[n][0] for n in _COLUMNS if n not in columns]
  if missing:
    raise CsvFormatError(
        f'{path}: not a CBIS-DDSM description CSV; missing columns {missing} (header: '
        f'{[h.strip() for h in header]}). Use the CSVs published by TCIA unmodified.')
  return columns


def _rows_with_lines(lines: Iterable[str]) -> list[tuple[int, list[str]]]:
  """CSV records with the line (1-based, as an editor counts) where each starts.

  Quoted cells of the official files hold line breaks, so record numbers drift from lines.
  """
  reader = csv.reader(lines)
  rows, line = [], 1
  for row in reader:
    rows.append((line, row))
    line = reader.line_num + 1
  return rows


def read_csv(path: str, abnormality_type: str, official_split: str) -> list[Case]:
  """Parses one description CSV into cases, grouping rows by full image."""
  name = os.path.basename(path)
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      rows = _rows_with_lines(f)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise CsvFormatError(f'{path}: cannot read the CSV ({e})') from None
  if not rows:
    raise CsvFormatError(f'{path}: the CSV is empty')
  header = rows[0][1]
  columns = _header_map(header, path)
  grouped: dict[tuple[str, str], dict] = {}
  for line, row in rows[1:]:
    if not any(cell.strip() for cell in row):
      continue
    where = f'{path}:{line}'
    if len(row) < len(header):
      raise CsvFormatError(f'{where}: {len(row)} cells, the header has {len(header)}')
    cell = {k: row[i].strip() for k, i in columns.items()}
    pathology = cell['pathology'].upper()
    if pathology not in RAW_PATHOLOGIES:
      raise CsvFormatError(f'{where}: pathology {cell["pathology"]!r} is not one of '
                           f'{RAW_PATHOLOGIES}')
    breast, view = cell['breast'].upper(), cell['view'].upper()
    if breast not in BREASTS or view not in VIEWS:
      raise CsvFormatError(f'{where}: breast/view {breast!r}/{view!r} not in {BREASTS}/{VIEWS}')
    image = _parse_path(cell['image_path'], where, 'image file path')
    descriptors = {k: cell[k] for k in _OPTIONAL_COLUMNS if k in cell}
    abnormality = Abnormality(
        abnormality_id=_int(cell['abnormality_id'], where, 'abnormality id'),
        pathology=pathology,
        assessment=_int(cell['assessment'], where, 'assessment'),
        subtlety=_int(cell['subtlety'], where, 'subtlety'),
        crop=_parse_path(cell['crop_path'], where, 'cropped image file path'),
        roi=_parse_path(cell['roi_path'], where, 'ROI mask file path'),
        descriptors=descriptors,
        source=f'{name}:{line}',
    )
    entry = grouped.setdefault(image.series_key, {
        'patient_id': cell['patient_id'], 'breast': breast, 'view': view,
        'density': _int(cell['breast_density'], where, 'breast density'), 'image': image,
        'abnormalities': {}})
    if (entry['patient_id'], entry['breast'], entry['view']) != (cell['patient_id'], breast, view):
      raise CsvFormatError(f'{where}: the same image path is listed for another patient, '
                           f'breast or view than on an earlier row')
    if abnormality.abnormality_id in entry['abnormalities']:
      raise CsvFormatError(f'{where}: abnormality id {abnormality.abnormality_id} repeats for '
                           f'image {image.subject or image.series_uid}')
    entry['abnormalities'][abnormality.abnormality_id] = abnormality
  return [
      Case(abnormality_type=abnormality_type, official_split=official_split,
           patient_id=e['patient_id'], breast=e['breast'], view=e['view'],
           breast_density=e['density'], image=e['image'],
           abnormalities=tuple(e['abnormalities'][k] for k in sorted(e['abnormalities'])))
      for e in grouped.values()
  ]


def load_cases(csv_paths: Mapping[tuple[str, str], str]) -> list[Case]:
  """Reads the four CSVs; cases come sorted by (split, type, subject) for determinism."""
  cases = []
  for (abnormality_type, split), path in csv_paths.items():
    cases.extend(read_csv(path, abnormality_type, split))
  cases.sort(key=lambda c: (c.official_split, c.abnormality_type, c.subject, c.image.series_uid))
  return cases
