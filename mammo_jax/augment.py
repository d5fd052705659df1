"""The study's Keras `ImageDataGenerator` augmentation, re-implemented in JAX to run on device.

Each example gets one random affine map (rotation, shift, shear, zoom, composed about the
image centre as keras-preprocessing's `apply_affine_transform` does) followed by random
flips, all folded into a single 3x3 matrix from output pixel coordinates (row, col, 1) to
input coordinates. Resampling is bilinear with the boundary modes of
`scipy.ndimage.affine_transform(order=1)`, which Keras calls per channel.

Axis convention: the study ran TF 1.15, whose keras-preprocessing (<= 1.1.2) builds the matrix
directly in (row, col) coordinates: `tx` (from `height_shift_range`) moves rows, the shear acts
along rows and the centre is ((H - 1) / 2, (W - 1) / 2). Later Keras (keras-preprocessing
PR #318, kept in Keras 3's `keras.src.legacy.preprocessing.image`) conjugates the matrix with
an x/y swap but keeps the centre offsets unswapped, which is only self-consistent for square
images. `affine_matrix(..., keras3_axes=True)` reproduces that variant so that tests can
compare with the installed Keras; training uses the study's convention. For the study's
square images the two differ only in the shear axis (rotation sign, zoom and shift axes are
symmetric in distribution).

Randomness is per example: `augment_batch` takes one PRNG key per image, so an example's
transform does not depend on how a batch is split over devices, and the same keys give the
same transforms to paired (abnormality, baseline) batches.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from mammo_jax.config_lib import base as config_base

FILL_MODES = ('reflect', 'nearest', 'constant', 'wrap')


def _check_fill_mode(fill_mode: str) -> None:
  if fill_mode not in FILL_MODES:
    raise ValueError(f'fill_mode must be one of {FILL_MODES}, got {fill_mode!r}')


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
  """Keras `ImageDataGenerator` augmentation options (ranges as Keras interprets them)."""
  rotation: float = 0.0  # degrees; angle ~ U[-rotation, rotation]
  shear: float = 0.0  # degrees; shear angle ~ U[-shear, shear]
  zoom: float = 0.0  # zx, zy ~ U[1 - zoom, 1 + zoom] independently; > 1 zooms out
  width_shift: float = 0.0  # fraction of the width; shift ~ U[-f, f] * width pixels
  height_shift: float = 0.0  # fraction of the height
  horizontal_flip: bool = False  # with probability 0.5
  vertical_flip: bool = False  # with probability 0.5
  fill_mode: str = 'reflect'  # scipy.ndimage / Keras meaning

  def __post_init__(self):
    for name in ('rotation', 'shear', 'zoom', 'width_shift', 'height_shift'):
      value = float(getattr(self, name))
      if not value >= 0:
        raise ValueError(f'AugmentSpec.{name} must be >= 0, got {value}')
      object.__setattr__(self, name, value)
    # Keras reads shift ranges >= 1 as pixels and zoom >= 1 gives non-positive factors; both
    # are outside what this spec means, so refuse them rather than guess.
    for name in ('zoom', 'width_shift', 'height_shift'):
      if getattr(self, name) >= 1:
        raise ValueError(f'AugmentSpec.{name} must be < 1, got {getattr(self, name)}')
    for name in ('horizontal_flip', 'vertical_flip'):
      object.__setattr__(self, name, bool(getattr(self, name)))
    _check_fill_mode(self.fill_mode)

  @property
  def enabled(self) -> bool:
    return bool(self.rotation or self.shear or self.zoom or self.width_shift
                or self.height_shift or self.horizontal_flip or self.vertical_flip)

  @classmethod
  def from_config(cls, cfg: Any) -> 'AugmentSpec':
    """Builds a spec from a ConfigDict or mapping whose keys are this class's field names."""
    values = dict(cfg.to_dict() if hasattr(cfg, 'to_dict') else cfg)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'Unknown augmentation option(s): {", ".join(unknown)}')
    return cls(**values)


