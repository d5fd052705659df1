"""Whole-mammogram examples: one per breast view (patient, breast, view), one image at a time.

The CSVs list some views under both a mass and a calcification subject (71 in the official
release: the same film, two subject IDs and series). `plan_views` (driver side, headers only)
groups the cases of a view into one `ViewTask` carrying every abnormality; `process` (worker
side, pixels) reads one full mammogram, resizes it with the same `geometry.resize` as the S10
patches, and adds each abnormality's ROI mask (found and checked by `patches.find_mask`, as the
patch configs do) to the view's mask at the resized size. No TensorFlow here.

Which file's pixels a merged view holds: the first readable one in the order (1) the subjects
that the split protocol places in the view's split (a view of a patient leaking into the
official test set holds its official-test file), (2) subject name. The example's `id` is that
subject; `subjects` lists all of them.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from tfds_cbis import cases as cases_lib
from tfds_cbis import dicom
from tfds_cbis import geometry
from tfds_cbis import index as index_lib
from tfds_cbis import patches
from tfds_cbis import splits as splits_lib

LABEL_NAMES = ('BENIGN', 'MALIGNANT')  # BENIGN_WITHOUT_CALLBACK counts as BENIGN
ABNORMALITY_TYPES = ('mass', 'calcification')
# The skip reason of a merged view's file that could not be used while another one was.
MERGED_FILE_UNUSED = 'merged_file_unused'


@dataclasses.dataclass(frozen=True)
class WholeSpec:
  """Whole images at height x width; the mask options mirror `patches.PatchSpec`'s."""

  height: int = 1152
  width: int = 896
  resize_method: str = 'bilinear'
  resize_mismatched_masks: bool = False
  max_aspect_difference: float = 0.02

  @property
  def shape(self) -> tuple[int, int]:
    return (self.height, self.width)


@dataclasses.dataclass(frozen=True)
class Part:
  """One subject (CSV image) of a view: its full mammogram (None: not found) and the
  candidate files of its abnormalities."""

  case: cases_lib.Case
  image: dicom.DicomHeader | None
  abnormalities: tuple[patches.AbnormalityTask, ...]


@dataclasses.dataclass(frozen=True)
class ViewTask:
  view: str  # e.g. 'P_00041_LEFT_CC'
  split: str
  parts: tuple[Part, ...]  # in pixel preference order (see the module docstring)

  def headers(self) -> list[dicom.DicomHeader]:
    """Every file the task may read (for the build's provenance)."""
    return [h for p in self.parts for h in
            ([p.image] if p.image else []) + [c for a in p.abnormalities for c in a.candidates]]


def view_key(case: cases_lib.Case) -> str:
  return f'{case.patient_id}_{case.breast}_{case.view}'


def group_views(all_cases: Sequence[cases_lib.Case]) -> dict[str, list[cases_lib.Case]]:
  """view key -> its cases, in the order of `all_cases`."""
  views: dict[str, list[cases_lib.Case]] = collections.defaultdict(list)
  for case in all_cases:
    views[view_key(case)].append(case)
  return dict(views)


def merged_views(all_cases: Sequence[cases_lib.Case]) -> dict[str, list[str]]:
  """view key -> its subjects, for the views the CSVs hold under several subjects."""
  return {view: sorted(c.subject for c in cases)
          for view, cases in group_views(all_cases).items() if len(cases) > 1}


def view_split(cases: Sequence[cases_lib.Case], split_of: Mapping[str, str]) -> str:
  """The split of a view: test when any of its subjects is in test, else that of its first
  placed subject; `leaking` when the plan places none (a leaking patient's official-train
  view, which the official protocol leaves out and the others place by patient)."""
  placed = [split_of[c.subject] for c in cases if c.subject in split_of]
  if not placed:
    return splits_lib.LEAKING
  return 'test' if 'test' in placed else placed[0]


