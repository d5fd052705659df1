"""From CSV cases and indexed DICOM files to patch examples, one full mammogram at a time.

`resolve` (driver side, headers only) turns a CSV case into an `ImageTask` naming the files to
read; `process` (worker side, pixels) turns a task into examples and skip records. Nothing here
imports TensorFlow, so `process` runs in worker processes and Beam workers. Memory is bounded by
one full mammogram plus one mask at a time: each mask is reduced to its bounding box at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Sequence

import numpy as np
import PIL.Image

from tfds_cbis import cases as cases_lib
from tfds_cbis import dicom
from tfds_cbis import geometry
from tfds_cbis import index as index_lib

BACKGROUND = 'BACKGROUND'
SAMPLED_LABEL_NAMES = (BACKGROUND,) + cases_lib.LABEL_NAMES


@dataclasses.dataclass(frozen=True)
class PatchSpec:
  """What to cut from each mammogram; mirrors the BuilderConfig fields."""

  mode: str = 'roi'  # 'roi': mask box + baseline; 'sampled': Shen et al. S10 patches
  patch_size: int = 150
  patches_per_abnormality: int = 10  # sampled mode
  background_per_image: int = 10  # sampled mode
  resize_shape: tuple[int, int] = (1152, 896)  # sampled mode: whole image resized first
  resize_method: str = 'bilinear'
  baseline_min_breast: float = 0.9  # roi mode: share of the baseline box inside the breast
  resize_mismatched_masks: bool = False
  max_aspect_difference: float = 0.02


@dataclasses.dataclass(frozen=True)
class Skip:
  """Something of the CSVs that did not become examples, and why."""

  subject: str
  abnormality_id: int | None  # None: the whole image (all its abnormalities)
  reason: str  # a short category, counted in the build report
  detail: str
  split: str = ''
  source: str = ''  # the CSV rows ('file.csv:line') the skipped examples come from

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class AbnormalityTask:
  abnormality: cases_lib.Abnormality
  candidates: tuple[dicom.DicomHeader, ...]  # files of its crop and ROI series
  unreadable: tuple[str, ...] = ()  # 'path: reason' of corrupt files in its folders


@dataclasses.dataclass(frozen=True)
class ImageTask:
  case: cases_lib.Case
  split: str
  image: dicom.DicomHeader
  abnormalities: tuple[AbnormalityTask, ...]

  def headers(self) -> list[dicom.DicomHeader]:
    """Every file the task may read (for the build's provenance)."""
    return [self.image, *(c for a in self.abnormalities for c in a.candidates)]


@dataclasses.dataclass
class Result:
  examples: list[tuple[str, dict]]
  skips: list[Skip]
  without_baseline: int = 0


def encode_png(patch: np.ndarray) -> bytes:
  """Lossless 8/16-bit greyscale PNG of a 2-D patch, made in the worker (TFDS accepts bytes),
  so neither the main process nor a Beam worker needs TensorFlow to encode."""
  out = io.BytesIO()
  PIL.Image.fromarray(np.ascontiguousarray(patch)).save(out, format='PNG', compress_level=1)
  return out.getvalue()


def stable_seed(key: str) -> int:
  """A 64-bit seed from a string, the same in every process (unlike hash())."""
  return int.from_bytes(hashlib.sha256(key.encode('utf-8')).digest()[:8], 'little')


def _sources(case: cases_lib.Case) -> str:
  return ', '.join(a.source for a in case.abnormalities)


def _missing_reason(index: index_lib.DicomIndex, subject: str, what: str,
                    refs: Sequence[cases_lib.FileRef]) -> tuple[str, str]:
  bad = index.unreadable_under(subject)
  if bad:
    return 'file_unreadable', '; '.join(f'{p}: {r}' for p, r in sorted(bad.items()))
  unlisted = index.unreadable_dirs_for(subject)
  if unlisted:
    return 'folder_unreadable', ('cannot list ' + '; '.join(
        f'{p}: {r}' for p, r in unlisted.items()) + ' (check its permissions)')
  series = ', '.join(sorted({r.series_uid for r in refs}))
  return 'file_missing', (f'no DICOM file of {what} series {series} (subject {subject}) was '
                          f'found under {index.root}')


def find_image(case: cases_lib.Case, split: str,
               index: index_lib.DicomIndex) -> tuple[dicom.DicomHeader | None, list[Skip]]:
  """The header of a case's full mammogram, or None and the skip that says why."""
  images = index.files(case.image.series_key)
  if not images:
    reason, detail = _missing_reason(index, case.image.subject, 'full mammogram', [case.image])
    return None, [Skip(case.subject, None, reason, detail, split, _sources(case))]
  # One file per full-image series in CBIS-DDSM; if a tree holds more, take the largest.
  return max(images, key=lambda h: (h.rows * h.columns, h.path)), []


def find_abnormalities(case: cases_lib.Case, split: str, index: index_lib.DicomIndex,
                       image_paths: frozenset[str] = frozenset()
                       ) -> tuple[list[AbnormalityTask], list[Skip]]:
  """The candidate mask/crop files of each abnormality (never one of `image_paths`)."""
  tasks, skips = [], []
  for abn in case.abnormalities:
    seen, candidates = set(), []
    for ref in (abn.roi, abn.crop):
      for header in index.files(ref.series_key):
        if header.path not in seen and header.path not in image_paths:
          seen.add(header.path)
          candidates.append(header)
    if candidates:
      bad = {**index.unreadable_under(abn.roi.subject), **index.unreadable_under(abn.crop.subject)}
      tasks.append(AbnormalityTask(abn, tuple(candidates),
                                   tuple(f'{p}: {r}' for p, r in sorted(bad.items()))))
    else:
      reason, detail = _missing_reason(index, abn.roi.subject, 'ROI mask / crop',
                                       [abn.roi, abn.crop])
      skips.append(Skip(case.subject, abn.abnormality_id, reason, detail, split, abn.source))
  return tasks, skips


def resolve(case: cases_lib.Case, split: str,
            index: index_lib.DicomIndex) -> tuple[ImageTask | None, list[Skip]]:
  """Finds the files of one case by their UIDs; reports what is missing."""
  image, skips = find_image(case, split, index)
  if image is None:
    return None, skips
  tasks, skips = find_abnormalities(case, split, index, frozenset([image.path]))
  task = ImageTask(case, split, image, tuple(tasks)) if tasks else None
  return task, skips


@dataclasses.dataclass
class Lesion:
  task: AbnormalityTask
  box: geometry.Box | None  # in full-image pixels
  mask: np.ndarray | None  # the mask inside `box`
  usable: bool  # False: known only for overlap tests (e.g. a mismatched mask)


def find_mask(abn: AbnormalityTask, shape: tuple[int, int], subject: str, split: str,
               spec: PatchSpec) -> tuple[Lesion, Skip | None]:
  """Decides which file is the ROI mask from the pixels: binary, at the image's size.

  Crops are never read unless no full-size binary file exists, so the usual cost is one mask.
  """
  aid = abn.abnormality.abnormality_id
  errors, mismatched = list(abn.unreadable), None
  full_size = [h for h in abn.candidates if (h.rows, h.columns) == shape]
  others = [h for h in abn.candidates if (h.rows, h.columns) != shape]
  for header in full_size + others:
    try:
      pixels = dicom.read_pixels(header.path)
    except dicom.DicomReadError as e:
      errors.append(str(e))
      continue
    binary, box = geometry.binary_box(pixels)
    if not binary:
      continue  # a crop
    if pixels.shape == shape:
      if box is None:
        return Lesion(abn, None, None, False), Skip(
            subject, aid, 'empty_mask', f'{header.path}: the ROI mask has no lesion pixel', split)
      return Lesion(abn, box, pixels[box[0]:box[2], box[1]:box[3]] > 0, True), None
    if mismatched is None:
      mismatched = (header, pixels)
  if mismatched is not None:
    header, pixels = mismatched
    aspect = (pixels.shape[0] / pixels.shape[1]) / (shape[0] / shape[1])
    scaled = geometry.resize(pixels > 0, shape, 'nearest')
    box = geometry.bounding_box(scaled)
    lesion_mask = None if box is None else scaled[box[0]:box[2], box[1]:box[3]]
    ok = abs(aspect - 1.0) <= spec.max_aspect_difference
    if spec.resize_mismatched_masks and ok and box is not None:
      return Lesion(abn, box, lesion_mask, True), None
    hint = ('set resize_mismatched_masks=True in a BuilderConfig to resize it' if ok else
            f'aspect ratios differ by {abs(aspect - 1):.1%} > {spec.max_aspect_difference:.0%}')
    return Lesion(abn, box, lesion_mask, False), Skip(
        subject, aid, 'mask_size_mismatch',
        f'{header.path}: mask is {pixels.shape[0]}x{pixels.shape[1]} but the image is '
        f'{shape[0]}x{shape[1]} ({hint})', split)
  if errors:
    return Lesion(abn, None, None, False), Skip(subject, aid, 'file_unreadable',
                                                 '; '.join(errors), split)
  files = ', '.join(f'{h.path} ({h.rows}x{h.columns})' for h in abn.candidates)
  return Lesion(abn, None, None, False), Skip(
      subject, aid, 'no_mask', f'no binary ROI mask among {files}', split)


def _metadata(case: cases_lib.Case) -> dict:
  return {'patient_id': case.patient_id, 'breast': case.breast, 'view': case.view}


def process(task: ImageTask, spec: PatchSpec) -> Result:
  """Reads one mammogram and its masks and cuts the patches of `spec.mode`."""
  case, split = task.case, task.split
  try:
    image = dicom.read_image(task.image.path)
  except dicom.DicomReadError as e:
    return Result([], [Skip(case.subject, None, 'file_unreadable', str(e), split,
                            _sources(case))])
  lesions, skips = [], []
  for abn in task.abnormalities:
    lesion, skip = find_mask(abn, image.shape, case.subject, split, spec)
    lesions.append(lesion)
    if skip:
      skips.append(dataclasses.replace(skip, source=abn.abnormality.source))
  # A lesion whose mask could not be found or read has no known place, so no patch of this
  # image can be certified healthy: no baselines and no background patches for it.
  all_located = (len(task.abnormalities) == len(case.abnormalities)
                 and all(l.box is not None for l in lesions))
  if spec.mode == 'roi':
    result = _roi_examples(case, image, lesions, spec, all_located)
  elif spec.mode == 'sampled':
    result = _sampled_examples(case, split, image, lesions, spec, all_located)
  else:
    raise ValueError(f'unknown patch mode {spec.mode!r}')
  result.skips[:0] = skips
  return result


def _roi_examples(case: cases_lib.Case, image: np.ndarray, lesions: list[Lesion],
                  spec: PatchSpec, all_located: bool) -> Result:
  """The reference study's patches: the mask's box resized, plus a healthy neighbour box."""
  size = (spec.patch_size, spec.patch_size)
  stride = max(1, max(image.shape) // 256)  # breast tissue test on a ~256 px thumbnail
  breast = geometry.AreaTable(geometry.breast_mask(image[::stride, ::stride]))
  known = [(l.box, l.mask) for l in lesions if l.box is not None]
  result = Result([], [])
  for lesion in lesions:
    if not lesion.usable:
      continue
    abn = lesion.task.abnormality
    y0, x0, y1, x1 = lesion.box
    patch = geometry.resize(image[y0:y1, x0:x1], size, spec.resize_method)
    chosen = None
    if all_located:
      chosen = geometry.choose_baseline(lesion.box, image.shape, breast, stride, known,
                                        spec.baseline_min_breast)
    if chosen is None:
      baseline = np.zeros(size, np.uint16)
      result.without_baseline += 1
    else:
      by0, bx0, by1, bx1 = chosen[1]
      baseline = geometry.resize(image[by0:by1, bx0:bx1], size, spec.resize_method)
    key = f'{case.subject}/abnorm_{abn.abnormality_id}'
    result.examples.append((key, {
        'id': key,
        'image': encode_png(patch),
        'baseline': encode_png(baseline),
        'has_baseline': chosen is not None,
        'box': np.asarray(lesion.box, np.int32),
        'baseline_box': np.asarray(chosen[1] if chosen else (0, 0, 0, 0), np.int32),
        'label': cases_lib.label_name(case.abnormality_type, abn.pathology),
        'abnormality_type': case.abnormality_type,
        'pathology': 'MALIGNANT' if abn.pathology.startswith('MALIGNANT') else 'BENIGN',
        'abnormality_id': abn.abnormality_id,
        'assessment': abn.assessment,
        'subtlety': abn.subtlety,
        'breast_density': case.breast_density,
        **_metadata(case),
    }))
  return result


def _sampled_examples(case: cases_lib.Case, split: str, image: np.ndarray,
                      lesions: list[Lesion], spec: PatchSpec, all_located: bool) -> Result:
  """Shen et al.'s S10 patches from the image resized to `spec.resize_shape` (TFDS `patches`)."""
  shape = tuple(spec.resize_shape)
  full_shape = image.shape
  small = geometry.resize(image, shape, spec.resize_method)
  del image  # keep one full-resolution array alive at a time
  result = Result([], [])
  tables = [(lesion, resized_mask(lesion, full_shape, shape))
            for lesion in lesions if lesion.box is not None]
  size = spec.patch_size
  for lesion, mask in tables:
    if not lesion.usable:
      continue
    abn = lesion.task.abnormality
    base = f'{case.subject}/abnorm_{abn.abnormality_id}'
    box = geometry.largest_component_box(mask)
    corners = None
    if box is not None:
      corners = geometry.sample_lesion_patches(
          np.random.default_rng(stable_seed(base)), geometry.AreaTable(mask), box,
          spec.patches_per_abnormality, size)
    if corners is None:
      result.skips.append(Skip(case.subject, abn.abnormality_id, 'sampling_failed',
                               f'no {spec.patches_per_abnormality} patches of {size} px reach '
                               'the minimum lesion overlap', split))
      continue
    label = cases_lib.label_name(case.abnormality_type, abn.pathology)
    for k, (y0, x0, y1, x1) in enumerate(corners):
      key = f'{base}/patch_{k}'
      result.examples.append((key, {
          'id': key, 'image': encode_png(small[y0:y1, x0:x1]), 'label': label,
          'box': np.asarray((y0, x0, y1, x1), np.int32),
          'abnormality_id': abn.abnormality_id, **_metadata(case)}))
  # Like TFDS, an image gives background patches only with at least one usable abnormality;
  # and only when every lesion's place is known (see `process`).
  if not all_located:
    result.skips.append(Skip(case.subject, None, 'background_skipped',
                             'a lesion of this image has no readable mask, so no patch of it '
                             'can be certified as background', split))
  elif spec.background_per_image and any(l.usable for l in lesions):
    breast = geometry.breast_mask(small)
    breast_box = geometry.bounding_box(breast)
    corners = None
    if breast_box is not None:
      corners = geometry.sample_background_patches(
          np.random.default_rng(stable_seed(f'{case.subject}/background')),
          geometry.AreaTable(breast), breast_box, [geometry.AreaTable(m) for _, m in tables],
          spec.background_per_image, size)
    if corners is None:
      result.skips.append(Skip(case.subject, None, 'sampling_failed',
                               f'no {spec.background_per_image} background patches fit the '
                               'breast / overlap limits', split))
    else:
      for k, (y0, x0, y1, x1) in enumerate(corners):
        key = f'{case.subject}/background_{k}'
        result.examples.append((key, {
            'id': key, 'image': encode_png(small[y0:y1, x0:x1]), 'label': BACKGROUND,
            'box': np.asarray((y0, x0, y1, x1), np.int32),
            'abnormality_id': 0, **_metadata(case)}))
  return result


def resized_mask(lesion: Lesion, full_shape: tuple[int, int],
                  shape: tuple[int, int]) -> np.ndarray:
  """The lesion's mask at the resized image's scale, built from its box alone.

  A resized pixel counts when any of the pixels it covers is lesion (area resampling, > 0),
  as TFDS's `> 0` after resizing does, so thin calcification masks do not vanish.
  """
  (h, w), (full_h, full_w) = shape, full_shape
  y0, x0, y1, x1 = lesion.box
  # Integer floor / ceil: float scales put e.g. 90 * (224 / 160) at 125.999... (not 126).
  ry0, rx0 = y0 * h // full_h, x0 * w // full_w
  ry1, rx1 = max(ry0 + 1, -(-y1 * h // full_h)), max(rx0 + 1, -(-x1 * w // full_w))
  out = np.zeros(shape, bool)
  coverage = geometry.resize(lesion.mask.astype(np.uint8) * 255, (ry1 - ry0, rx1 - rx0), 'area')
  out[ry0:ry1, rx0:rx1] = coverage > 0
  return out
