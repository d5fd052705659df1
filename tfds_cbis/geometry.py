"""Patch geometry in plain numpy: boxes, resizing, breast masks, baseline placement and the
Shen et al. / TFDS patch sampler. No TensorFlow, no file I/O; unit-tested on its own.

Boxes are (y0, x0, y1, x1) with exclusive ends, in pixels of the image they refer to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import PIL.Image
from scipy import ndimage

Box = tuple[int, int, int, int]

_RESAMPLE = {
    'nearest': PIL.Image.Resampling.NEAREST,
    'bilinear': PIL.Image.Resampling.BILINEAR,  # antialiased when shrinking
    'area': PIL.Image.Resampling.BOX,
}


def bounding_box(mask: np.ndarray) -> Box | None:
  """The tight box around the non-zero pixels, or None for an empty mask."""
  row_max = mask.max(axis=1)  # a max-reduction is several times faster than any() here
  rows = np.flatnonzero(row_max)
  if rows.size == 0:
    return None
  cols = np.flatnonzero(mask[rows[0]:rows[-1] + 1].max(axis=0))
  return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def binary_box(pixels: np.ndarray) -> tuple[bool, Box | None]:
  """(is_binary(pixels), bounding_box(pixels)) in about one pass over a large mask.

  Outside the box every pixel is 0, so the binary test only needs the box's contents.
  """
  box = bounding_box(pixels)
  if box is None:
    return True, None
  return is_binary(pixels[box[0]:box[2], box[1]:box[3]]), box


def is_binary(pixels: np.ndarray) -> bool:
  """True for a 0/x image (an ROI mask); crops and mammograms have many grey levels."""
  top = pixels.max()
  # Every non-zero pixel equals the maximum; two counting passes, no temporary masks kept.
  return top == 0 or np.count_nonzero(pixels) == np.count_nonzero(pixels == top)


def resize(image: np.ndarray, shape: tuple[int, int], method: str = 'bilinear') -> np.ndarray:
  """Resizes a 2-D uint8/uint16/bool image to (height, width), keeping its dtype.

  8- and 16-bit images use PIL's native modes (L, I;16), whose bilinear and area filters
  are antialiased when shrinking and round to the nearest level; bool masks go through
  float32 and come back thresholded at 0.5.
  """
  if image.shape == tuple(shape):
    return image.copy()
  if method not in _RESAMPLE:
    raise ValueError(f'unknown resize method {method!r}; use one of {sorted(_RESAMPLE)}')
  dtype = image.dtype
  if dtype in (np.uint8, np.uint16):
    # PIL resamples 8- and 16-bit greyscale natively (modes L and I;16), with rounding.
    pil = PIL.Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(pil.resize((shape[1], shape[0]), _RESAMPLE[method])).astype(dtype)
  pil = PIL.Image.fromarray(image.astype(np.float32), mode='F')
  out = np.asarray(pil.resize((shape[1], shape[0]), _RESAMPLE[method]))
  if dtype == bool:
    return out >= 0.5
  info = np.iinfo(dtype)
  return np.clip(np.rint(out), info.min, info.max).astype(dtype)


def breast_mask(image: np.ndarray, fraction: float = 0.05) -> np.ndarray:
  """The breast as the largest connected region brighter than `fraction` of the maximum,
  with holes filled (as TFDS's background sampler does with its largest contour)."""
  foreground = image > fraction * float(image.max())
  labels, count = ndimage.label(foreground)
  if count == 0:
    return foreground
  sizes = np.bincount(labels.ravel())
  sizes[0] = 0
  return ndimage.binary_fill_holes(labels == int(sizes.argmax()))


class AreaTable:
  """Summed-area table: the count of True pixels in any box in O(1)."""

  def __init__(self, mask: np.ndarray):
    self.shape = mask.shape
    self._sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.float64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1, out=self._sat[1:, 1:])
    self.total = float(self._sat[-1, -1])

  def count(self, box: Box) -> float:
    y0, x0, y1, x1 = box
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, self.shape[0]), min(x1, self.shape[1])
    if y1 <= y0 or x1 <= x0:
      return 0.0
    s = self._sat
    return float(s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0])


def box_overlaps(box: Box, other: Box) -> bool:
  return box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]


def neighbour_boxes(box: Box) -> list[tuple[str, Box]]:
  """Same-size boxes touching `box` on the left, right, top and bottom, in that order."""
  y0, x0, y1, x1 = box
  h, w = y1 - y0, x1 - x0
  return [('left', (y0, x0 - w, y1, x0)), ('right', (y0, x1, y1, x1 + w)),
          ('top', (y0 - h, x0, y0, x1)), ('bottom', (y1, x0, y1 + h, x1))]


