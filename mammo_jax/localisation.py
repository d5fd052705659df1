"""Whole-image evaluation of heatmaps: the pointing game, the patch classifier's heatmap-maximum
AUC (Shen's baseline), and the report section that shows them with a few test heatmaps.

Pointing game: of the malignant images, the share whose heatmap maximum (the centre of its
largest cell, mammo_jax.heatmaps.peak) falls inside the lesion mask, the union of the image's
lesion masks, given at the image's size or a fraction of it (its pixel under the peak is read).
Heatmap-maximum score: an image's largest window probability of being malignant (the sum of the
malignant classes' probabilities), the per-image score of the S10 patch classifier that Shen
et al. compared their whole-image networks with.

`evaluate` runs a loaded run (mammo_jax.predict.load_run) on prepared test images with their
labels and masks and writes WORKDIR/localisation.json plus the PNGs of the most and the least
confident malignant-score images; `report_blocks` turns that into the report's section.
`python -m mammo_jax.localisation --workdir=RUN` does it for a finished run on the test split
of the whole-image dataset config of its size (an S10 patch run: cbis_ddsm/whole_1152x896, built
from the run's own data.manual_dir or synthetic data, official split), then writes the report.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from mammo_jax import heatmaps
from mammo_jax import metrics
from mammo_jax import workdir as workdir_lib

LOCALISATION_JSON = 'localisation.json'
HEATMAPS_DIR = 'heatmaps'


def pointing_hits(maps: Sequence[np.ndarray], grid: heatmaps.Grid, masks: np.ndarray,
                  image_shape: tuple[int, int]) -> np.ndarray:
  """[N] bool: whether each map's peak (on `grid`, in pixels of an `image_shape` image) lies
  on a nonzero pixel of its mask [N, h, w] (any size: the peak is scaled to it)."""
  masks = np.asarray(masks)
  masks = masks[..., 0] if masks.ndim == 4 else masks
  hits = []
  for values, mask in zip(maps, masks):
    y, x = heatmaps.peak(np.asarray(values), grid)
    row = min(int(y * mask.shape[0] / image_shape[0]), mask.shape[0] - 1)
    col = min(int(x * mask.shape[1] / image_shape[1]), mask.shape[1] - 1)
    hits.append(bool(mask[row, col]))
  return np.asarray(hits, bool)


def pointing_game(maps, grid, masks, image_shape, labels: np.ndarray) -> dict:
  """{'pointing_game': share of malignant images (label 1) hit, or None without any,
  'pointing_hits', 'malignant_images'}."""
  malignant = np.asarray(labels) == 1
  hits = pointing_hits([m for m, k in zip(maps, malignant) if k], grid,
                       np.asarray(masks)[malignant], image_shape)
  return {'pointing_game': float(hits.mean()) if len(hits) else None,
          'pointing_hits': int(hits.sum()), 'malignant_images': int(malignant.sum())}


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
  """Per-image ROC AUC of malignant (label 1) against benign; None with one class only."""
  value = metrics.roc_auc(np.asarray(scores, np.float64), np.asarray(labels) == 1)
  return None if np.isnan(value) else value


def extremes(scores: np.ndarray, count: int) -> tuple[list[int], list[int]]:
  """Indices of the `count` highest and the `count` lowest scores (most and least confident
  that the image is malignant), highest first and lowest first."""
  order = np.argsort(-np.asarray(scores), kind='stable')
  count = min(count, len(order) // 2)
  return order[:count].tolist(), order[::-1][:count].tolist()


def evaluate(run, images: np.ndarray, labels: np.ndarray, masks: np.ndarray,
             ids: Sequence[str], workdir: str, shown: int = 2) -> dict:
  """Per-image AUC with and without flip TTA and the pointing game of a run on prepared test
  images [N, H, W, 1] (mammo_jax.predict.prepare); writes WORKDIR/localisation.json and the
  PNGs of the `shown` most and least confident images; returns the summary."""
  from mammo_jax import predict  # pylint: disable=g-import-not-at-top  (heavy: the models)
  outputs = {flip: predict.forward(run, images, flip) for flip in (False, True)}
  probs, maps, scores = outputs[False]
  index = heatmaps.malignant_classes(run.task.class_names)
  if run.kind == 'whole':
    scores = probs[:, index].sum(-1)
    scores_tta = outputs[True][0][:, index].sum(-1)
    grid = heatmaps.cam_grid(images.shape[1:3], maps.shape[1:3])
  else:
    scores_tta = outputs[True][2]
    grid = heatmaps.window_grid(run.window)
  summary = {
      'kind': run.kind, 'images': int(len(labels)),
      'score': ('P(malignant) of the whole-image model' if run.kind == 'whole' else
                'heatmap maximum of P(malignant) over the sliding windows'),
      'auc': auc(scores, labels), 'auc_flip_tta': auc(scores_tta, labels),
      **pointing_game(maps, grid, masks, images.shape[1:3], labels),
  }
  most, least = extremes(scores, shown)
  out = os.path.join(workdir, HEATMAPS_DIR)
  figures = []
  for rank, k in [('most confident', i) for i in most] + [('least confident', i) for i in least]:
    caption = f'{rank}: {ids[k]} (label {int(labels[k])}, score {scores[k]:.3f})'
    path = heatmaps.render(images[k], maps[k], grid,
                           os.path.join(out, f'{ids[k].replace("/", "__")}.png'),
                           title=caption, **({} if run.kind == 'patch' else
                                             {'vmin': None, 'vmax': None,
                                              'label': 'class activation (logit)'}))
    figures.append({'caption': caption, 'png': os.path.relpath(path, workdir)})
  summary['figures'] = figures
  workdir_lib.write_json(os.path.join(workdir, LOCALISATION_JSON), summary)
  return summary


def whole_data_name(run) -> str:
  """The whole-image dataset config a run is evaluated on per image: a whole-image run's own,
  an S10 patch run's cbis_ddsm/whole_HxW of the size its patches were cut from."""
  if run.kind == 'whole':
    return run.config.data.name
  height, width = run.spec.resize_shape
  return f'cbis_ddsm/whole_{height}x{width}'


