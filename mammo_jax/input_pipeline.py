"""Where the patch datasets come from: a real CBIS-DDSM download or the synthetic one.

`prepare_builder(config.data)` returns a prepared TFDS builder. Real builds go to
`data.data_dir` (reused across runs, local or gs://). Synthetic data are generated and built
once per parameter set under `data.cache_dir`, in their own TFDS data_dir, so a synthetic build
can never be mistaken for a real one.

TensorFlow and TFDS are imported by the functions that read datasets, not by this module, so
the trainer's step code imports on a machine without them (a GPU box running benchmarks).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import TYPE_CHECKING

from absl import logging
import ml_collections
import numpy as np

import tfds_cbis  # noqa: F401  (registers cbis_ddsm)
from tfds_cbis import build_report as cbis_report
from tfds_cbis import cases as cases_lib
from tfds_cbis import splits as splits_lib
from tfds_cbis import synthetic

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

SYNTHETIC_BANNER = """
************************************************************************************
*  SYNTHETIC DATA: no data.manual_dir was given, so this run uses the synthetic     *
*  CBIS-DDSM of tfds_cbis.synthetic. Its numbers say nothing about real mammograms. *
************************************************************************************"""


def cache_dir(data: ml_collections.ConfigDict | None = None) -> str:
  """data.cache_dir, else $MAMMO_JAX_CACHE, else ~/.cache/mammo_jax."""
  return os.path.expanduser((data.cache_dir if data is not None else '')
                            or os.environ.get('MAMMO_JAX_CACHE') or '~/.cache/mammo_jax')


def synthetic_tree(data: ml_collections.ConfigDict) -> str:
  """Generates the synthetic CBIS-DDSM once per parameter set; returns its folder."""
  s = data.synthetic
  key = (f'p{s.patients}-seed{s.seed}-d{s.difficulty:g}-{s.layout}-{s.height}x{s.width}')
  root = os.path.join(cache_dir(data), 'synthetic', key)
  tree = os.path.join(root, 'cbis_ddsm')
  if os.path.exists(os.path.join(tree, 'synthetic_manifest.json')):
    return tree
  partial = tree + '.partial'
  shutil.rmtree(partial, ignore_errors=True)
  logging.info('Generating synthetic CBIS-DDSM (%s) in %s', key, tree)
  synthetic.generate(partial, patients=s.patients, layout=s.layout, seed=s.seed,
                     difficulty=s.difficulty, image_shape=(s.height, s.width),
                     workers=data.num_workers or None)
  os.replace(partial, tree)  # only complete trees are ever reused
  return tree


def prepare_builder(data: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Builds (or reuses) the dataset named by `data.name`; returns its builder."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  if data.manual_dir:
    manual_dir = os.path.expanduser(data.manual_dir)
    data_dir = data.data_dir or None
  else:
    print(SYNTHETIC_BANNER, flush=True)
    manual_dir = synthetic_tree(data)
    data_dir = os.path.join(os.path.dirname(manual_dir), 'tensorflow_datasets')
  builder = tfds.builder(data.name, data_dir=data_dir,
                         num_workers=data.num_workers or None)
  # The builder refuses a build in data_dir made from another source (provenance.check_reuse).
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def build_report(builder: tfds.core.DatasetBuilder) -> dict | None:
  """The JSON report the cbis_ddsm builder writes beside the prepared dataset."""
  return cbis_report.read_report(builder.data_dir)


def describe(builder: tfds.core.DatasetBuilder) -> str:
  """Human-readable statistics: examples per split and class, skips, exclusions."""
  lines = [f'{builder.info.full_name} in {builder.data_dir}']
  report = build_report(builder) or {}
  names = builder.info.features['label'].names
  for split, info in builder.info.splits.items():
    counts = report.get('counts', {}).get(split, {})
    per_class = ', '.join(f'{n} {counts.get(n, 0)}' for n in names)
    extra = ''
    if 'without_baseline' in counts:
      extra = f'; without baseline {counts["without_baseline"]}'
    lines.append(f'  {split:<10} {info.num_examples:>6} examples ({per_class}{extra})')
  if report:
    lines.append(f'  patients: {report.get("patients")}; excluded from train/validation '
                 f'(also in the official test CSVs): {len(report.get("excluded_patients", []))}'
                 f' (their official-train images: split {splits_lib.LEAKING})')
    lines.append(f'  skipped: {report.get("skip_counts") or "nothing"} '
                 f'(details in {cbis_report.REPORT_NAME})')
    if report.get('duplicate_series_count') or report.get('unused_series_count'):
      lines.append(f'  DICOM series in several copies: {report["duplicate_series_count"]}; '
                   f'used by no CSV row: {report["unused_series_count"]} (listed in '
                   f'{cbis_report.REPORT_NAME})')
    if report.get('csv_dirs'):
      lines.append(f'  CSVs from: {", ".join(report["csv_dirs"])}')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# Arrays for training and evaluation. The roi150 splits are small (the real train split is
# about 2,700 patches of 150x150 uint16, ~120 MB), so each split is decoded once into host
# memory. Batches are then plain index arithmetic: the order of epoch e is a pure function of
# (seed, e), which is what makes an interrupted run resume exactly.

def load_split(builder: tfds.core.DatasetBuilder, split: str,
               features: tuple[str, ...] = ('image', 'label')) -> dict[str, np.ndarray]:
  """Decodes `features` of a whole split into numpy arrays, sorted by example id.

  Ask for 'id' among `features` to get the (bytes) example ids too; take them out before
  batching, as batches go to devices.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # keep TF off accelerators JAX needs
  if split not in builder.info.splits:
    raise ValueError(f'{builder.info.full_name} has no split {split!r}; it has '
                     f'{", ".join(builder.info.splits)}')
  # Decoded by tf.data in chunks; PNG decoding dominates (about 0.6 s for 214 patches).
  ds = builder.as_dataset(split=split, shuffle_files=False, batch_size=1024)
  columns = {name: [] for name in dict.fromkeys(('id', *features))}
  for chunk in tfds.as_numpy(ds):
    for name in columns:
      columns[name].append(chunk[name])
  if not columns['id']:
    raise ValueError(f'split {split!r} of {builder.info.full_name} in {builder.data_dir} is '
                     'empty; rebuild the dataset')
  ids = columns['id'] if 'id' in features else columns.pop('id')
  order = np.argsort(np.concatenate(ids), kind='stable')  # ids are unique bytes
  arrays = {name: np.concatenate(values)[order] for name, values in columns.items()}
  if 'label' in arrays:
    arrays['label'] = arrays['label'].astype(np.int32)
  return arrays


