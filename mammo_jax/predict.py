"""Predictions and heatmaps for DICOM files: `python -m mammo_jax.predict --workdir=RUN
[--out=DIR] [--flip_tta] PATH...`.

RUN is a finished run's folder (a pipeline's stage, e.g. runs/shen/all); PATH a DICOM file or a
folder searched recursively for *.dcm / *.dicom files and files without an extension. Each file
is read with tfds_cbis.dicom (every layout and transfer syntax the builder reads) and turned into
the model's input by `prepare`: the builder's own whole-image resize (tfds_cbis.geometry.resize
with the shape and method of the run's dataset config, the call tfds_cbis.whole and the S10
patches make), then the run's own preprocessing in the jitted step (mammo_jax.preprocessing.
preprocess), so a file gives exactly the pixels its build holds.

What a run predicts:
  whole-image runs (models with the cam=True contract): the class probabilities of the image,
    and the class-activation map of the malignant class over the image;
  S10 patch runs (ResNet50 / VGG16 patch classifiers): the patch classifier slid over the whole
    image resized as its patches were (mammo_jax.heatmaps), a probability map per class. The
    image's probability of a class is that class's map maximum, and its score (the JSON's
    `malignant_score`) the maximum over windows of P(MALIGNANT_MASS) +
    P(MALIGNANT_CALCIFICATION): Shen's heatmap-maximum baseline. The PNG shows that malignant
    map. A run trained on patches resized to data.image_size sees the whole image scaled by
    image_size / patch_size (area resampling, as its patches were).
--flip_tta averages each image's probabilities (and score) with those of its left-right mirror
image; the PNG shows the unflipped image's map (whole-image runs: the mean of the two maps).

DIR (default ./predictions) gets predictions.csv (column `file`, one probability column per class
in the task's order, then `heatmap`, the PNG's path), and per file NAME.json (probabilities, the
run, its config fingerprint, the weights' SHA-256, the preprocessing, the map's peak) and NAME.png,
NAME the file's path below the inputs' common folder with '/' as '__'. A file that cannot be read
(not DICOM, colour, multi-frame, no decoder) gets one `mammo_jax.predict: error:` line naming it
and the reason; the others are still written, and the exit status is 1. A RUN that is not a
finished run gets one line saying what to give instead, exit status 2.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import inspect
import os
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
from absl import logging
from flax import serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from mammo_jax import checkpointing
from mammo_jax import heatmaps
from mammo_jax import parallel
from mammo_jax import preprocessing
from mammo_jax import tasks
from mammo_jax import train
from mammo_jax import workdir as workdir_lib
from tfds_cbis import dicom
from tfds_cbis import geometry
from tfds_cbis import patches
from tfds_cbis import whole

PREDICTIONS_CSV = 'predictions.csv'
DICOM_SUFFIXES = ('.dcm', '.dicom')


class RunError(ValueError):
  """A --workdir that holds no usable run; the message says what to give instead."""


@dataclasses.dataclass(eq=False)  # hashable by identity: _step caches per run
class Run:
  """A finished run, loaded for prediction."""

  workdir: str
  config: ml_collections.ConfigDict
  task: tasks.Task
  model: object
  variables: dict
  kind: str  # 'whole' (class-activation maps) or 'patch' (sliding window)
  spec: patches.PatchSpec | whole.WholeSpec  # the dataset config's: how mammograms are resized
  input_shape: tuple[int, int]  # what the model sees (patch runs: scaled by image_size)
  window: int  # patch runs: the window the classifier was trained on, in input pixels
  identity: dict  # best_step, config_sha256 (workdir.run_identity)
  weights_sha256: str

  def describe_preprocessing(self) -> dict:
    return {'dicom': 'tfds_cbis.dicom.read_image (uint16, larger = denser)',
            'resize': {'shape': list(whole_shape(self.spec)), 'method': self.spec.resize_method,
                       'function': 'tfds_cbis.geometry.resize'},
            'model_input_shape': list(self.input_shape),
            'model.preprocess': self.config.model.preprocess,
            **({'window': self.window, 'stride': heatmaps.STRIDE} if self.kind == 'patch'
               else {})}


def whole_shape(spec: patches.PatchSpec | whole.WholeSpec) -> tuple[int, int]:
  """The (height, width) a dataset config resizes whole mammograms to."""
  return spec.shape if isinstance(spec, whole.WholeSpec) else tuple(spec.resize_shape)


def dataset_spec(data_name: str) -> patches.PatchSpec | whole.WholeSpec:
  """The resize settings of the run's dataset config (the builder's, by name)."""
  from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder  # pylint: disable=g-import-not-at-top
  name = data_name.partition(':')[0].partition('/')[2]
  configs = {c.name: c for c in builder.Builder.BUILDER_CONFIGS}
  if name not in configs:
    raise RunError(f'the run trained on data.name={data_name!r}, which is not a cbis_ddsm '
                   f'config ({", ".join(configs)}); predict reads cbis_ddsm runs only')
  return configs[name].spec


def _supports_cam(model) -> bool:
  return 'cam' in inspect.signature(type(model).__call__).parameters


def write_untrained_run(config: ml_collections.ConfigDict, workdir: str,
                        input_shape: tuple[int, int, int]) -> None:
  """A finished-run folder whose best checkpoint (step 0) is the config's freshly initialised
  model, with the config.json and results.json a run writes: what the predict benchmark times
  (random weights cost what trained ones do) and the tests read without training."""
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   input_shape)
  checkpointing.Checkpoints(workdir).save_best(0, state, {})
  workdir_lib.write_config(config, workdir)
  workdir_lib.write_results(workdir, {'best_step': 0, 'task': task.name})


def load_run(workdir: str) -> Run:
  """The best checkpoint of the finished run in `workdir`; RunError says what is wrong."""
  if not os.path.isdir(workdir):
    raise RunError(f'--workdir={workdir} is not a folder; give the folder of a finished run')
  if os.path.exists(os.path.join(workdir, workdir_lib.PIPELINE_JSON)):
    stages = sorted(workdir_lib.read_json(os.path.join(workdir, workdir_lib.PIPELINE_JSON)))
    raise RunError(f'--workdir={workdir} holds a pipeline; give one of its stages, e.g. '
                   f'--workdir={os.path.join(workdir, stages[-1] if stages else "STAGE")} '
                   f'(stages: {", ".join(stages)})')
  if not os.path.exists(os.path.join(workdir, workdir_lib.CONFIG_JSON)):
    raise RunError(f'--workdir={workdir} is not a mammo_jax run (no config.json); give the '
                   '--workdir a training run wrote')
  if not workdir_lib.is_finished(workdir):
    raise RunError(f'--workdir={workdir} holds no finished run (no results.json): train it to '
                   'the end first (run the same training command again to resume it)')
  config = ml_collections.ConfigDict(workdir_lib.read_config(workdir))
  task = tasks.get_task(config.task)
  model = train.create_model(config, task)
  try:
    params, batch_stats, _ = checkpointing.best_variables(workdir)
  except FileNotFoundError as e:
    raise RunError(str(e)) from None
  variables = {'params': params, **({} if batch_stats is None else {'batch_stats': batch_stats})}
  variables = jax.tree.map(jnp.asarray, variables)
  spec = dataset_spec(config.data.name)
  kind = 'whole' if _supports_cam(model) else 'patch'
  shape, window = whole_shape(spec), 0
  if (kind == 'whole') != isinstance(spec, whole.WholeSpec):
    raise RunError(f'{workdir}: model {config.model.name} and data.name={config.data.name} do '
                   'not go together: whole-image models train on whole-image configs')
  if kind == 'patch':
    if spec.mode != 'sampled':
      raise RunError(f'{workdir}: a patch classifier trained on {config.data.name} patches, '
                     "which are not cut from resized whole images (mode 'sampled', e.g. "
                     'cbis_ddsm/s10_224); predict takes S10 patch runs and whole-image runs')
    if config.model.preprocess in preprocessing.PER_IMAGE_MODES:
      raise RunError(f'{workdir}: model.preprocess={config.model.preprocess} normalises each '
                     'patch by its own statistics, which one convolutional pass over a whole '
                     'image cannot reproduce; predict takes patch runs trained with shen, caffe '
                     'or torch preprocessing')
    window = config.data.image_size or spec.patch_size
    scale = window / spec.patch_size
    shape = (round(shape[0] * scale), round(shape[1] * scale))
  digest = hashlib.sha256(serialization.to_bytes(variables)).hexdigest()
  return Run(os.path.abspath(workdir), config, task, model, variables, kind, spec, shape,
             window, workdir_lib.run_identity(workdir), digest)


def prepare(run: Run, pixels: np.ndarray) -> np.ndarray:
  """A mammogram's uint16 pixels -> the model's stored-form input [H, W, 1]: the builder's
  whole-image resize (as the run's dataset config makes it), then `to_input`."""
  return to_input(run, geometry.resize(pixels, whole_shape(run.spec), run.spec.resize_method))


def to_input(run: Run, resized: np.ndarray) -> np.ndarray:
  """A whole image as the builder stores it ([H, W] or [H, W, 1]) -> the model's input
  [H', W', 1]: patch runs on resized patches (data.image_size) scale it as their patches were
  scaled (area resampling); otherwise unchanged."""
  image = resized[..., 0] if resized.ndim == 3 else resized
  if image.shape != run.input_shape:
    image = geometry.resize(image, run.input_shape, 'area')
  return image[..., None]


def _forward(variables, images, *, run: Run, flip: bool):
  """Per image: class probabilities, and the map the PNG shows ([h, w])."""
  x = preprocessing.preprocess(images, run.config.model.preprocess)
  if flip:
    x = x[:, :, ::-1]
  if run.kind == 'whole':
    logits, cam = heatmaps.class_activation_maps(run.model, variables, x)
    index = heatmaps.malignant_classes(run.task.class_names)[0]
    shown = cam[..., 0] if run.task.num_outputs == 1 else cam[..., index]
    if flip:
      shown = shown[:, :, ::-1]
    return run.task.probabilities(logits), shown, jnp.zeros(len(images))
  logit_map = heatmaps.patch_logit_map(run.model, variables, x, run.window)
  prob_map = run.task.probabilities(logit_map)
  index = heatmaps.malignant_classes(run.task.class_names)
  malignant = prob_map[..., index].sum(-1)
  return prob_map.max(axis=(1, 2)), malignant, malignant.max(axis=(1, 2))


@functools.cache
def _step(run: Run, flip: bool):
  return jax.pmap(functools.partial(_forward, run=run, flip=flip), axis_name=parallel.AXIS,
                  in_axes=(None, 0))


def forward(run: Run, images: np.ndarray, flip_tta: bool = False, batch_size: int | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Prepared images [n, H, W, 1] -> (class probabilities [n, K], the maps the PNGs show
  [n, h, w], malignant scores [n]: patch runs' heatmap maxima, zeros for whole-image runs), in
  batches of `batch_size` (default: one image per local device; the last one padded) split over
  the local devices. flip_tta averages probabilities and scores (whole-image runs: also the
  maps) with those of the mirror image."""
  batch_size = batch_size or parallel.device_count()
  parallel.check_batch_size(batch_size, 'batch size')
  parts = []
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    n = len(batch)
    batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
    outs = [jax.tree.map(parallel.unshard, _step(run, flip)(run.variables, parallel.shard(batch)))
            for flip in ((False, True) if flip_tta else (False,))]
    probs = np.mean([o[0] for o in outs], axis=0)[:n]
    scores = np.mean([o[2] for o in outs], axis=0)[:n]
    shown = (np.mean([o[1] for o in outs], axis=0) if run.kind == 'whole' else outs[0][1])[:n]
    parts.append((probs, shown, scores))
  return tuple(np.concatenate(p) for p in zip(*parts))


def find_files(paths: Sequence[str]) -> list[str]:
  """PATHs as files: files as given, folders searched recursively (DICOM-like names only)."""
  found = []
  for path in paths:
    if os.path.isdir(path):
      for root, dirs, names in os.walk(path):
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names)
                  if n.lower().endswith(DICOM_SUFFIXES) or not os.path.splitext(n)[1]]
    else:
      found.append(path)
  return found


def output_names(files: Sequence[str]) -> list[str]:
  """Each file's path below the files' common folder, '/' as '__', without a DICOM suffix."""
  absolute = [os.path.abspath(f) for f in files]
  root = os.path.commonpath([os.path.dirname(f) for f in absolute]) if absolute else ''
  names = []
  for f in absolute:
    name = os.path.relpath(f, root).replace(os.sep, '__')
    stem, suffix = os.path.splitext(name)
    names.append(stem if suffix.lower() in DICOM_SUFFIXES else name)
  return names


def predict(run: Run, files: Sequence[str], out: str, flip_tta: bool = False,
            batch_size: int | None = None, progress: bool = True) -> tuple[list[dict], list]:
  """Predicts every readable file; writes DIR's CSV, JSONs and PNGs. Returns (rows written,
  [(file, reason)] of the files that could not be read)."""
  os.makedirs(out, exist_ok=True)
  batch_size = batch_size or parallel.device_count()
  names, errors, rows = output_names(files), [], []
  pending = []

  def flush():
    probs, shown, scores = forward(run, np.stack([image for _, _, image in pending]), flip_tta,
                                   batch_size)
    for k, (i, shape, image) in enumerate(pending):
      rows.append(_write(run, files[i], names[i], out, shape, image, probs[k], shown[k],
                         float(scores[k]), flip_tta))
    pending.clear()

  with tqdm.tqdm(total=len(files), unit='image', disable=not progress, file=sys.stderr) as bar:
    for i, path in enumerate(files):
      try:
        pixels = dicom.read_image(path)
      except dicom.DicomReadError as e:
        errors.append((path, e.reason))
      else:
        pending.append((i, pixels.shape, prepare(run, pixels)))
        del pixels  # one full-size mammogram in memory at a time
        if len(pending) == batch_size:
          flush()
      bar.update(1)
    if pending:
      flush()
  _write_csv(os.path.join(out, PREDICTIONS_CSV), run.task.class_names, rows)
  return rows, errors


def _write(run: Run, path: str, name: str, out: str, original_shape, image, probs, shown,
           score: float, flip_tta: bool) -> dict:
  """NAME.png and NAME.json of one file; returns its CSV row."""
  grid = (heatmaps.window_grid(run.window) if run.kind == 'patch'
          else heatmaps.cam_grid(image.shape[:2], shown.shape))
  png = os.path.join(out, f'{name}.png')
  if run.kind == 'patch':
    title = f'{os.path.basename(path)}: P(malignant) max {score:.3f}'
    heatmaps.render(image, shown, grid, png, title=title)
  else:
    malignant = probs[heatmaps.malignant_classes(run.task.class_names)].sum()
    title = f'{os.path.basename(path)}: P(malignant) {malignant:.3f}'
    heatmaps.render(image, shown, grid, png, title=title, label='class activation (logit)',
                    vmin=None, vmax=None)
  y, x = heatmaps.peak(shown, grid)
  sy, sx = original_shape[0] / image.shape[0], original_shape[1] / image.shape[1]
  record = {
      'file': os.path.abspath(path),
      'probabilities': {c: float(p) for c, p in zip(run.task.class_names, probs)},
      **({'malignant_score': score} if run.kind == 'patch' else {}),
      'run': {'workdir': run.workdir, **run.identity, 'weights_sha256': run.weights_sha256,
              'model': run.config.model.name, 'task': run.task.name,
              'data': run.config.data.name},
      'preprocessing': {**run.describe_preprocessing(), 'flip_tta': flip_tta},
      'heatmap': {'png': os.path.abspath(png),
                  'kind': 'sliding_window' if run.kind == 'patch' else 'class_activation',
                  'shape': list(shown.shape), 'max': float(np.max(shown)),
                  'peak_input_yx': [y, x], 'peak_dicom_yx': [y * sy, x * sx]},
  }
  workdir_lib.write_json(os.path.join(out, f'{name}.json'), record)
  return {'file': record['file'], **record['probabilities'], 'heatmap': record['heatmap']['png']}


def _write_csv(path: str, class_names, rows: list[dict]) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=['file', *class_names, 'heatmap'])
    writer.writeheader()
    for row in rows:
      writer.writerow({k: (f'{v:.6f}' if isinstance(v, float) else v) for k, v in row.items()})


def _error(message: str) -> None:
  print(f'mammo_jax.predict: error: {message}', file=sys.stderr, flush=True)


def main(argv):
  paths = argv[1:]
  logging.set_verbosity(logging.WARNING)  # not Orbax's restore chatter
  if not paths:
    raise app.UsageError('give at least one DICOM file or folder (PATH...)')
  try:
    run = load_run(flags.FLAGS.workdir)
  except RunError as e:
    _error(str(e))
    sys.exit(2)
  files = find_files(paths)
  if not files:
    _error(f'no DICOM file (*.dcm, *.dicom or no extension) found under {", ".join(paths)}')
    sys.exit(1)
  out = flags.FLAGS.out
  rows, errors = predict(run, files, out, flip_tta=flags.FLAGS.flip_tta)
  for path, reason in errors:
    _error(f'{path}: {reason}')
  print(f'{len(rows)} of {len(files)} files predicted; {os.path.join(out, PREDICTIONS_CSV)}',
        flush=True)
  if errors:
    sys.exit(1)


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A finished run folder (a pipeline stage).')
  flags.DEFINE_string('out', 'predictions', 'Where predictions.csv, the JSONs and PNGs go.')
  flags.DEFINE_bool('flip_tta', False, 'Average with the left-right mirrored image.')
  flags.mark_flag_as_required('workdir')
  app.run(main)
