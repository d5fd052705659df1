"""TFDS builder `cbis_ddsm`: CBIS-DDSM patch and whole-image datasets from the TCIA DICOM files.

The heavy lifting is in plain modules (build_lock, build_plan, build_report, pool, patches and
below); this file declares the configs and features and wires the pieces into TFDS, with or
without Beam.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from collections.abc import Iterator

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

import tfds_cbis
from tfds_cbis import build_lock
from tfds_cbis import build_plan
from tfds_cbis import build_report
from tfds_cbis import cases as cases_lib
from tfds_cbis import patches
from tfds_cbis import pool as pool_lib
from tfds_cbis import provenance as provenance_lib
from tfds_cbis import splits as splits_lib
from tfds_cbis import strict_json
from tfds_cbis import whole

_HOMEPAGE = 'https://www.cancerimagingarchive.net/collection/cbis-ddsm/'
_CITATION = """\
@misc{lee2016cbisddsm,
  title = {Curated Breast Imaging Subset of DDSM},
  author = {Lee, Rebecca Sawyer and Gimenez, Francisco and Hoogi, Assaf and Rubin, Daniel},
  publisher = {The Cancer Imaging Archive},
  year = {2016},
  doi = {10.7937/K9/TCIA.2016.7O02S9CY},
}
@article{lee2017curated,
  title = {A curated mammography data set for use in computer-aided detection and diagnosis
           research},
  author = {Lee, Rebecca Sawyer and Gimenez, Francisco and Hoogi, Assaf and Miyake, Kanae Kawai
            and Gorovoy, Mia and Rubin, Daniel L.},
  journal = {Scientific Data}, volume = {4}, pages = {170177}, year = {2017},
}
"""


@dataclasses.dataclass(eq=False)
class CbisDdsmConfig(tfds.core.BuilderConfig):
  """A patch dataset variant: what to cut (a `PatchSpec`) and the validation share.

  Declare your own in a few lines, e.g.

      class CbisDdsm224(Builder):  # registered as 'cbis_ddsm224'
        BUILDER_CONFIGS = [CbisDdsmConfig(name='roi224', spec=PatchSpec(patch_size=224))]
  """

  spec: patches.PatchSpec = dataclasses.field(default_factory=patches.PatchSpec)
  validation_fraction: float = 0.1


ROI150 = CbisDdsmConfig(
    name='roi150',
    description=('The reference study\'s data: per abnormality, the bounding box of its ROI '
                 'mask cut from the full mammogram and resized to 150x150 (16 bits), with a '
                 'same-size healthy baseline patch next to it (left/right/top/bottom) inside '
                 'the breast and overlapping no lesion.'),
    spec=patches.PatchSpec(mode='roi', patch_size=150))
S10_224 = CbisDdsmConfig(
    name='s10_224',
    description=('Shen et al.\'s S10 sampling as in TFDS\'s curated_breast_imaging_ddsm '
                 'patches: images resized to 1152x896, 10 patches of 224x224 per abnormality '
                 'at >=0.9 overlap (relaxed x0.95 per 100 tries) and 10 background patches '
                 'per image (>75% breast, <=35% lesion overlap, relaxed 5% per 100 tries); '
                 '16 bits kept; five labels with BACKGROUND first.'),
    spec=patches.PatchSpec(mode='sampled', patch_size=224))


@dataclasses.dataclass(eq=False)
class WholeImageConfig(CbisDdsmConfig):
  """A whole-mammogram variant: one example per breast view, resized to height x width.

  Another size is one line in a Builder subclass's BUILDER_CONFIGS, e.g.
      WholeImageConfig(name='whole_576x448', height=576, width=448)
  (`spec` is derived from height and width.)
  """

  height: int = 1152
  width: int = 896
  spec: whole.WholeSpec = dataclasses.field(init=False, default=None)

  def __post_init__(self):
    self.spec = whole.WholeSpec(height=self.height, width=self.width)


_WHOLE_DESCRIPTION = (
    'Whole mammograms, one example per breast view (patient, breast, view), resized to {} '
    '(16 bits, the S10 patches\' resizing); a view the CSVs hold under both a mass and a '
    'calcification subject is one example with all its abnormalities. Label BENIGN / '
    'MALIGNANT (malignant when any abnormality is; BENIGN_WITHOUT_CALLBACK is benign; every '
    'image has a lesion, so negatives are benign-only views); mask = the union of the ROI '
    'masks at the image size; one box per located abnormality.')
WHOLE_1152x896 = WholeImageConfig(
    name='whole_1152x896', height=1152, width=896,
    description=_WHOLE_DESCRIPTION.format('1152x896, Shen et al.\'s size'))
WHOLE_288x224 = WholeImageConfig(
    name='whole_288x224', height=288, width=224,
    description=_WHOLE_DESCRIPTION.format('288x224, a size for CPUs'))


_WORKER_DIED = ('cbis_ddsm: a worker process died while reading mammograms (out of memory?); '
                'build again with fewer workers, e.g. TFDS_CBIS_WORKERS=1')


class Builder(tfds.core.GeneratorBasedBuilder):
  """CBIS-DDSM abnormality patches or whole breast views read directly from the DICOM files."""

  VERSION = tfds.core.Version(tfds_cbis.VERSION)
  RELEASE_NOTES = {
      '1.0.0': 'Initial release: DICOM input in both NBIA layouts; roi150 and s10_224.',
      '1.1.0': 'Split `leaking`: the official-train images of the patients who are also in an '
               'official test CSV (1.0.0 left them out), for the protocols other than '
               'official, which place them by patient. Whole-image configs whole_1152x896 '
               'and whole_288x224.',
  }
  BUILDER_CONFIGS = [ROI150, S10_224, WHOLE_1152x896, WHOLE_288x224]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download CBIS-DDSM from The Cancer Imaging Archive (collection CBIS-DDSM, 163.6 GB of DICOM,
CC BY 3.0) with the NBIA Data Retriever, and pass the folder it wrote as manual_dir, e.g.
  tfds build cbis_ddsm --imports tfds_cbis --config roi150 \\
      --manual_dir ~/tcia/manifest-ZkhPvrLo5216730872708713142 --data_dir ~/tensorflow_datasets
Any layout works, because files are matched to the CSV rows by the Study/Series UIDs in their
DICOM headers: the current descriptive tree
  CBIS-DDSM/<Subject>/<MM-DD-YYYY>-DDSM-NA-<5 digits>/1.000000-<description>-<5 digits>/1-1.dcm
and the classic UID tree
  CBIS-DDSM/<Subject>/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm
No PNG conversion is needed. The four description CSVs (mass/calc x train/test) are read from
manual_dir when all four are there, else from the official copies shipped with tfds_cbis.
"""

  def __init__(self, *, num_workers: int | None = None, **kwargs):
    """`num_workers` processes read and cut images (default: all cores; <=1: inline)."""
    super().__init__(**kwargs)
    env_workers = os.environ.get('TFDS_CBIS_WORKERS')
    if num_workers is None and env_workers:
      num_workers = int(env_workers)
    self._num_workers = pool_lib.worker_count(num_workers)
    self._download_config = None
    self._report: dict = {}
    self._final_data_dir = ''
    self._pool = None

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.builder_config.spec
    if isinstance(spec, whole.WholeSpec):
      return self._dataset_info(_whole_features(spec))
    size = spec.patch_size
    common = {
        'id': tfds.features.Text(doc='Unique, deterministic example key.'),
        'image': tfds.features.Image(shape=(size, size, 1), dtype=np.uint16,
                                     encoding_format='png'),
        'patient_id': tfds.features.Text(doc='As in the CSVs, e.g. P_00001.'),
        'breast': tfds.features.ClassLabel(names=cases_lib.BREASTS),
        'view': tfds.features.ClassLabel(names=cases_lib.VIEWS),
        'abnormality_id': np.int32,
    }
    if spec.mode == 'roi':
      features = {
          **common,
          'baseline': tfds.features.Image(shape=(size, size, 1), dtype=np.uint16,
                                          encoding_format='png',
                                          doc='Healthy patch beside the lesion; zeros when '
                                          'has_baseline is False.'),
          'has_baseline': np.bool_,
          'box': tfds.features.Tensor(
              shape=(4,), dtype=np.int32,
              doc='The mask\'s bounding box (y0, x0, y1, x1; ends exclusive) in full-image '
              'pixels.'),
          'baseline_box': tfds.features.Tensor(
              shape=(4,), dtype=np.int32, doc='The baseline patch\'s box; zeros without one.'),
          'label': tfds.features.ClassLabel(names=cases_lib.LABEL_NAMES),
          'abnormality_type': tfds.features.ClassLabel(names=cases_lib.ABNORMALITY_TYPES),
          'pathology': tfds.features.ClassLabel(
              names=cases_lib.PATHOLOGIES, doc='BENIGN_WITHOUT_CALLBACK counts as BENIGN.'),
          'assessment': np.int32,
          'subtlety': np.int32,
          'breast_density': np.int32,
      }
    else:
      features = {
          **common,
          'label': tfds.features.ClassLabel(names=patches.SAMPLED_LABEL_NAMES),
          'box': tfds.features.Tensor(
              shape=(4,), dtype=np.int32,
              doc=f'The patch (y0, x0, y1, x1) in the image resized to {spec.resize_shape}.'),
      }
    return self._dataset_info(features)

  def _dataset_info(self, features: dict) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  # --- planning (driver side) -------------------------------------------------------------

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """TFDS's, holding the build lock of this dataset version while it builds (see
    build_lock: one build at a time, and a killed build's incomplete folder is removed).

    A prepared build is reused only for the manual_dir it was built from (when one is given:
    without one, e.g. to read a build, it is reused as is); see provenance.check_reuse.
    """
    self._final_data_dir = os.fspath(self.data_dir)  # TFDS builds in a temporary folder
    config = download_config or tfds.download.DownloadConfig()
    reuse = config.download_mode == tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if reuse and not self.data_path.exists():
      _note_older_versions(self.data_path)
    if reuse and self.data_path.exists():
      if config.manual_dir:
        provenance_lib.check_reuse(self.data_dir, config.manual_dir)
      # Reused as is: nothing is written, so a read-only data_dir still works.
      return super().download_and_prepare(download_config=download_config, **kwargs)
    with build_lock.hold(os.fspath(self.data_dir)):
      return super().download_and_prepare(download_config=download_config, **kwargs)

  def _download_and_prepare(self, dl_manager, download_config):  # pytype: disable=signature-mismatch
    self._download_config = download_config
    try:
      super()._download_and_prepare(dl_manager=dl_manager, download_config=download_config)
    except Exception:
      if self._report:  # the prepared folder is discarded: keep the skips in the log at least
        build_report.log_summary(build_report.finish_report(self._report),
                                 'not written: the build failed')
      raise
    finally:
      if self._pool is not None:
        self._pool.shutdown(cancel_futures=True)
        self._pool = None
    build_report.write_report(self._report, self.data_dir, self._final_data_dir)

  @property
  def _use_beam(self) -> bool:
    config = self._download_config
    return bool(config and (config.beam_runner or config.beam_options))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    tasks, report = build_plan.plan_build(manual_dir, self.builder_config,
                                          self.MANUAL_DOWNLOAD_INSTRUCTIONS)
    self._report = report
    generators = {}
    for split in build_plan.SPLITS:
      if tasks[split]:
        generators[split] = self._generate_examples(split, tasks[split])
      elif split != splits_lib.LEAKING:  # a release without leaking patients has none
        logging.warning('cbis_ddsm: split %r has no image; it is left out.', split)
    return generators

  # --- generation -------------------------------------------------------------------------

  def _generate_examples(self, split: str, tasks: list):
    spec = self.builder_config.spec
    if self._use_beam:
      skip_path = os.fspath(epath.Path(self.data_dir) / f'skips-{split}.jsonl')
      return _beam_transform(split, tasks, spec, skip_path)
    return self._generate_locally(split, tasks, spec)

  def _generate_locally(self, split: str, tasks: list,
                        spec: patches.PatchSpec | whole.WholeSpec
                        ) -> Iterator[tuple[str, dict]]:
    counts = self._report['counts'].setdefault(split, collections.Counter())
    process = functools.partial(_processor(spec), spec=spec)
    if self._pool is None and self._num_workers > 1:  # one pool per build, for every split
      self._pool = pool_lib.executor(self._num_workers)
    yielded, skips = 0, []
    for result in pool_lib.imap(process, tasks, self._pool, self._num_workers,
                                on_worker_death=_WORKER_DIED):
      skips.extend(s.to_json() for s in result.skips)
      if result.without_baseline:
        counts['without_baseline'] += result.without_baseline
      for key, example in result.examples:
        counts[example['label']] += 1
        yielded += 1
        yield key, example
    self._report['skips'].extend(skips)
    if not yielded:
      reasons = collections.Counter(s['reason'] for s in skips)
      raise ValueError(
          f'cbis_ddsm: none of the {len(tasks)} images of split {split!r} under manual_dir '
          f'{self._report["manual_dir"]} gave an example (skips: {dict(reasons)}; first: '
          f'{skips[0]["detail"] if skips else "none"}). Check that the files are complete, '
          'e.g. re-download the failed series with the NBIA Data Retriever.')

  # --- reporting --------------------------------------------------------------------------

  def _process_pipeline_result(self, pipeline_result) -> None:
    """Beam: fold the workers' counters and skip files into the report."""
    from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top
    metrics = pipeline_result.metrics().query(MetricsFilter().with_namespace('cbis_ddsm'))
    for counter in metrics['counters']:
      split, name = counter.key.metric.name.split('/', 1)
      counts = self._report['counts'].setdefault(split, collections.Counter())
      counts[name] += counter.committed if counter.committed is not None else counter.attempted
    for split in build_plan.SPLITS:
      path = epath.Path(self.data_dir) / f'skips-{split}.jsonl'
      if path.exists():
        self._report['skips'].extend(
            json.loads(line) for line in path.read_text().splitlines() if line.strip())
        path.unlink()


