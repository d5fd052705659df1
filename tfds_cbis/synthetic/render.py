"""Mammogram-like pixels: breast tissue, pectoral muscle, masses and calcification clusters.

Everything is drawn with the chest wall on the left (x = 0) and mirrored for RIGHT breasts by
the caller, so a LEFT breast has its chest wall on the left image edge. A lesion's look follows
its plan (`Lesion.score`, descriptors, contrast); all randomness comes from the image's own
stream, passed in as `rng`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from tfds_cbis.synthetic.plan import Lesion


def _smoothstep(x: np.ndarray) -> np.ndarray:
  x = np.clip(x, 0.0, 1.0)
  return x * x * (3.0 - 2.0 * x)


@dataclasses.dataclass(frozen=True)
class Breast:
  """A half-ellipse centred on the chest wall, plus the pectoral triangle in MLO views."""

  cy: float
  ry: float
  rx: float
  pect_x: float  # Pectoral triangle reaches this far along the top edge (0: none).
  pect_y: float  # ... and this far down the chest wall.

  def radius(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.sqrt(((y - self.cy) / self.ry) ** 2 + (x / self.rx) ** 2)


def breast_geometry(rng: np.random.Generator, h: int, w: int, view: str) -> Breast:
  u = rng.random(5)
  if view == 'CC':
    return Breast(cy=h * (0.47 + 0.06 * u[0]), ry=h * (0.40 + 0.07 * u[1]),
                   rx=w * (0.72 + 0.16 * u[2]), pect_x=0.0, pect_y=0.0)
  return Breast(cy=h * (0.40 + 0.08 * u[0]), ry=h * (0.48 + 0.07 * u[1]),
                 rx=w * (0.74 + 0.16 * u[2]), pect_x=w * (0.25 + 0.17 * u[3]),
                 pect_y=h * (0.35 + 0.2 * u[4]))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int],
                  sigma: tuple[float, float]) -> np.ndarray:
  n = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma,
                              mode='reflect')
  return n / (n.std() + 1e-6)


def render_tissue(rng: np.random.Generator, breast: Breast, h: int, w: int,
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
class Drawn:
  """A lesion rendered in its window: intensity added, mask, and the window's placement."""

  y0: int
  x0: int
  delta: np.ndarray  # float32
  mask: np.ndarray  # bool, same shape


def _mass_params(rng: np.random.Generator, lesion: Lesion, h: int, scale: float) -> dict:
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


def _draw_mass(p: dict, cy: float, cx: float, h: int) -> Drawn:
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
  return Drawn(y0, x0, delta.astype(np.float32), u <= 1.0)


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


def _calc_params(rng: np.random.Generator, lesion: Lesion, h: int, scale: float) -> dict:
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


def _draw_calc(p: dict, cy: float, cx: float) -> Drawn:
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
  return Drawn(y0, x0, delta, mask)


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


def _place(rng: np.random.Generator, breast: Breast, extent: float, taken: list,
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


def render_lesion(rng: np.random.Generator, lesion: Lesion, breast: Breast, taken: list,
                   h: int, w: int) -> Drawn:
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
