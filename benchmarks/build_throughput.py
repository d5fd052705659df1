"""Build throughput and peak memory of `cbis_ddsm/roi150` on full-size synthetic mammograms.

    python benchmarks/build_throughput.py [--patients 10 80 160] [--height 4000 --width 3000]
        [--config roi150]

For each dataset size it generates a synthetic CBIS-DDSM tree of real-sized images (uint16,
about 4000x3000 like the real scans), then, each in a fresh process so memory is measured
alone:
  * floor: pydicom (`dcmread(path).pixel_array`) reading the pixels of exactly the files the
    build decodes (every full mammogram and every ROI mask), one after another; and the same
    with tfds_cbis.dicom.read_pixels, the reader the build uses;
  * build: `download_and_prepare` of roi150 (or `--config`, e.g. whole_1152x896) with 1
    worker process and with all cores.
The tree is read once beforehand so that every run finds it in the page cache. Peak RSS is
sampled (every 20 ms) over the whole process tree. Results print as a Markdown
table for BENCHMARKS.md; the goal is build time <= 1.5x the floor and flat peak memory as the
dataset grows. Start-up (imports, TFDS set-up, writing dataset_info) is a fixed cost, so the
last rows give the marginal seconds per image between the smallest and largest dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

_FLOOR = r'''
import json, sys, time, pydicom
from tfds_cbis import dicom
paths = json.load(open(sys.argv[1]))
read = (lambda p: pydicom.dcmread(p).pixel_array) if sys.argv[2] == 'pydicom' else dicom.read_pixels
t = time.perf_counter()
for p in paths:
  read(p)
print(json.dumps({'seconds': time.perf_counter() - t}))
'''

_BUILD = r'''
import json, os, sys, time
import tensorflow_datasets as tfds
import tfds_cbis
manual_dir, data_dir, workers, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
builder = tfds.builder(f'cbis_ddsm/{config}', data_dir=data_dir, num_workers=workers)
t = time.perf_counter()
builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir=manual_dir, try_download_gcs=False))
seconds = time.perf_counter() - t
print(json.dumps({'seconds': seconds,
                  'examples': {k: v.num_examples for k, v in builder.info.splits.items()}}))
'''


def _run_measured(args: list[str]) -> tuple[dict, float]:
  """Runs a child process; returns its JSON output and the peak RSS (GiB) of its tree."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  proc = psutil.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
  peak, done = 0, threading.Event()

  def sample():
    nonlocal peak
    while not done.is_set():
      try:
        procs = [proc] + proc.children(recursive=True)
        peak = max(peak, sum(p.memory_info().rss for p in procs if p.is_running()))
      except psutil.Error:
        pass
      time.sleep(0.02)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  out, _ = proc.communicate()
  done.set()
  sampler.join()
  if proc.returncode:
    raise RuntimeError(f'{args[:3]} failed with exit code {proc.returncode}')
  return json.loads(out.decode().strip().splitlines()[-1]), peak / 2**30


def _warm_page_cache(tree: str) -> None:
  for dirpath, _, names in os.walk(tree):
    for name in names:
      with open(os.path.join(dirpath, name), 'rb') as f:
        while f.read(1 << 24):
          pass