# The study's settings A-E (docs/REFERENCE_STUDY.md §1.7); their values live in the config helper.
STUDY_SETTINGS: dict[str, AugmentSpec] = {
    name: AugmentSpec(**values) for name, values in config_base.STUDY_AUGMENT.items()}


def _matrix(a00, a01, a02, a10, a11, a12) -> jnp.ndarray:
  """[..., 3, 3] homogeneous matrices from broadcastable entries of the top two rows."""
  entries = jnp.broadcast_arrays(*[jnp.asarray(e, jnp.float32) for e in
                                   (a00, a01, a02, a10, a11, a12)])
  zero, one = jnp.zeros_like(entries[0]), jnp.ones_like(entries[0])
  rows = [jnp.stack(entries[:3], -1), jnp.stack(entries[3:], -1), jnp.stack([zero, zero, one], -1)]
  return jnp.stack(rows, -2)


def affine_matrix(theta, tx, ty, shear, zx, zy, height: int, width: int,
                  flip_horizontal=False, flip_vertical=False,
                  keras3_axes: bool = False) -> jnp.ndarray:
  """Output-to-input matrices [..., 3, 3] in (row, col, 1) for explicit Keras parameters.

  Arguments broadcast against each other. theta and shear are in degrees; tx, ty are the
  Keras shifts in pixels (tx from the height range, ty from the width range); zx, zy are
  zoom factors. Flips are applied after the affine map, as `ImageDataGenerator` does.
  keras3_axes=True gives Keras >= 2.5 / Keras 3's swapped-axes variant (see module doc).
  """
  theta = jnp.deg2rad(jnp.asarray(theta, jnp.float32))
  shear = jnp.deg2rad(jnp.asarray(shear, jnp.float32))
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Keras composes rotation @ shift @ shear @ zoom, each in the coordinates of the next.
  core = (_matrix(cos, -sin, 0, sin, cos, 0) @ _matrix(1, 0, tx, 0, 1, ty)
          @ _matrix(1, -jnp.sin(shear), 0, 0, jnp.cos(shear), 0) @ _matrix(zx, 0, 0, 0, zy, 0))
  # transform_matrix_offset_center(matrix, h, w): offsets h / 2 - 0.5 and w / 2 - 0.5.
  o_0, o_1 = height / 2 - 0.5, width / 2 - 0.5
  centred = _matrix(1, 0, o_0, 0, 1, o_1) @ core @ _matrix(1, 0, -o_0, 0, 1, -o_1)
  if keras3_axes:
    swap = jnp.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], jnp.float32)
    centred = swap @ centred @ swap
  # A flip of the transformed image reads it at (H - 1 - row) and/or (W - 1 - col).
  sv = jnp.where(jnp.asarray(flip_vertical), -1.0, 1.0)
  sh = jnp.where(jnp.asarray(flip_horizontal), -1.0, 1.0)
  flip = _matrix(sv, 0, (1 - sv) / 2 * (height - 1), 0, sh, (1 - sh) / 2 * (width - 1))
  return centred @ flip


def sample_parameters(keys: jnp.ndarray, height: int, width: int,
                      spec: AugmentSpec) -> dict[str, jnp.ndarray]:
  """Draws the Keras `get_random_transform` parameters, one set per key ([N] arrays)."""
  # One uniform vector per key keeps each example's draw independent of the batch layout.
  u = jax.vmap(lambda key: jax.random.uniform(key, (8,), jnp.float32))(keys)
  sym = 2 * u - 1  # U[-1, 1]
  return {
      'theta': sym[:, 0] * spec.rotation,
      'tx': sym[:, 1] * spec.height_shift * height,
      'ty': sym[:, 2] * spec.width_shift * width,
      'shear': sym[:, 3] * spec.shear,
      'zx': 1 + sym[:, 4] * spec.zoom,
      'zy': 1 + sym[:, 5] * spec.zoom,
      'flip_horizontal': (u[:, 6] < 0.5) & spec.horizontal_flip,
      'flip_vertical': (u[:, 7] < 0.5) & spec.vertical_flip,
  }


