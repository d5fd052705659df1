"""tfds_cbis.geometry: boxes, resizing, baseline placement and the S10 samplers."""

import numpy as np
import pytest

from tfds_cbis import geometry


def test_bounding_box_and_binary_test():
  mask = np.zeros((50, 40), np.uint8)
  assert geometry.bounding_box(mask) is None
  mask[10:20, 5:9] = 255
  mask[30, 35] = 255
  assert geometry.bounding_box(mask) == (10, 5, 31, 36)
  assert geometry.is_binary(mask) and geometry.is_binary(np.zeros((3, 3), np.uint16))
  assert geometry.binary_box(mask) == (True, (10, 5, 31, 36))
  mask[0, 0] = 7
  assert not geometry.is_binary(mask)
  assert geometry.binary_box(mask) == (False, (0, 0, 31, 36))
  assert geometry.binary_box(np.zeros((4, 4), np.uint16)) == (True, None)


@pytest.mark.parametrize('method', ['nearest', 'bilinear', 'area'])
def test_resize_keeps_dtype_range_and_constants(method):
  image = np.full((333, 201), 40000, np.uint16)
  out = geometry.resize(image, (150, 150), method)
  assert out.dtype == np.uint16 and out.shape == (150, 150)
  assert (out == 40000).all()
  ramp = np.tile(np.linspace(0, 65535, 300).astype(np.uint16), (100, 1))
  out = geometry.resize(ramp, (50, 75), method)
  assert out.min() < 2000 and out.max() > 63000 and (np.diff(out[0].astype(int)) >= 0).all()
  assert geometry.resize(ramp > 30000, (50, 75), method).dtype == bool


def test_area_table_matches_brute_force():
  rng = np.random.default_rng(0)
  mask = rng.random((37, 29)) > 0.6
  table = geometry.AreaTable(mask)
  for _ in range(50):
    y0, x0 = rng.integers(-5, 30, 2)
    y1, x1 = y0 + rng.integers(1, 20), x0 + rng.integers(1, 20)
    expected = mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)].sum()
    assert table.count((y0, x0, y1, x1)) == expected
  assert table.total == mask.sum()


def _scene():
  """A 200x200 'breast' filling the left 150 columns, a lesion and a second lesion."""
  breast = np.zeros((200, 200), bool)
  breast[:, :150] = True
  lesion = (80, 60, 100, 80)
  other = (80, 85, 90, 95)  # right of the lesion: blocks the 'right' neighbour
  lesions = [(lesion, np.ones((20, 20), bool)), (other, np.ones((10, 10), bool))]
  return breast, lesion, lesions


def test_baseline_is_a_neighbour_inside_the_breast_avoiding_lesions():
  breast, lesion, lesions = _scene()
  side, box = geometry.choose_baseline(lesion, breast.shape, geometry.AreaTable(breast), 1,
                                       lesions, 0.9)
  assert side == 'left' and box == (80, 40, 100, 60)
  # Block the left with another lesion: top is next (right is blocked, all inside breast).
  lesions.append(((85, 45, 90, 50), np.ones((5, 5), bool)))
  side, box = geometry.choose_baseline(lesion, breast.shape, geometry.AreaTable(breast), 1,
                                       lesions, 0.9)
  assert side == 'top' and box == (60, 60, 80, 80)


def test_baseline_none_when_nothing_fits_and_stride_is_respected():
  breast = np.zeros((200, 200), bool)
  breast[70:110, 50:90] = True
  table = geometry.AreaTable(breast)
  lesion = (80, 60, 100, 80)
  assert geometry.choose_baseline(lesion, breast.shape, table, 1, [], 0.9) is None
  # A thumbnail taken every 4th pixel: the box is tested in thumbnail coordinates.
  low = np.zeros((50, 50), bool)
  low[:, 10:15] = True  # only image columns 40..59, the left neighbour, are breast
  side, _ = geometry.choose_baseline(lesion, (200, 200), geometry.AreaTable(low), 4, [], 0.9)
  assert side == 'left'


def test_lesion_patches_meet_the_overlap_rule_and_are_deterministic():
  mask = np.zeros((600, 500), bool)
  mask[200:260, 150:230] = True
  table = geometry.AreaTable(mask)
  box = geometry.largest_component_box(mask)
  a = geometry.sample_lesion_patches(np.random.default_rng(1), table, box, 10, 224)
  b = geometry.sample_lesion_patches(np.random.default_rng(1), table, box, 10, 224)
  assert a == b and len(a) == 10
  for y0, x0, y1, x1 in a:
    assert (y1 - y0, x1 - x0) == (224, 224) and y0 >= 0 and x0 >= 0
    assert y1 < 600 and x1 < 500
    assert table.count((y0, x0, y1, x1)) / table.total > 0.9 * 0.95**10


def test_largest_component_sets_the_box():
  mask = np.zeros((100, 100), bool)
  mask[10:40, 10:40] = True
  mask[80:82, 80:82] = True
  assert geometry.largest_component_box(mask) == (10, 10, 40, 40)


def test_background_patches_respect_breast_and_lesions():
  breast = np.zeros((1152, 896), bool)
  breast[100:1050, :700] = True
  lesion = np.zeros_like(breast)
  lesion[500:600, 300:400] = True
  lesion_table = geometry.AreaTable(lesion)
  corners = geometry.sample_background_patches(
      np.random.default_rng(0), geometry.AreaTable(breast), geometry.bounding_box(breast),
      [lesion_table], 10, 224)
  assert len(corners) == 10
  for box in corners:
    assert breast[box[0]:box[2], box[1]:box[3]].mean() > 0.75 * 0.95**3
    assert lesion_table.count(box) / lesion_table.total <= 0.35 * 1.05**3


def test_samplers_give_up_cleanly():
  tiny = np.ones((100, 100), bool)
  assert geometry.sample_lesion_patches(np.random.default_rng(0), geometry.AreaTable(tiny),
                                        (0, 0, 100, 100), 10, 224) is None
  breast = np.zeros((600, 600), bool)
  breast[:50, :50] = True  # far too little breast for 224 px patches
  assert geometry.sample_background_patches(
      np.random.default_rng(0), geometry.AreaTable(breast), (0, 0, 50, 50), [], 10, 224) is None
