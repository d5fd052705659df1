"""The whole-image configs of the cbis_ddsm builder (tfds_cbis/whole.py) on synthetic trees."""

import collections
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_cbis import cases as cases_lib
from tfds_cbis import dicom
from tfds_cbis import geometry
from tfds_cbis import splits as splits_lib
from tfds_cbis import synthetic
from tfds_cbis import whole
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib

from tests.tfds_cbis.test_cbis_ddsm_builder import build, examples, report

# Seed 28's 12 patients hold a view under a mass and a calcification subject in one official
# split (P_00001) and across the official split (P_00007, a leaking patient), views whose only
# mask has the wrong size, a view with one good and one mismatched mask, and
# BENIGN_WITHOUT_CALLBACK-only views.
TREE = dict(patients=12, seed=28, difficulty=0.3, image_shape=(256, 160), workers=1)
SHAPE = (288, 224)


class WholeDummyDataTest(tfds.testing.DatasetBuilderTestCase):
  """TFDS's own checks on the committed dummy_data (make_dummy_data.py)."""

  DATASET_CLASS = builder_lib.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['whole_288x224']
  SKIP_CHECKSUMS = True
  MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
  # 25 images on 21 views: P_00001's four views are each under Mass-Training and Calc-Test
  # (merged, in test). Calc-Training_P_00010_LEFT_MLO's only mask has the wrong size: no
  # example. test: P_00001's 4 + 4 more views; validation: P_00006's 2 views; train: the rest.
  SPLITS = {'train': 10, 'validation': 2, 'test': 8}


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('cbis') / 'classic'
  manifest = synthetic.generate(root, layout='classic', **TREE)
  return root, manifest


@pytest.fixture(scope='module')
def built(tree, tmp_path_factory):
  builder = build(tree[0], tmp_path_factory.mktemp('tfds'), 'whole_288x224', num_workers=2)
  return builder, examples(builder), report(builder)


def _views(manifest):
  """view key -> the manifest's images of it."""
  views = collections.defaultdict(list)
  for image in manifest['images']:
    views[f'{image["patient_id"]}_{image["breast"]}_{image["view"]}'].append(image)
  return views


def _split_of(root):
  all_cases = cases_lib.load_cases(cases_lib.find_csvs(root, [
      os.path.join(root, n) for n in cases_lib.CSV_FILES.values()])[0])
  return splits_lib.plan_splits(all_cases).split_of


def test_the_official_csvs_hold_71_views_under_two_subjects():
  all_cases = cases_lib.load_cases(cases_lib.find_csvs(None)[0])
  merged = whole.merged_views(all_cases)
  assert len(merged) == 71
  assert len(whole.group_views(all_cases)) == len(all_cases) - 71 == 3032
  for view, subjects in merged.items():
    assert [s.split('-')[0] for s in subjects] == ['Calc', 'Mass'], (view, subjects)
  assert merged['P_00041_LEFT_CC'] == ['Calc-Test_P_00041_LEFT_CC',
                                       'Mass-Training_P_00041_LEFT_CC']


