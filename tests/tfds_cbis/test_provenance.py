"""A build's provenance: its source, the CSVs' digests and officialness, the matched series."""

import os
import shutil
import types

import pytest

from tfds_cbis import build_plan
from tfds_cbis import cases
from tfds_cbis import provenance
from tfds_cbis import synthetic

CONFIG = types.SimpleNamespace(name='roi150', validation_fraction=0.1)


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
