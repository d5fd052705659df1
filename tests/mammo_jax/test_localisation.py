"""The pointing game, the per-image AUC of heatmap maxima, and the report section."""

import numpy as np

from mammo_jax import heatmaps
from mammo_jax import localisation
from mammo_jax import report
from mammo_jax import workdir as workdir_lib


def test_pointing_hits_read_the_mask_under_each_peak_at_any_mask_scale():
  grid = heatmaps.window_grid(64)  # cell (i, j): window at (32 i, 32 j), centre +32
  maps = np.zeros((3, 3, 3))
  maps[0, 0, 0] = maps[1, 2, 2] = maps[2, 1, 0] = 1  # peaks at (32, 32), (96, 96), (64, 32)
  masks = np.zeros((3, 64, 64), np.uint8)  # half the 128x128 image's size
  masks[0, 16, 16] = 1  # (32, 32) / 2
  masks[1, 10:20, 10:20] = 1  # not under (48, 48)
  masks[2, 32, 16] = 255  # (64, 32) / 2
  np.testing.assert_array_equal(localisation.pointing_hits(maps, grid, masks, (128, 128)),
                                [True, False, True])
  game = localisation.pointing_game(maps, grid, masks[..., None], (128, 128), np.array([1, 1, 0]))
  assert game == {'pointing_game': 0.5, 'pointing_hits': 1, 'malignant_images': 2}
  none = localisation.pointing_game(maps, grid, masks, (128, 128), np.zeros(3))
  assert none['pointing_game'] is None and none['malignant_images'] == 0


def test_auc_and_extremes():
  scores, labels = np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1])
  assert localisation.auc(scores, labels) == 0.75
  assert localisation.auc(scores, np.ones(4)) is None
  assert localisation.extremes(scores, 1) == ([0], [1])
  assert localisation.extremes(scores, 5) == ([0, 2], [1, 3])


def test_report_section_shows_the_numbers_and_the_heatmaps(tmp_path):
  png = heatmaps.render(np.zeros((64, 64), np.uint16), np.ones((2, 2)), heatmaps.window_grid(32),
                        tmp_path / 'heatmaps' / 'a.png')
  workdir_lib.write_json(str(tmp_path / localisation.LOCALISATION_JSON), {
      'kind': 'patch', 'images': 4, 'score': 'heatmap maximum', 'auc': 0.75,
      'auc_flip_tta': 0.8125, 'pointing_game': 0.5, 'pointing_hits': 1, 'malignant_images': 2,
      'figures': [{'caption': 'most confident: x', 'png': 'heatmaps/a.png'}]})
  blocks = localisation.report_blocks(str(tmp_path), 'head')
  text = report.render_markdown(blocks, str(tmp_path))
  assert '| head | patch | 4 | 0.7500 | 0.8125 | 0.500 (1 of 2) |' in text
  assert '![most confident: x](heatmaps/a.png)' in text and png.endswith('a.png')
  assert localisation.report_blocks(str(tmp_path / 'elsewhere'), 'head') == []