def _decoded_files(tree: str) -> tuple[list[str], int]:
  """The files the build decodes: each full image and each ROI mask (from the manifest)."""
  with open(os.path.join(tree, 'synthetic_manifest.json')) as f:
    manifest = json.load(f)
  paths = []
  for image in manifest['images']:
    paths.append(os.path.join(tree, image['path']))
    paths.extend(os.path.join(tree, a['mask_path']) for a in image['abnormalities'])
  return paths, len(manifest['images'])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--patients', type=int, nargs='+', default=[10, 80, 160])
  parser.add_argument('--height', type=int, default=4000)
  parser.add_argument('--width', type=int, default=3000)
  parser.add_argument('--config', default='roi150', help='the cbis_ddsm config to build')
  parser.add_argument('--workdir', default=None, help='keep trees here (default: a temp dir)')
  args = parser.parse_args()
  from tfds_cbis import synthetic  # pylint: disable=g-import-not-at-top

  workdir = args.workdir or tempfile.mkdtemp(prefix='cbis_bench_')
  cores = os.cpu_count()
  rows = []
  for patients in args.patients:
    tree = os.path.join(workdir, f'tree_{patients}')
    if not os.path.exists(os.path.join(tree, 'synthetic_manifest.json')):
      synthetic.generate(tree, patients=patients, layout='nbia', seed=1,
                         image_shape=(args.height, args.width))
    files, images = _decoded_files(tree)
    listing = os.path.join(workdir, f'files_{patients}.json')
    with open(listing, 'w') as f:
      json.dump(files, f)
    gib = sum(os.path.getsize(p) for p in files) / 2**30
    _warm_page_cache(tree)  # every run below then reads from memory, as the floor does
    floor, floor_rss = _run_measured([sys.executable, '-c', _FLOOR, listing, 'pydicom'])
    rows.append((patients, images, len(files), gib, 'floor: pydicom pixel reads', 1,
                 floor['seconds'], floor_rss, None))
    ours, ours_rss = _run_measured([sys.executable, '-c', _FLOOR, listing, 'tfds_cbis'])
    rows.append((patients, images, len(files), gib, 'tfds_cbis.dicom.read_pixels', 1,
                 ours['seconds'], ours_rss, ours['seconds'] / floor['seconds']))
    for workers in sorted({1, cores}):
      data_dir = os.path.join(workdir, f'tfds_{patients}_{workers}')
      shutil.rmtree(data_dir, ignore_errors=True)  # never time a reused dataset
      result, rss = _run_measured([sys.executable, '-c', _BUILD, tree, data_dir, str(workers),
                                   args.config])
      rows.append((patients, images, len(files), gib, f'build {args.config}', workers,
                   result['seconds'], rss, result['seconds'] / floor['seconds']))
  print(f'\n{platform.processor() or platform.machine()}, {cores} cores, '
        f'images {args.height}x{args.width} uint16\n')
  _print_table(rows)
  _print_marginal(rows)
  return 0


def _print_table(rows) -> None:
  print('| patients | full images | files decoded (GiB) | run | processes | seconds | '
        'images/s | peak RSS (GiB) | / floor |')
  print('|---|---|---|---|---|---|---|---|---|')
  for patients, images, nfiles, gib, run, workers, seconds, rss, ratio in rows:
    print(f'| {patients} | {images} | {nfiles} ({gib:.2f}) | {run} | {workers} | '
          f'{seconds:.1f} | {images / seconds:.2f} | {rss:.2f} | '
          f'{"" if ratio is None else f"{ratio:.2f}x"} |')


def _print_marginal(rows) -> None:
  """Seconds per extra image between the smallest and the largest dataset, per run kind."""
  sizes = sorted({r[0] for r in rows})
  if len(sizes) < 2:
    return
  small, large = sizes[0], sizes[-1]
  by = {(r[0], r[4], r[5]): r for r in rows}
  floor_key = ('floor: pydicom pixel reads', 1)
  floor_small, floor_large = by[(small, *floor_key)], by[(large, *floor_key)]
  floor_ms = (floor_large[6] - floor_small[6]) / (floor_large[1] - floor_small[1]) * 1000
  print(f'\nMarginal cost per full image ({small} -> {large} patients):\n')
  print('| run | processes | ms per image | / floor |')
  print('|---|---|---|---|')
  for (patients, run, workers), r in sorted(by.items(), key=lambda kv: kv[0][1:]):
    if patients != small:
      continue
    big = by[(large, run, workers)]
    ms = (big[6] - r[6]) / (big[1] - r[1]) * 1000
    print(f'| {run} | {workers} | {ms:.1f} | {ms / floor_ms:.2f}x |')


if __name__ == '__main__':
  sys.exit(main())