def _whole_features(spec: whole.WholeSpec) -> dict:
  shape = (spec.height, spec.width, 1)
  return {
      'id': tfds.features.Text(doc='The subject whose file gives the pixels, e.g. '
                               'Mass-Test_P_00145_LEFT_CC.'),
      'image': tfds.features.Image(shape=shape, dtype=np.uint16, encoding_format='png'),
      'mask': tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format='png',
                                  doc='1 where any located abnormality\'s ROI mask covers '
                                  'the resized pixel, else 0.'),
      'label': tfds.features.ClassLabel(
          names=whole.LABEL_NAMES, doc='MALIGNANT when any abnormality of the view is; '
          'BENIGN_WITHOUT_CALLBACK counts as BENIGN.'),
      'boxes': tfds.features.Sequence(tfds.features.BBoxFeature(
          doc='A located abnormality\'s mask box (ymin, xmin, ymax, xmax), normalised.')),
      'abnormality_types': tfds.features.Sequence(
          tfds.features.ClassLabel(names=whole.ABNORMALITY_TYPES)),
      'pathologies': tfds.features.Sequence(tfds.features.ClassLabel(names=whole.LABEL_NAMES)),
      'patient_id': tfds.features.Text(doc='As in the CSVs, e.g. P_00001.'),
      'breast': tfds.features.Text(doc='LEFT or RIGHT.'),
      'view': tfds.features.Text(doc='CC or MLO.'),
      'subjects': tfds.features.Sequence(tfds.features.Text(
          doc='Every CSV subject of the view (two where merged).')),
  }


