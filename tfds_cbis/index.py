"""Indexing a CBIS-DDSM download by the UIDs in its DICOM headers.

The classic tree (`<Subject>/<StudyUID>/<SeriesUID>/000000.dcm`) and the NBIA Data Retriever
tree (`<Subject>/<date>-DDSM-NA-<5 digits>/1.000000-<description>-<5 digits>/1-1.dcm`) name
folders differently, but every file's header carries its StudyInstanceUID and
SeriesInstanceUID, which are exactly the UIDs in the CSV paths. So the index is keyed by
(study UID, series UID) and the layout does not matter. Only headers are read, except for
the copies of one file (the same SOPInstanceUID in several files, e.g. two copies of the tree
under one manual_dir): one copy is kept, an intact one before a truncated or undecodable one,
then the shortest path, and the choice is recorded in `duplicates`.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import re

from tfds_cbis import dicom

# A CBIS-DDSM subject folder, e.g. 'Mass-Training_P_00001_LEFT_CC' or 'Calc-Test_P_00038_..'.
_SUBJECT_FOLDER = re.compile(r'^(Mass|Calc)-(Training|Test)_P_\d+')


@dataclasses.dataclass
class DicomIndex:
  """Headers of every readable `.dcm` under a folder, and the reasons for the others."""

  root: str
  series: dict[tuple[str, str], list[dicom.DicomHeader]]
  unreadable: dict[str, str]  # path -> reason
  other_files: list[str]  # non-DICOM files seen on the walk (CSV lookup uses them)
  unreadable_dirs: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> reason
  # Series with a file in several copies: {'study_uid', 'series_uid', 'files' (every path),
  # 'chosen' (the copies kept), 'rejected' ([{'path', 'reason'}])}, by series.
  duplicates: list[dict] = dataclasses.field(default_factory=list)

  @property
  def num_files(self) -> int:
    return sum(len(v) for v in self.series.values())

  def files(self, key: tuple[str, str]) -> list[dicom.DicomHeader]:
    return self.series.get(key, [])

  def unused(self, used: set[tuple[str, str]]) -> list[dict]:
    """The series whose (study, series) UIDs are not in `used`, with their files."""
    return [{'study_uid': key[0], 'series_uid': key[1], 'files': [h.path for h in headers]}
            for key, headers in sorted(self.series.items()) if key not in used]

  def unreadable_under(self, subject: str) -> dict[str, str]:
    """Unreadable files inside a folder named `subject` (both layouts keep subject folders),
    so a missing series can be explained by the corrupt file that should have held it."""
    if not subject:
      return {}
    return {p: r for p, r in self.unreadable.items()
            if subject in p.replace('\\', '/').split('/')[:-1]}

  def unreadable_dirs_for(self, subject: str) -> dict[str, str]:
    """Folders the walk could not list that may hold `subject`'s files: the subject's own
    (or one inside it), or one above every subject folder (e.g. the whole CBIS-DDSM folder)."""
    found = {}
    for path, reason in self.unreadable_dirs.items():
      parts = os.path.relpath(path, self.root).replace('\\', '/').split('/')
      if (subject and subject in parts) or not any(_SUBJECT_FOLDER.match(p) for p in parts):
        found[path] = reason
    return found


def walk(root: str | os.PathLike[str]) -> tuple[list[str], list[str], dict[str, str]]:
  """Lists `.dcm` files and other files under root, sorted, and the folders it cannot list.

  Symlinked folders are followed (downloads are often assembled from links), each real
  folder once, so a link cycle cannot make the walk endless. A folder that cannot be listed
  (e.g. no read permission) is recorded with the reason instead of being passed over silently.
  """
  dcm, other = [], []
  unlisted: dict[str, str] = {}
  seen = set()

  def on_error(error: OSError) -> None:
    unlisted[error.filename or '?'] = error.strerror or str(error)

  for dirpath, dirnames, filenames in os.walk(os.fspath(root), onerror=on_error,
                                              followlinks=True):
    real = os.path.realpath(dirpath)
    if real in seen:
      dirnames[:] = []
      continue
    seen.add(real)
    dirnames.sort()
    for name in filenames:
      (dcm if name.lower().endswith('.dcm') else other).append(os.path.join(dirpath, name))
  return sorted(dcm), sorted(other), dict(sorted(unlisted.items()))


def _read(path: str) -> dicom.DicomHeader | dicom.DicomReadError:
  try:
    return dicom.read_header(path)
  except dicom.DicomReadError as e:
    return e


def build_index(root: str | os.PathLike[str], threads: int = 8) -> DicomIndex:
  """Reads the header of every `.dcm` under root (threads hide file-system latency)."""
  paths, other, unlisted = walk(root)
  series: dict[tuple[str, str], list[dicom.DicomHeader]] = collections.defaultdict(list)
  unreadable: dict[str, str] = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for path, result in zip(paths, pool.map(_read, paths, chunksize=64)):
      if isinstance(result, dicom.DicomReadError):
        unreadable[path] = result.reason
      else:
        series[(result.study_uid, result.series_uid)].append(result)
  duplicates = []
  for key, headers in sorted(series.items()):
    series[key], record = _without_copies(headers)
    if record:
      duplicates.append({'study_uid': key[0], 'series_uid': key[1], **record})
    series[key].sort(key=lambda h: (h.instance_number or 0, h.path))
  return DicomIndex(os.fspath(root), dict(series), unreadable, other, unlisted, duplicates)


def _without_copies(headers: list[dicom.DicomHeader]) -> tuple[list[dicom.DicomHeader], dict]:
  """One file per SOPInstanceUID of a series, and the record of the choice ({} if no copies).

  Files without a SOPInstanceUID cannot be told to be copies and are all kept.
  """
  by_instance = collections.defaultdict(list)
  for header in headers:
    by_instance[header.sop_uid or header.path].append(header)
  kept, chosen, rejected = [], [], []
  for copies in by_instance.values():
    if len(copies) == 1:
      kept.append(copies[0])
      continue
    problems = {h.path: dicom.pixel_data_problem(h.path) for h in copies}
    ranked = sorted(copies, key=lambda h: (problems[h.path] is not None, len(h.path), h.path))
    kept.append(ranked[0])
    chosen.append(ranked[0].path)
    for header in ranked[1:]:
      problem = problems[header.path]
      reason = (f'damaged: {problem}' if problem else
                'intact too; the chosen copy has the shorter (or alphabetically first) path')
      rejected.append({'path': header.path, 'reason': reason})
  if not chosen:
    return kept, {}
  return kept, {'files': sorted(h.path for h in headers), 'chosen': sorted(chosen),
                'rejected': sorted(rejected, key=lambda r: r['path'])}
