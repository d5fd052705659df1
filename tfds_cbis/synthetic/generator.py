"""`generate`: plan the release, render its images in worker processes, write CSVs and manifest."""

from __future__ import annotations

import os

from tfds_cbis import pool
from tfds_cbis.synthetic import naming
from tfds_cbis.synthetic import plan
from tfds_cbis.synthetic import write

DEFAULT_PATIENTS = 160
DEFAULT_IMAGE_SHAPE = (1024, 640)


def _check_args(out_dir: str, patients: int, layout: str, seed: int, difficulty: float,
                image_shape: tuple[int, int], quirk_rate: float) -> None:
  if layout not in naming.LAYOUTS:
    raise ValueError(f'layout must be one of {naming.LAYOUTS}, got {layout!r}')
  if patients < 1:
    raise ValueError(f'patients must be >= 1, got {patients}')
  if seed < 0:
    raise ValueError(f'seed must be >= 0, got {seed}')
  if not 0.0 <= difficulty <= 1.0:
    raise ValueError(f'difficulty must be in [0, 1], got {difficulty}')
  if not 0.0 <= quirk_rate <= 1.0:
    raise ValueError(f'quirk_rate must be in [0, 1], got {quirk_rate}')
  if len(image_shape) != 2 or min(image_shape) < 128:
    raise ValueError(f'image_shape must be (height, width), each >= 128; got {image_shape}')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    # Mixing two generations would leave stale files that no CSV row mentions.
    raise FileExistsError(f'{out_dir} is not empty; generate into a new or empty folder')


def generate(out_dir: str | os.PathLike[str], *, patients: int = DEFAULT_PATIENTS,
             layout: str = 'nbia', seed: int = 0, difficulty: float = 0.5,
             image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE, quirk_rate: float = 0.06,
             workers: int | None = None) -> dict:
  """Writes a synthetic CBIS-DDSM release into out_dir and returns its manifest.

  Args:
    out_dir: an empty or missing folder; gets the four CSVs, the DICOM tree and
      `synthetic_manifest.json`.
    patients: number of patients (each has 1-4 images, most with one abnormality).
    layout: 'nbia' (current NBIA Data Retriever names) or 'classic' (UID folders, as in the
      CSVs). Only paths differ between the two.
    seed: non-negative; the whole output is a function of the arguments except `workers`.
    difficulty: 0 makes benign vs malignant morphology obvious, 1 makes it uninformative
      (mass vs calcification stays easy).
    image_shape: (height, width) of the full mammograms.
    quirk_rate: rate of each per-row file quirk (and half of it for study folders without
      'NA'); 0 disables them. With at least 8 abnormalities each quirk occurs at least once.
    workers: processes for rendering; None means os.cpu_count(), <= 1 runs inline.

  Returns:
    The manifest dict (also written as out_dir/synthetic_manifest.json).
  """
  out_dir = os.fspath(out_dir)
  image_shape = (int(image_shape[0]), int(image_shape[1]))
  _check_args(out_dir, patients, layout, seed, difficulty, image_shape, quirk_rate)
  os.makedirs(out_dir, exist_ok=True)
  images = plan.plan_images(patients, seed, difficulty, quirk_rate)
  naming.assign_files(images, seed, quirk_rate, layout)
  jobs = [write.Job(seed, out_dir, image_shape, img) for img in images]
  workers = min(pool.worker_count(workers), len(jobs))
  geometry = pool.map_ordered(
      write.render_and_write, jobs, workers,
      on_worker_death=('a worker process died while rendering synthetic mammograms (out of '
                       'memory?); generate again with fewer workers, e.g. workers=1'))
  write.write_csvs(out_dir, images)
  manifest = {
      'seed': seed, 'layout': layout, 'patients': patients, 'difficulty': difficulty,
      'image_shape': list(image_shape), 'quirk_rate': quirk_rate,
      'images': [write.manifest_image(img, image_shape, geo)
                 for img, geo in zip(images, geometry)],
      'counts': write.manifest_counts(images),
  }
  write.write_manifest(out_dir, manifest)
  return manifest