# config.data.inputs: what a model is fed. 'image': the abnormality patch. 'image+baseline':
# the patch and its healthy baseline stacked as channels [H, W, 2] (0 abnormality, 1
# baseline), for the pair models (docs/REFERENCE_STUDY.md §1.8); one array keeps batching,
# preprocessing and augmentation those of single images.
INPUTS = ('image', 'image+baseline')
_FEATURES = {'image': ('image', 'label', 'id'),
             'image+baseline': ('image', 'baseline', 'has_baseline', 'label', 'id')}
SPLITS = ('train', 'validation', 'test')


def load_inputs(builder: tfds.core.DatasetBuilder, split: str,
                inputs: str = 'image') -> tuple[dict[str, np.ndarray], int]:
  """A split's `image` (as `inputs` asks), `label` and `id` arrays, and how many examples
  were left out for lacking a baseline (always 0 for 'image'); as stored (load_splits
  resizes)."""
  if inputs not in _FEATURES:
    raise ValueError(f'unknown data.inputs {inputs!r}; known: {", ".join(INPUTS)}')
  return _as_inputs(load_split(builder, split, _FEATURES[inputs]), inputs,
                    f'split {split!r} of {builder.info.full_name}')


def _as_inputs(data: dict[str, np.ndarray], inputs: str,
               what: str) -> tuple[dict[str, np.ndarray], int]:
  if inputs == 'image':
    return data, 0
  data, without = stack_pairs(data)
  if not len(data['label']):
    raise ValueError(f'no example of {what} has a baseline patch, so data.inputs={inputs!r} '
                     'leaves it empty')
  return data, without


def load_splits(builder: tfds.core.DatasetBuilder, data: ml_collections.ConfigDict
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, int]]:
  """The train, validation and test arrays of `data.inputs` under `data.protocol` (fold
  `data.fold`; tfds_cbis.splits), resized to data.image_size when it is not 0, and per split
  how many lacked a baseline.

  'official' is the build's own splits; it leaves out the build's `leaking` split (official-train
  images of patients who are also in the official test CSVs). Another protocol re-partitions
  every built example, those included, by its patient, so switching protocol or fold never
  rebuilds.
  """
  if data.protocol == 'official':
    loaded = {s: load_inputs(builder, s, data.inputs) for s in SPLITS}
  else:
    if data.inputs not in _FEATURES:
      raise ValueError(f'unknown data.inputs {data.inputs!r}; known: {", ".join(INPUTS)}')
    patients = splits_lib.assign_patients(data.protocol, build_cases(builder), data.fold,
                                          builder.builder_config.validation_fraction)
    parts = [load_split(builder, s, (*_FEATURES[data.inputs], 'patient_id'))
             for s in builder.info.splits]
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    split_of = np.array([patients.get(p.decode(), '') for p in merged.pop('patient_id')])
    if not split_of.all():
      raise ValueError(f'{builder.data_dir} holds examples of patients that the CSVs of its '
                       'build do not list; delete it to build it again')
    loaded = {}
    for s in SPLITS:
      keep = np.flatnonzero(split_of == s)
      if not len(keep):
        raise ValueError(f'data.protocol={data.protocol} (fold {data.fold}) leaves the {s} '
                         f'split of {builder.info.full_name} empty; use more patients')
      keep = keep[np.argsort(merged['id'][keep], kind='stable')]
      loaded[s] = _as_inputs({k: v[keep] for k, v in merged.items()}, data.inputs,
                             f'the {s} split of protocol {data.protocol}')
    fold = f', fold {data.fold}' if splits_lib.parse_protocol(data.protocol) else ''
    print(f'Split protocol {data.protocol}{fold}: '
          + ', '.join(f'{s} {len(d["label"])}' for s, (d, _) in loaded.items()) + ' examples',
          flush=True)
  if data.image_size:
    for d, _ in loaded.values():
      d['image'] = resize(d['image'], data.image_size)
  return {s: d for s, (d, _) in loaded.items()}, {s: n for s, (_, n) in loaded.items()}