def choose_baseline(box: Box, image_shape: tuple[int, int], breast: AreaTable, stride: int,
                    lesions: Sequence[tuple[Box, np.ndarray]],
                    min_breast_fraction: float) -> tuple[str, Box] | None:
  """Picks the healthy baseline box next to an abnormality, as the reference study did.

  A candidate must lie inside the image, have at least `min_breast_fraction` of its area in
  the breast (measured on the `stride`-downsampled breast mask behind `breast`), and overlap
  no lesion pixel of the image; `lesions` holds each lesion's box and its mask inside that box.
  Among valid candidates the one with the most breast tissue wins (ties in the fixed order
  left, right, top, bottom), so the choice is deterministic.
  """
  best = None
  for side, cand in neighbour_boxes(box):
    y0, x0, y1, x1 = cand
    if y0 < 0 or x0 < 0 or y1 > image_shape[0] or x1 > image_shape[1]:
      continue
    if any(_touches_lesion(cand, lbox, lmask) for lbox, lmask in lesions):
      continue
    low = (y0 // stride, x0 // stride, -(-y1 // stride), -(-x1 // stride))
    area = (low[2] - low[0]) * (low[3] - low[1])
    fraction = breast.count(low) / max(area, 1)
    if fraction >= min_breast_fraction and (best is None or fraction > best[0]):
      best = (fraction, side, cand)
  return None if best is None else (best[1], best[2])


def _touches_lesion(cand: Box, lesion_box: Box, lesion_mask: np.ndarray) -> bool:
  if not box_overlaps(cand, lesion_box):
    return False
  y0, x0 = max(cand[0], lesion_box[0]), max(cand[1], lesion_box[1])
  y1, x1 = min(cand[2], lesion_box[2]), min(cand[3], lesion_box[3])
  ly, lx = lesion_box[0], lesion_box[1]
  return bool(lesion_mask[y0 - ly:y1 - ly, x0 - lx:x1 - lx].any())


def largest_component_box(mask: np.ndarray) -> Box | None:
  """Box of the largest connected blob (TFDS uses the largest contour's bounding box)."""
  box = bounding_box(mask)
  if box is None:
    return None
  y0, x0, y1, x1 = box
  labels, count = ndimage.label(mask[y0:y1, x0:x1])
  if count > 1:
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sub = bounding_box(labels == int(sizes.argmax()))
    return y0 + sub[0], x0 + sub[1], y0 + sub[2], x0 + sub[3]
  return box


def _corner_range(start: int, extent: int, patch: int, limit: int,
                  threshold: float) -> tuple[int, int]:
  """Allowed top-left positions on one axis (TFDS v3.0.0's window, clamped to the image)."""
  big, small = max(extent, patch), min(extent, patch)
  low = int(start - big + threshold * small)
  high = start + extent - int(threshold * small)
  low, high = max(low, 0), min(high, limit - patch - 1)
  return low, max(low, high)


def _random_corners(rng: np.random.Generator, box: Box, shape: tuple[int, int], patch: int,
                    threshold: float, tries: int) -> np.ndarray:
  ylo, yhi = _corner_range(box[0], box[2] - box[0], patch, shape[0], threshold)
  xlo, xhi = _corner_range(box[1], box[3] - box[1], patch, shape[1], threshold)
  n = min(tries, (yhi - ylo + 1) * (xhi - xlo + 1))
  return np.stack([rng.integers(ylo, yhi + 1, n), rng.integers(xlo, xhi + 1, n)], axis=1)


def sample_lesion_patches(rng: np.random.Generator, lesion: AreaTable, box: Box, count: int,
                          patch: int, threshold: float = 0.9, decay: float = 0.95,
                          tries: int = 100, min_threshold: float = 0.1) -> list[Box] | None:
  """Top-left corners of `count` patches showing one lesion (Shen et al.'s S10 / TFDS).

  A patch is kept when the lesion covers more than `threshold` of the patch or the patch holds
  more than `threshold` of the lesion; after each round of `tries` the threshold is multiplied
  by `decay`. Returns None when the threshold falls below `min_threshold` first.
  """
  kept: list[Box] = []
  area = lesion.total
  shape = lesion.shape
  if area <= 0 or patch >= min(shape):
    return None
  while threshold >= min_threshold:
    for y, x in _random_corners(rng, box, shape, patch, threshold, tries):
      inside = lesion.count((y, x, y + patch, x + patch))
      if inside / patch**2 > threshold or inside / area > threshold:
        kept.append((int(y), int(x), int(y) + patch, int(x) + patch))
        if len(kept) == count:
          return kept
    threshold *= decay
  return None


def sample_background_patches(rng: np.random.Generator, breast: AreaTable, breast_box: Box,
                              lesions: Sequence[AreaTable], count: int, patch: int,
                              min_breast: float = 0.75, max_overlap: float = 0.35,
                              tries: int = 100) -> list[Box] | None:
  """Top-left corners of `count` healthy patches (TFDS's background sampler).

  A patch needs more than `min_breast` of its area in the breast, and for every lesion neither
  the share of the patch nor the share of the lesion inside it may exceed `max_overlap`. Each
  failed round relaxes min_breast by ×0.95 and max_overlap by ×1.05; returns None once
  min_breast ≤ 0.1 or max_overlap ≥ 0.9 without the quota.
  """
  kept: list[Box] = []
  if patch >= min(breast.shape):
    return None
  while min_breast > 0.1 and max_overlap < 0.9:
    for y, x in _random_corners(rng, breast_box, breast.shape, patch, min_breast, tries):
      cand = (int(y), int(x), int(y) + patch, int(x) + patch)
      if breast.count(cand) / patch**2 <= min_breast:
        continue
      if any(max(l.count(cand) / patch**2, l.count(cand) / max(l.total, 1)) > max_overlap
             for l in lesions):
        continue
      kept.append(cand)
      if len(kept) == count:
        return kept
    min_breast *= 0.95
    max_overlap *= 1.05
  return None
