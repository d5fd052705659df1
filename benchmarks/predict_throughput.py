"""Seconds per image of `mammo_jax.predict` on full-size 16-bit DICOM files, by step.

    python benchmarks/predict_throughput.py [--images 3] [--model resnet50] \
        [--height 4000 --width 3000]

Writes `--images` synthetic mammograms of height x width (uint16, 16 bits stored, explicit VR
little endian like CBIS-DDSM), makes a finished S10 patch run of `--model` (configs/shen_patch.py's
head stage at full size: 224-px windows over 1152x896; random weights, which cost the same as
trained ones) and times, per file:
  floor     pydicom reading the pixels only (`dcmread(path).pixel_array`);
  read      tfds_cbis.dicom.read_image, predict's reader;
  resize    mammo_jax.predict.prepare (the builder's whole-image resize to 1152x896);
  forward   mammo_jax.predict.forward: backbone over the image plus the sliding-window head at
            every window, one jitted step (its first call, compilation, reported apart);
  heatmap   the PNG over the mammogram (mammo_jax.heatmaps.render);
  predict   mammo_jax.predict.predict on all files (CSV, JSONs, PNGs), per file.
Prints a Markdown table for BENCHMARKS.md and the machine's load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import jax
import numpy as np
import pydicom

from mammo_jax import heatmaps
from mammo_jax import pipeline
from mammo_jax import predict
from mammo_jax.config_lib import loader
from tfds_cbis import dicom

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(model: str, workdir: str) -> None:
  """A finished run folder of the S10 head stage with its initialised weights as best step."""
  config = dict(pipeline.stage_configs(
      loader.load_config(f'configs/shen_patch.py:{model}', ROOT)))['head']
  config.model.pretrained = ''
  predict.write_untrained_run(config, workdir, (224, 224, 1))


def make_files(folder: str, count: int, shape: tuple[int, int]) -> list[str]:
  rng = np.random.default_rng(0)
  paths = []
  for k in range(count):
    pixels = rng.integers(0, 65535, shape, dtype=np.uint16)
    paths.append(os.path.join(folder, f'P{k}', '1-1.dcm'))
    dicom.write_image(paths[-1], pixels, bits_stored=16)
  return paths


def timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - start


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--images', type=int, default=3)
  parser.add_argument('--model', default='resnet50', choices=('resnet50', 'vgg16'))
  parser.add_argument('--height', type=int, default=4000)
  parser.add_argument('--width', type=int, default=3000)
  args = parser.parse_args()
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    paths = make_files(os.path.join(tmp, 'dicom'), args.images, (args.height, args.width))
    make_run(args.model, os.path.join(tmp, 'run'))
    run = predict.load_run(os.path.join(tmp, 'run'))
    for path in paths:  # into the page cache, as the build benchmark does
      with open(path, 'rb') as f:
        f.read()
    times = {k: [] for k in ('floor', 'read', 'resize', 'forward', 'heatmap')}
    compile_seconds = None
    for path in paths:
      _, seconds = timed(lambda p: pydicom.dcmread(p).pixel_array, path)
      times['floor'].append(seconds)
      pixels, seconds = timed(dicom.read_image, path)
      times['read'].append(seconds)
      image, seconds = timed(predict.prepare, run, pixels)
      times['resize'].append(seconds)
      if compile_seconds is None:
        _, compile_seconds = timed(predict.forward, run, image[None])
      (_, shown, _), seconds = timed(predict.forward, run, image[None])
      times['forward'].append(seconds)
      _, seconds = timed(heatmaps.render, image, shown[0], heatmaps.window_grid(run.window),
                         os.path.join(tmp, 'h.png'))
      times['heatmap'].append(seconds)
    _, seconds = timed(lambda: predict.predict(run, paths, os.path.join(tmp, 'out'),
                                               progress=False))
  load_after = os.getloadavg()
  print(f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores, '
        f'jax {jax.__version__} ({jax.default_backend()}); load average (1 min) '
        f'{load_before[0]:.1f} before, {load_after[0]:.1f} after')
  print(f'{args.images} files of {args.height}x{args.width} uint16; S10 {args.model} patch run, '
        f'224-px windows at a 32-px stride over 1152x896 (heatmap {shown.shape[1]}x'
        f'{shown.shape[2]}); compilation of the forward step {compile_seconds:.1f} s\n')
  print('| step | seconds per image (mean) | min |\n|---|---|---|')
  for name, values in times.items():
    print(f'| {name} | {np.mean(values):.3f} | {np.min(values):.3f} |')
  print(f'| predict (all steps, CSV, JSON) | {seconds / args.images:.3f} | |')


if __name__ == '__main__':
  main()