def plan_views(all_cases: Sequence[cases_lib.Case], split_of: Mapping[str, str],
               excluded_subjects: Sequence[str], index: index_lib.DicomIndex
               ) -> tuple[list[ViewTask], list[patches.Skip], dict]:
  """One task per view with a found image and at least one abnormality file.

  Returns (tasks, skips, report entries): `views_in_csvs`, `merged_views` (each view held
  under several subjects: view, split, subjects, abnormalities) and `excluded_images` (the
  plan's excluded subjects less those placed in a view through another subject).
  """
  tasks, skips, merged, used = [], [], [], set()
  views = group_views(all_cases)
  for view, cases in views.items():
    split = view_split(cases, split_of)
    cases = sorted(cases, key=lambda c: (split_of.get(c.subject) != split, c.subject))
    images = {c.subject: patches.find_image(c, split, index) for c in cases}
    paths = frozenset(h.path for h, _ in images.values() if h is not None)
    parts, image_skips = [], []
    for case in cases:
      image, missing = images[case.subject]
      found, abnormality_skips = patches.find_abnormalities(case, split, index, paths)
      skips.extend(abnormality_skips)
      image_skips.extend(missing)
      parts.append(Part(case, image, tuple(found)))
    if not paths:
      skips.extend(image_skips)
      continue
    skips.extend(dataclasses.replace(s, reason=MERGED_FILE_UNUSED, detail=(
        f'{s.reason}: {s.detail}; view {view} uses another subject\'s file'))
                 for s in image_skips)
    if split != splits_lib.LEAKING:
      used.update(c.subject for c in cases)
    if len(cases) > 1:
      merged.append({'view': view, 'split': split,
                     'subjects': sorted(c.subject for c in cases),
                     'abnormalities': sum(len(c.abnormalities) for c in cases)})
    if any(p.abnormalities for p in parts):
      tasks.append(ViewTask(view, split, tuple(parts)))
  extra = {'views_in_csvs': len(views), 'merged_views': merged,
           'excluded_images': [s for s in excluded_subjects if s not in used]}
  return tasks, skips, extra


def _sources(part: Part) -> str:
  return ', '.join(a.source for a in part.case.abnormalities)


def _read_first(task: ViewTask) -> tuple[Part | None, np.ndarray | None, list[patches.Skip]]:
  """The first readable full mammogram of the view's parts, and skips for those that fail."""
  failures = []
  for part in task.parts:
    if part.image is None:
      continue
    try:
      return part, dicom.read_image(part.image.path), [
          patches.Skip(p.case.subject, None, MERGED_FILE_UNUSED,
                       f'file_unreadable: {e}; view {task.view} uses {part.case.subject}',
                       task.split, _sources(p)) for p, e in failures]
    except dicom.DicomReadError as e:
      failures.append((part, e))
  return None, None, [patches.Skip(p.case.subject, None, 'file_unreadable', str(e), task.split,
                                   _sources(p)) for p, e in failures]


def process(task: ViewTask, spec: WholeSpec) -> patches.Result:
  """Reads one view's mammogram and masks; one example when an abnormality is located.

  The label counts every abnormality of the view in the CSVs (a pathology needs no mask);
  `mask`, `boxes`, `abnormality_types` and `pathologies` cover the abnormalities whose ROI
  mask was found, the others are skipped with the patch configs' reasons.
  """
  chosen, image, skips = _read_first(task)
  if image is None:
    return patches.Result([], skips)
  full_shape = image.shape
  resized = geometry.resize(image, spec.shape, spec.resize_method)
  del image  # one full-resolution array at a time: masks are read next
  mask = np.zeros(spec.shape, bool)
  boxes, types, pathologies = [], [], []
  for part in sorted(task.parts, key=lambda p: p.case.subject):
    for abn in part.abnormalities:
      lesion, skip = patches.find_mask(abn, full_shape, part.case.subject, task.split, spec)
      if skip:
        skips.append(dataclasses.replace(skip, source=abn.abnormality.source))
      if not lesion.usable:
        continue
      mask |= patches.resized_mask(lesion, full_shape, spec.shape)
      y0, x0, y1, x1 = lesion.box
      boxes.append(np.array([y0 / full_shape[0], x0 / full_shape[1],
                             y1 / full_shape[0], x1 / full_shape[1]], np.float64))
      types.append(ABNORMALITY_TYPES[cases_lib.ABNORMALITY_TYPES.index(
          part.case.abnormality_type)])
      pathologies.append(_severity(abn.abnormality.pathology))
  if not boxes:
    return patches.Result([], skips)
  malignant = any(_severity(a.pathology) == 'MALIGNANT'
                  for p in task.parts for a in p.case.abnormalities)
  case = chosen.case
  return patches.Result([(case.subject, {
      'id': case.subject,
      'image': patches.encode_png(resized),
      'mask': patches.encode_png(mask.astype(np.uint8)),
      'label': LABEL_NAMES[malignant],
      'boxes': boxes,
      'abnormality_types': types,
      'pathologies': pathologies,
      'patient_id': case.patient_id,
      'breast': case.breast,
      'view': case.view,
      'subjects': sorted(p.case.subject for p in task.parts),
  })], skips)


def _severity(pathology: str) -> str:
  return 'MALIGNANT' if pathology.startswith('MALIGNANT') else 'BENIGN'