def build_cases(builder: tfds.core.DatasetBuilder) -> list[cases_lib.Case]:
  """The cases of the description CSVs a build read (its report's csv_check), checked by
  digest; the packaged copy stands in for an official file that has moved."""
  report = build_report(builder) or {}
  files = report.get('csv_check', {}).get('files')
  if not files:
    raise ValueError(f'{builder.data_dir}: the build records no description CSVs (it predates '
                     'csv_check); delete it to build it again')
  by_name = {name: key for key, name in cases_lib.CSV_FILES.items()}
  paths = {}
  for name, f in files.items():
    if os.path.exists(f['path']) and cases_lib.sha256_of(f['path']) == f['sha256']:
      paths[by_name[name]] = f['path']
    elif f['sha256'] == cases_lib.OFFICIAL_SHA256[name]:
      paths[by_name[name]] = os.path.join(cases_lib.PACKAGED_CSV_DIR, name)
    else:
      raise ValueError(f'{f["path"]}, the CSV {builder.data_dir} was built from, is missing or '
                       'changed; restore it or delete the build to build it again')
  return cases_lib.load_cases(paths)


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """uint16 [N, H, W, C] -> [N, size, size, C] by area averaging (exact block means when
  size divides H and W), rounded back to uint16. Done once per split on the host, before
  batching, so training and evaluation see the same pixels (config.data.image_size)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if images.shape[1:3] == (size, size):
    return images
  out = tf.image.resize(tf.convert_to_tensor(images, tf.float32), (size, size), method='area')
  return np.clip(np.round(out.numpy()), 0, 65535).astype(np.uint16)


def stack_pairs(data: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
  """Examples with a baseline, `image` [N, H, W, 2] = (abnormality, baseline); the rest are
  left out (their stored baseline is all zeros) and counted."""
  data = dict(data)
  keep = data.pop('has_baseline').astype(bool)
  data['image'] = np.concatenate([data['image'], data.pop('baseline')], axis=-1)
  return {name: values[keep] for name, values in data.items()}, int(np.sum(~keep))


def num_examples(data: dict[str, np.ndarray]) -> int:
  return len(next(iter(data.values())))


def steps_per_epoch(n: int, batch_size: int) -> int:
  """An epoch is one pass over the training split in full batches (docs/REFERENCE_STUDY.md D6)."""
  if n < batch_size:
    raise ValueError(f'the training split has {n} examples, fewer than batch_size='
                     f'{batch_size}; lower --config.batch_size')
  return n // batch_size


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
  """[steps, batch_size] example indices of `epoch`; the remainder rotates between epochs."""
  steps = steps_per_epoch(n, batch_size)
  perm = np.random.default_rng([seed, epoch]).permutation(n)
  return perm[:steps * batch_size].reshape(steps, batch_size)


def train_batches(data: dict[str, np.ndarray], batch_size: int, seed: int, start_step: int = 0,
                  rows: slice = slice(None)) -> Iterator[dict[str, np.ndarray]]:
  """Endless shuffled training batches, starting at global step `start_step`; of each global
  batch only `rows` (this process's share, parallel.process_rows) are read."""
  steps = steps_per_epoch(num_examples(data), batch_size)
  epoch, offset = divmod(start_step, steps)
  while True:
    order = epoch_order(num_examples(data), batch_size, seed, epoch)
    for idx in order[offset:, rows]:
      yield {name: values[idx] for name, values in data.items()}
    epoch, offset = epoch + 1, 0


def eval_batches(data: dict[str, np.ndarray], batch_size: int,
                 rows: slice = slice(None)) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, in global batches of which `rows` (this process's share)
  are read; the last batch is zero-padded and `mask` marks real examples."""
  n = num_examples(data)
  share = range(batch_size)[rows]
  for start in range(0, n, batch_size):
    lo, hi = start + share.start, start + share.stop
    batch = {}
    for name, values in data.items():
      chunk = values[lo:hi]
      if len(chunk) < hi - lo:
        pad = np.zeros((hi - lo - len(chunk), *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      batch[name] = chunk
    batch['mask'] = np.arange(lo, hi) < n
    yield batch
