"""A build's provenance: its source, the CSVs' digests and officialness, the matched series;
and the builder's refusal to reuse a build of another source."""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import types

import pytest
import tensorflow_datasets as tfds

from tfds_cbis import build_plan
from tfds_cbis import build_report
from tfds_cbis import cases
from tfds_cbis import provenance
from tfds_cbis import synthetic
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib
from tfds_cbis.patches import PatchSpec

CONFIG = types.SimpleNamespace(name='roi150', validation_fraction=0.1, spec=PatchSpec())


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  out = tmp_path_factory.mktemp('prov') / 'tree'
  synthetic.generate(out, patients=6, seed=5, image_shape=(128, 128), workers=1)
  return out


def test_a_synthetic_build_records_the_generator_parameters(tree):
  _, report = build_plan.plan_build(str(tree), CONFIG)
  prov = report['provenance']
  assert prov['source'] == {'synthetic': {'seed': 5, 'layout': 'nbia', 'patients': 6,
                                          'difficulty': 0.5, 'image_shape': [128, 128],
                                          'quirk_rate': 0.06}}
  assert sorted(prov['csvs']) == sorted(cases.CSV_FILES.values())
  assert not any(c['official'] for c in prov['csvs'].values())  # synthetic CSVs
  assert len(prov['provenance_id']) == 12
  # The same tree elsewhere is the same dataset.
  moved = tree.parent / 'moved'
  shutil.copytree(tree, moved)
  assert build_plan.plan_build(str(moved), CONFIG)[1]['provenance'] == prov


def test_the_matched_series_and_the_source_change_the_id(tree, tmp_path):
  prov = build_plan.plan_build(str(tree), CONFIG)[1]['provenance']
  real = tmp_path / 'real'  # the same files, not a synthetic tree: identified by the folder
  shutil.copytree(tree, real)
  os.remove(real / provenance.SYNTHETIC_MANIFEST)
  other = build_plan.plan_build(str(real), CONFIG)[1]['provenance']
  assert other['source'] == {'manual_dir': os.path.realpath(real)}
  assert other['series_uids_sha256'] == prov['series_uids_sha256']
  assert other['provenance_id'] != prov['provenance_id']
  dcm = sorted(str(p) for p in real.rglob('*.dcm'))[0]  # one series fewer
  os.remove(dcm)
  fewer = build_plan.plan_build(str(real), CONFIG)[1]['provenance']
  assert fewer['series_uids_sha256'] != other['series_uids_sha256']
  assert fewer['provenance_id'] != other['provenance_id']


def test_official_csvs_are_recognised_by_their_digest(tmp_path):
  packaged = [os.path.join(cases.PACKAGED_CSV_DIR, n) for n in cases.CSV_FILES.values()]
  digests = lambda paths: {os.path.basename(p): cases.sha256_of(p) for p in paths}  # noqa: E731
  prov = provenance.provenance(str(tmp_path), digests(packaged), ['1.2.3'])
  assert all(c['official'] for c in prov['csvs'].values())
  edited = tmp_path / os.path.basename(packaged[0])
  edited.write_bytes(open(packaged[0], 'rb').read()[:-200])  # truncated
  prov2 = provenance.provenance(str(tmp_path), digests([str(edited), *packaged[1:]]),
                                ['1.2.3'])
  assert not prov2['csvs'][edited.name]['official']
  assert prov2['csvs'][edited.name]['sha256'] == cases.sha256_of(edited)
  assert prov2['provenance_id'] != prov['provenance_id']


def _prepare(data_dir, manual_dir=None):
  builder = builder_lib.Builder(config='roi150', data_dir=str(data_dir), num_workers=1)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir and str(manual_dir), try_download_gcs=False))
  return builder


def _files(folder):
  return {str(p): p.stat().st_mtime_ns for p in folder.rglob('*')}


def test_the_builder_reuses_a_build_only_for_its_source(tree, tmp_path):
  data_dir = tmp_path / 'tfds'
  builder = _prepare(data_dir, tree)
  before = _files(data_dir)
  moved = tmp_path / 'moved'  # the same synthetic tree elsewhere: the same source
  shutil.copytree(tree, moved)
  assert _prepare(data_dir, moved).info.splits['train'].num_examples > 0
  counts = lambda b: {s: i.num_examples for s, i in b.info.splits.items()}  # noqa: E731
  assert counts(_prepare(data_dir)) == counts(builder)  # no manual_dir: read as is
  real = tmp_path / 'download'  # another source
  shutil.copytree(tree, real)
  os.remove(real / provenance.SYNTHETIC_MANIFEST)
  version_dir = builder.data_dir
  with pytest.raises(ValueError) as e:
    _prepare(data_dir, real)
  assert str(e.value) == (
      f'{version_dir} holds a build of synthetic data (difficulty=0.5, image_shape=[128, 128], '
      'layout=nbia, patients=6, quirk_rate=0.06, seed=5), not of manual_dir '
      f'{os.path.realpath(real)}; use another data_dir (tfds build --data_dir, mammo_jax '
      f'--config.data.data_dir) or delete {version_dir} to build it again')
  assert _files(data_dir) == before  # nothing written, nothing rebuilt
  # Forcing a rebuild replaces it with the asked source's build.
  forced = builder_lib.Builder(config='roi150', data_dir=str(data_dir), num_workers=1)
  forced.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(real), try_download_gcs=False,
      download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS))
  assert build_report.read_report(version_dir)['provenance']['source'] == {
      'manual_dir': os.path.realpath(real)}


def test_tfds_build_refuses_a_build_of_another_source(tree, tmp_path):
  data_dir = tmp_path / 'tfds'
  version_dir = _prepare(data_dir, tree).data_dir
  other = tmp_path / 'other'
  other.mkdir()
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  done = subprocess.run(
      [tfds_cli, 'build', 'cbis_ddsm', '--imports', 'tfds_cbis', '--config', 'roi150',
       '--manual_dir', str(other), '--data_dir', str(data_dir)],
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true'),
      capture_output=True, text=True, timeout=300, check=False)
  assert done.returncode != 0
  assert (f'ValueError: {version_dir} holds a build of synthetic data (difficulty=0.5'
          in done.stderr), done.stderr[-3000:]
  assert f'not of manual_dir {other}; use another data_dir' in done.stderr


def test_a_build_of_an_older_version_is_left_alone_with_one_warning(tree, tmp_path, caplog):
  data_dir = tmp_path / 'tfds'
  version_dir = pathlib.Path(_prepare(data_dir, tree).data_dir)
  old = version_dir.parent / '1.0.0'  # as tfds_cbis 1.0.0 left it: no `leaking` split
  version_dir.rename(old)
  before = _files(old)
  caplog.set_level(logging.WARNING)
  builder = _prepare(data_dir, tree)
  notes = [r.getMessage() for r in caplog.records if 'older tfds_cbis' in r.getMessage()]
  assert notes == [f'cbis_ddsm: {old.parent} holds version 1.0.0, built by an older tfds_cbis; '
                   f'building {builder_lib.Builder.VERSION} beside it (delete the old folder '
                   'to free its space)']
  assert pathlib.Path(builder.data_dir) == version_dir and 'leaking' in builder.info.splits
  assert _files(old) == before  # never read into, or mixed with, the new build
  caplog.clear()
  _prepare(data_dir, tree)  # reusing the new build: no note
  assert not [r for r in caplog.records if 'older tfds_cbis' in r.getMessage()]