def test_one_example_per_view_with_all_its_abnormalities(tree, built):
  root, manifest = tree
  _, exs, rep = built
  split_of = _split_of(root)
  by_view = {}
  for ex in exs.values():
    by_view[f'{ex["patient_id"].decode()}_{ex["breast"].decode()}_{ex["view"].decode()}'] = ex
  expected = 0
  merged = []
  for view, images in _views(manifest).items():
    placed = [i for i in images if i['subject'] in split_of]
    located = [(i, a) for i in sorted(images, key=lambda i: i['subject'])
               for a in i['abnormalities'] if 'mask_size_mismatch' not in a['quirks']]
    if not placed or not located:
      assert view not in by_view
      continue
    expected += 1
    ex = by_view[view]
    subjects = sorted(i['subject'] for i in images)
    assert [s.decode() for s in ex['subjects']] == subjects
    if len(images) > 1:
      merged.append(view)
    # The id: a subject placed in the example's split first, then by name.
    in_split = sorted(i['subject'] for i in placed if split_of[i['subject']] == ex['split'])
    assert ex['id'].decode() == in_split[0]
    assert ex['split'] == ('test' if any(i['official_split'] == 'test' for i in images)
                           else split_of[in_split[0]])
    # Label: malignant when any abnormality is, located or not.
    malignant = any(a['pathology'] == 'MALIGNANT' for i in images for a in i['abnormalities'])
    assert ex['label'] == int(malignant)
    # One box per located abnormality, by subject then abnormality id.
    height, width = images[0]['shape']
    want = [[a['bbox'][0] / height, a['bbox'][1] / width, a['bbox'][2] / height,
             a['bbox'][3] / width] for _, a in located]
    np.testing.assert_allclose(ex['boxes'], want, atol=1e-6)
    assert list(ex['abnormality_types']) == [
        whole.ABNORMALITY_TYPES.index(i['abnormality_type'])
        for i, _ in located]
    assert list(ex['pathologies']) == [int(a['pathology'] == 'MALIGNANT') for _, a in located]
  assert len(exs) == expected and rep['views_in_csvs'] == len(_views(manifest))
  # The tree holds merges within a split and across the official split.
  assert sorted(merged) == ['P_00001_RIGHT_CC', 'P_00001_RIGHT_MLO', 'P_00007_LEFT_CC',
                            'P_00007_LEFT_MLO']
  assert exs['Calc-Test_P_00007_LEFT_CC']['split'] == 'test'
  assert sorted(m['view'] for m in rep['merged_views']) == merged
  for entry in rep['merged_views']:
    assert entry['subjects'] == [s.decode() for s in by_view[entry['view']]['subjects']]
    assert entry['split'] == by_view[entry['view']]['split']
  # A leaking patient's official-train images merged into a test view are not "excluded".
  assert 'Mass-Training_P_00007_LEFT_CC' not in rep['excluded_images']
  assert any(ex['label'] == 0 and all(a['pathology'] == 'BENIGN_WITHOUT_CALLBACK'
                                      for i in _views(manifest)[v] for a in i['abnormalities'])
             for v, ex in by_view.items())


def test_pixels_and_masks(tree, built):
  root, manifest = tree
  _, exs, _ = built
  images = {i['subject']: i for i in manifest['images']}
  for key, ex in exs.items():
    assert ex['image'].shape == (*SHAPE, 1) and ex['image'].dtype == np.uint16
    assert ex['mask'].shape == (*SHAPE, 1) and ex['mask'].dtype == np.uint8
    full = dicom.read_image(root / images[key]['path'])
    np.testing.assert_array_equal(ex['image'][..., 0], geometry.resize(full, SHAPE))
    mask = ex['mask'][..., 0]
    assert set(np.unique(mask)) == {0, 1}
    inside = np.zeros(SHAPE, bool)
    for ymin, xmin, ymax, xmax in ex['boxes']:
      # Boxes are stored as float32: round off its error before flooring / ceiling.
      y0, x0 = int(np.floor(ymin * SHAPE[0] + 1e-3)), int(np.floor(xmin * SHAPE[1] + 1e-3))
      y1, x1 = int(np.ceil(ymax * SHAPE[0] - 1e-3)), int(np.ceil(xmax * SHAPE[1] - 1e-3))
      assert mask[y0:y1, x0:x1].any(), key  # every box holds lesion pixels
      # ...on its four edges too: the box is the mask's tight box, scaled.
      box = geometry.bounding_box(mask[y0:y1, x0:x1])
      assert box == (0, 0, y1 - y0, x1 - x0), (key, box)
      inside[y0:y1, x0:x1] = True
    assert not mask[~inside].any(), key  # and no lesion pixel outside the boxes


def test_splits_equal_the_patch_configs_and_protocols_apply(tree, built):
  root, _ = tree
  builder, exs, rep = built
  split_of = _split_of(root)
  for key, ex in exs.items():
    assert ex['split'] == split_of[key]
  by_split = collections.defaultdict(set)
  for ex in exs.values():
    by_split[ex['split']].add(ex['patient_id'].decode())
  assert set(by_split) == {'train', 'validation', 'test'}
  assert not (by_split['train'] & by_split['test'] or by_split['train'] & by_split['validation']
              or by_split['validation'] & by_split['test'])
  # Other protocols assign by the examples' patient_id, as for patches.
  patients = splits_lib.assign_patients('kfold3', cases_lib.load_cases(cases_lib.find_csvs(
      root, [os.path.join(root, n) for n in cases_lib.CSV_FILES.values()])[0]), fold=1)
  assert {ex['patient_id'].decode() for ex in exs.values()} <= set(patients)
  names = builder.info.features['label'].names
  assert names == ['BENIGN', 'MALIGNANT']
  for split, info in builder.info.splits.items():
    counts = collections.Counter(names[ex['label']] for ex in exs.values()
                                 if ex['split'] == split)
    assert rep['counts'][split] == dict(counts) and rep['examples'][split] == info.num_examples