def _processor(spec):
  """The worker function for a config's spec: whole views or patches."""
  return whole.process if isinstance(spec, whole.WholeSpec) else patches.process


def _note_older_versions(data_path: epath.Path) -> None:
  """One warning when data_path's config folder holds builds of older versions, which are
  left as they are (never read or mixed into the new build)."""
  parent = data_path.parent
  older = sorted(p.name for p in parent.iterdir() if p.is_dir() and p.name != data_path.name
                 and tfds.core.Version.is_valid(p.name)) if parent.exists() else []
  if older:
    logging.warning('cbis_ddsm: %s holds version %s, built by an older tfds_cbis; building '
                    '%s beside it (delete the old folder to free its space)', parent,
                    ', '.join(older), data_path.name)


def _beam_transform(split: str, tasks: list, spec: patches.PatchSpec | whole.WholeSpec,
                    skip_path: str):
  """The same generation as a Beam PTransform (one element per mammogram)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top

  def count_and_emit(result: patches.Result):
    metrics = beam.metrics.Metrics
    if result.without_baseline:
      metrics.counter('cbis_ddsm', f'{split}/without_baseline').inc(result.without_baseline)
    for key, example in result.examples:
      metrics.counter('cbis_ddsm', f'{split}/{example["label"]}').inc()
      yield key, example

  @beam.ptransform_fn
  def generate(root):
    results = (root
               | 'Tasks' >> beam.Create(tasks)
               | 'Reshuffle' >> beam.Reshuffle()
               | 'Process' >> beam.Map(_processor(spec), spec=spec))
    _ = (results
         | 'Skips' >> beam.FlatMap(lambda r: [strict_json.dumps(s.to_json()) for s in r.skips])
         | 'WriteSkips' >> beam.io.WriteToText(skip_path, num_shards=1,
                                               shard_name_template=''))
    return results | 'Examples' >> beam.FlatMap(count_and_emit)

  return generate()  # pylint: disable=no-value-for-parameter