def evaluate_run(workdir: str, split: str = 'test') -> dict:
  """`evaluate` of the finished run in `workdir` on `split` of its whole-image dataset
  (official split: the protocols are applied to training splits, masks come with these)."""
  from mammo_jax import input_pipeline  # pylint: disable=g-import-not-at-top  (TensorFlow)
  from mammo_jax import predict  # pylint: disable=g-import-not-at-top
  run = predict.load_run(workdir)
  data = run.config.data.copy_and_resolve_references()
  data.name = whole_data_name(run)
  builder = input_pipeline.prepare_builder(data)
  arrays = input_pipeline.load_split(builder, split, ('image', 'label', 'mask', 'id'))
  images = np.stack([predict.to_input(run, image) for image in arrays.pop('image')])
  ids = [i.decode() for i in arrays['id']]
  return evaluate(run, images, arrays['label'], arrays['mask'], ids, workdir)


def report_blocks(workdir: str, name: str) -> list[tuple]:
  """The report section of a run's localisation.json ([] when it has none)."""
  path = os.path.join(workdir, LOCALISATION_JSON)
  if not os.path.exists(path):
    return []
  s = workdir_lib.read_json(path)
  game = s['pointing_game']
  rows = [[name, s['kind'], s['images'], metrics.fmt(s['auc']), metrics.fmt(s['auc_flip_tta']),
           f'{metrics.fmt(game, 3)} ({s["pointing_hits"]} of {s["malignant_images"]})']]
  return [
      ('h2', 'Whole images: per-image AUC and localisation (test split)'),
      ('table', ['model', 'heatmap', 'images', 'AUC', 'AUC flip TTA', 'pointing game'], rows),
      ('p', f'Score: {s["score"]}. Pointing game: the share of malignant test images whose '
            'heatmap maximum falls inside a lesion mask. The heatmaps below are the test images '
            'with the highest and the lowest score.'),
      ('figures', [(f['caption'], os.path.join(workdir, f['png'])) for f in s['figures']]),
  ]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from mammo_jax import predict  # pylint: disable=g-import-not-at-top
  from mammo_jax import report  # pylint: disable=g-import-not-at-top
  try:
    summary = evaluate_run(flags.FLAGS.workdir)
  except predict.RunError as e:
    print(f'mammo_jax.localisation: error: {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  print(f'{summary["images"]} test images: AUC {metrics.fmt(summary["auc"])} (flip TTA '
        f'{metrics.fmt(summary["auc_flip_tta"])}), pointing game '
        f'{metrics.fmt(summary["pointing_game"], 3)} ({summary["pointing_hits"]} of '
        f'{summary["malignant_images"]} malignant images)', flush=True)
  _, html_path = report.write_report(flags.FLAGS.workdir)
  print(f'Report: {html_path}', flush=True)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished run folder (a pipeline stage).')
  flags.mark_flag_as_required('workdir')
  app.run(main)