def random_transforms(keys: jnp.ndarray, height: int, width: int,
                      spec: AugmentSpec) -> jnp.ndarray:
  """[N, 3, 3] random output-to-input matrices, one per key."""
  return affine_matrix(height=height, width=width,
                       **sample_parameters(keys, height, width, spec))


def _source_index(index: jnp.ndarray, size: int, fill_mode: str) -> jnp.ndarray:
  """Maps integer neighbour indices outside [0, size) to the pixel scipy reads there."""
  if fill_mode == 'reflect':  # half-sample symmetric: d c b a | a b c d | d c b a
    index = jnp.remainder(index, 2 * size)
    return jnp.where(index >= size, 2 * size - 1 - index, index)
  # 'nearest' reads the edge; for 'constant' and 'wrap' out-of-range neighbours only ever get
  # zero weight (or are masked), so clipping just keeps the gather in bounds.
  return jnp.clip(index, 0, size - 1)


def _wrap_coordinate(coord: jnp.ndarray, size: int) -> jnp.ndarray:
  """scipy's legacy 'wrap': period size - 1, so the first and last samples coincide."""
  if size == 1:
    return jnp.zeros_like(coord)
  period = size - 1
  below = period - jnp.remainder(-coord, period)  # in (0, period]
  above = jnp.remainder(coord, period)  # in [0, period)
  return jnp.where(coord < 0, below, jnp.where(coord > period, above, coord))


def apply_transforms(images: jnp.ndarray, matrices: jnp.ndarray, fill_mode: str = 'reflect',
                     cval: float = 0.0) -> jnp.ndarray:
  """Resamples images [N, H, W, C] at matrices [N, 3, 3] @ (row, col, 1), bilinearly.

  Matches scipy.ndimage.affine_transform(order=1, mode=fill_mode, cval=cval) per channel.
  """
  _check_fill_mode(fill_mode)
  n, height, width, channels = images.shape
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]
  m = matrices.astype(jnp.float32)[:, :, :, None, None]  # [N, 3, 3, 1, 1] against [H, W]
  r = m[:, 0, 0] * rows + m[:, 0, 1] * cols + m[:, 0, 2]  # [N, H, W] input coordinates
  c = m[:, 1, 0] * rows + m[:, 1, 1] * cols + m[:, 1, 2]
  if fill_mode == 'wrap':
    r, c = _wrap_coordinate(r, height), _wrap_coordinate(c, width)
  r0, c0 = jnp.floor(r), jnp.floor(c)
  fr, fc = r - r0, c - c0
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
  r_idx = [_source_index(r0 + k, height, fill_mode) for k in (0, 1)]
  c_idx = [_source_index(c0 + k, width, fill_mode) for k in (0, 1)]
  flat = images.astype(jnp.float32).reshape(n, height * width, channels)

  def tap(ri, ci):
    index = (ri * width + ci).reshape(n, height * width, 1)
    return jnp.take_along_axis(flat, index, axis=1).reshape(n, height, width, channels)

  fr, fc = fr[..., None], fc[..., None]
  out = ((1 - fr) * ((1 - fc) * tap(r_idx[0], c_idx[0]) + fc * tap(r_idx[0], c_idx[1]))
         + fr * ((1 - fc) * tap(r_idx[1], c_idx[0]) + fc * tap(r_idx[1], c_idx[1])))
  if fill_mode == 'constant':
    # scipy's 'constant' does not blend cval in: any point outside [0, size - 1] is cval.
    inside = (r >= 0) & (r <= height - 1) & (c >= 0) & (c <= width - 1)
    out = jnp.where(inside[..., None], out, cval)
  return out.astype(images.dtype)


def augment_batch(keys: jnp.ndarray, images: jnp.ndarray, spec: AugmentSpec) -> jnp.ndarray:
  """Randomly augments images [N, H, W, C] with one key per example; identity if disabled."""
  if not spec.enabled:
    return images
  _, height, width, _ = images.shape
  return apply_transforms(images, random_transforms(keys, height, width, spec), spec.fill_mode)