def test_mismatched_masks_are_reported_like_the_patch_configs(tree, built):
  _, manifest = tree
  _, exs, rep = built
  skips = {(s['subject'], s['abnormality_id']): s for s in rep['skips']}
  seen = 0
  for image in manifest['images']:
    for abn in image['abnormalities']:
      if 'mask_size_mismatch' in abn['quirks']:
        seen += 1
        skip = skips[(image['subject'], abn['abnormality_id'])]
        assert skip['reason'] == 'mask_size_mismatch'
        assert abn['mask_path'].split('/')[-1] in skip['detail']
        assert skip['source'].startswith('calc_case')
  assert seen == 3
  assert len(exs['Calc-Training_P_00012_LEFT_CC']['boxes']) == 1  # its other mask is fine
  assert rep['skip_counts'] == {'mask_size_mismatch': 3}


class Small(builder_lib.Builder):
  """Another size, declared in one line."""

  BUILDER_CONFIGS = [builder_lib.WholeImageConfig(name='whole_64x48', height=64, width=48)]


def test_missing_and_unreadable_files(tree, built, tmp_path):
  root, manifest = tree
  damaged = tmp_path / 'damaged'
  shutil.copytree(root, damaged)
  images = {i['subject']: i for i in manifest['images']}
  # The preferred file of a merged view is truncated: the other subject's file is used.
  full = damaged / images['Calc-Training_P_00001_RIGHT_CC']['path']
  full.write_bytes(full.read_bytes()[:-3000])
  # A mask file is gone: that abnormality is skipped, the view keeps its other one.
  gone = images['Calc-Training_P_00003_LEFT_CC']['abnormalities'][0]['mask_path']
  shutil.rmtree(os.path.dirname(damaged / gone))
  builder = build(damaged, tmp_path / 'tfds', 'whole_64x48', Small)
  exs, rep = examples(builder), report(builder)
  assert exs.keys() == (built[1].keys() - {'Calc-Training_P_00001_RIGHT_CC'}
                        | {'Mass-Training_P_00001_RIGHT_CC'})
  ex = exs['Mass-Training_P_00001_RIGHT_CC']
  assert ex['image'].shape == (64, 48, 1) and ex['label'] == 1 and len(ex['boxes']) == 2
  skips = {(s['subject'], s['abnormality_id']): s for s in rep['skips']}
  unused = skips[('Calc-Training_P_00001_RIGHT_CC', None)]
  assert unused['reason'] == whole.MERGED_FILE_UNUSED
  assert 'truncated pixel data' in unused['detail']
  assert 'uses Mass-Training_P_00001_RIGHT_CC' in unused['detail']
  assert skips[('Calc-Training_P_00003_LEFT_CC', 1)]['reason'] == 'file_missing'
  assert len(exs['Calc-Training_P_00003_LEFT_CC']['boxes']) == 1


@pytest.mark.slow  # ~20 s; the patch configs' Beam test runs the same transform by default
def test_beam_direct_runner_builds_the_same_dataset(tree, built, tmp_path):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  builder = build(tree[0], tmp_path, 'whole_288x224', beam_options=PipelineOptions(
      ['--runner=DirectRunner', '--direct_num_workers=1']))
  exs, rep = examples(builder), report(builder)
  assert exs.keys() == built[1].keys()
  for key, ex in exs.items():
    for field in ('image', 'mask', 'boxes', 'label', 'subjects'):
      np.testing.assert_array_equal(ex[field], built[1][key][field], err_msg=f'{key} {field}')
  assert rep['counts'] == built[2]['counts'] and rep['merged_views'] == built[2]['merged_views']
  assert sorted(map(json.dumps, rep['skips'])) == sorted(map(json.dumps, built[2]['skips']))
