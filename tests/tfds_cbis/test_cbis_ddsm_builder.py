"""The cbis_ddsm TFDS builder on synthetic CBIS-DDSM trees in the real on-disk format."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfds_cbis import build_report
from tfds_cbis import cases
from tfds_cbis import dicom
from tfds_cbis import geometry
from tfds_cbis import patches
from tfds_cbis import synthetic
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib

# 12 patients of 256x160 images: every quirk appears (see synthetic.generate).
TREE = dict(patients=12, seed=3, difficulty=0.3, image_shape=(256, 160), workers=1)


class Roi150DummyDataTest(tfds.testing.DatasetBuilderTestCase):
  """TFDS's own checks on the committed dummy_data (make_dummy_data.py: 10 patients)."""

  DATASET_CLASS = builder_lib.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['roi150']
  SKIP_CHECKSUMS = True
  MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False  # pydicom opens files itself
  # 27 abnormalities on 25 images in the CSVs: 8 official-test (test = 8). Of the 19
  # official-train ones, patient P_00001's 4 (on 4 images) are split `leaking` (P_00001 is also
  # in the calc test CSV); validation is 1 of the 7 remaining patients (P_00006: 2 images, 2
  # abnormalities); and 2 masks differ in size from their image and are skipped:
  # train = 19 - 4 - 2 - 2 = 11.
  SPLITS = {'train': 11, 'validation': 2, 'test': 8, 'leaking': 4}


class S10DummyDataTest(tfds.testing.DatasetBuilderTestCase):
  DATASET_CLASS = builder_lib.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ['s10_224']
  SKIP_CHECKSUMS = True
  MOCK_OUT_FORBIDDEN_OS_FUNCTIONS = False
  # 10 patches per kept abnormality + 10 background patches per image with a kept
  # abnormality (as TFDS: Calc-Training_P_00010_LEFT_MLO's only mask has the wrong size):
  # train 10 * (11 + 10 images) = 210, validation 10 * (2 + 2) = 40, test 10 * (8 + 8) = 160,
  # leaking 10 * (4 + 4) = 80.
  SPLITS = {'train': 210, 'validation': 40, 'test': 160, 'leaking': 80}


def build(manual_dir, data_dir, config='roi150', builder_cls=builder_lib.Builder,
          num_workers=1, **download_kwargs):
  builder = builder_cls(config=config, data_dir=str(data_dir), num_workers=num_workers)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=str(manual_dir), try_download_gcs=False, **download_kwargs))
  return builder


def examples(builder):
  out = {}
  for split in builder.info.splits:
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      out[ex['id'].decode()] = dict(ex, split=split)
  return out


def report(builder):
  with open(os.path.join(builder.data_dir, build_report.REPORT_NAME)) as f:
    return json.load(f)


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  root = tmp_path_factory.mktemp('cbis')
  out = {}
  for layout in ('classic', 'nbia'):
    out[layout] = root / layout
    synthetic.generate(out[layout], layout=layout, **TREE)
  with open(out['classic'] / 'synthetic_manifest.json') as f:
    out['manifest'] = json.load(f)
  return out


@pytest.fixture(scope='module')
def roi(trees, tmp_path_factory):
  builder = build(trees['classic'], tmp_path_factory.mktemp('tfds_roi'))
  return builder, examples(builder), report(builder)


def _abnormalities(manifest):
  for image in manifest['images']:
    for abn in image['abnormalities']:
      yield image, abn


def test_both_layouts_and_worker_counts_give_identical_examples(trees, roi, tmp_path):
  _, classic, _ = roi
  nbia = examples(build(trees['nbia'], tmp_path / 'nbia', num_workers=2))
  assert classic.keys() == nbia.keys() and len(classic) > 10
  for key, ex in classic.items():
    for field, value in ex.items():
      np.testing.assert_array_equal(value, nbia[key][field], err_msg=f'{key} {field}')


def test_labels_and_metadata_equal_the_csv(trees, roi):
  """Against the generator's manifest (the truth the CSVs were written from), not our parser."""
  builder, exs, _ = roi
  feature = builder.info.features
  checked = 0
  for image, abn in _abnormalities(trees['manifest']):
    ex = exs.get(f'{image["subject"]}/abnorm_{abn["abnormality_id"]}')
    if ex is None:
      continue
    checked += 1
    assert feature['label'].int2str(ex['label']) == abn['label']
    assert feature['abnormality_type'].int2str(ex['abnormality_type']) == (
        'MASS' if image['abnormality_type'] == 'mass' else 'CALCIFICATION')
    assert feature['pathology'].int2str(ex['pathology']) == (
        'MALIGNANT' if abn['pathology'] == 'MALIGNANT' else 'BENIGN')
    assert ex['patient_id'].decode() == image['patient_id']
    assert feature['breast'].int2str(ex['breast']) == image['breast']
    assert feature['view'].int2str(ex['view']) == image['view']
    assert (ex['abnormality_id'], ex['assessment'], ex['subtlety'], ex['breast_density']) == (
        abn['abnormality_id'], abn['assessment'], abn['subtlety'], image['density'])
  assert checked == len(exs)


def test_patches_are_the_mask_boxes_and_baselines_avoid_every_mask(trees, roi):
  _, exs, _ = roi
  tree, manifest = trees['classic'], trees['manifest']
  with_baseline = 0
  for image, abn in _abnormalities(manifest):
    ex = exs.get(f'{image["subject"]}/abnorm_{abn["abnormality_id"]}')
    if ex is None:
      continue
    assert list(ex['box']) == abn['bbox']
    full = dicom.read_image(tree / image['path'])
    y0, x0, y1, x1 = abn['bbox']
    np.testing.assert_array_equal(ex['image'][..., 0],
                                  geometry.resize(full[y0:y1, x0:x1], (150, 150)))
    if not ex['has_baseline']:
      assert not ex['baseline'].any()
      continue
    with_baseline += 1
    by0, bx0, by1, bx1 = ex['baseline_box']
    assert (by1 - by0, bx1 - bx0) == (y1 - y0, x1 - x0)
    assert 0 <= by0 and 0 <= bx0 and by1 <= full.shape[0] and bx1 <= full.shape[1]
    for other in image['abnormalities']:
      mask = dicom.read_pixels(tree / other['mask_path']) > 0
      mask = geometry.resize(mask, full.shape, 'nearest')
      assert not mask[by0:by1, bx0:bx1].any(), (ex['id'], other['abnormality_id'])
  assert with_baseline >= 0.8 * len(exs)


def test_quirks(trees, roi):
  _, exs, rep = roi
  skipped = {(s['subject'], s['abnormality_id']): s for s in rep['skips']}
  seen = set()
  for image, abn in _abnormalities(trees['manifest']):
    key = (image['subject'], abn['abnormality_id'])
    excluded = image['subject'] in rep['excluded_images']
    for quirk in abn['quirks']:
      seen.add(quirk)
    if 'mask_size_mismatch' in abn['quirks']:
      assert skipped[key]['reason'] == 'mask_size_mismatch'
      assert abn['mask_path'].split('/')[-1] in skipped[key]['detail']
    else:  # a leaking patient's official-train image in split `leaking`, and only there
      ex = exs[f'{key[0]}/abnorm_{key[1]}']
      assert (ex['split'] == 'leaking') == excluded, (key, ex['split'])
  assert {'swapped', 'two_series', 'mask_size_mismatch', 'blank_series_description'} <= seen
  assert any(len(i['abnormalities']) > 1 for i in trees['manifest']['images'])


class ResizeMasks(builder_lib.Builder):
  """A user-declared variant: resize masks whose size differs from the image."""

  BUILDER_CONFIGS = [builder_lib.CbisDdsmConfig(
      name='roi150_resized', spec=patches.PatchSpec(resize_mismatched_masks=True))]


def test_resize_mismatched_masks_option(trees, roi, tmp_path):
  builder = build(trees['classic'], tmp_path, 'roi150_resized', ResizeMasks)
  exs = examples(builder)
  kept = rejected = 0
  for image, abn in _abnormalities(trees['manifest']):
    if 'mask_size_mismatch' not in abn['quirks']:
      continue
    key = f'{image["subject"]}/abnorm_{abn["abnormality_id"]}'
    if abn['mask_aspect_ok']:
      kept += 1
      assert key in exs
      assert np.abs(exs[key]['box'] - np.array(abn['bbox'])).max() <= 2
    else:
      rejected += 1
      assert key not in exs
  assert kept and rejected
  assert len(exs) == len(roi[1]) + kept


def test_splits_are_patient_disjoint_and_the_leak_is_reported(trees, roi):
  _, exs, rep = roi
  by_split = {}
  for ex in exs.values():
    by_split.setdefault(ex['split'], set()).add(ex['patient_id'].decode())
  assert set(by_split) == {'train', 'validation', 'test', 'leaking'}
  splits = [by_split[s] for s in ('train', 'validation', 'test')]
  for i, a in enumerate(splits):
    for b in splits[i + 1:]:
      assert not a & b
  leaked = {i['patient_id'] for i in trees['manifest']['images'] if i['official_split'] == 'test'}
  leaked &= {i['patient_id'] for i in trees['manifest']['images']
             if i['official_split'] == 'train'}
  assert leaked and set(rep['excluded_patients']) == leaked == by_split['leaking']
  assert {k.split('/')[0] for k, ex in exs.items() if ex['split'] == 'leaking'} == set(
      rep['excluded_images'])


def test_report_counts_match_the_dataset(roi):
  builder, exs, rep = roi
  names = builder.info.features['label'].names
  for split, info in builder.info.splits.items():
    counts = {n: 0 for n in names}
    for ex in exs.values():
      if ex['split'] == split:
        counts[names[ex['label']]] += 1
    assert rep['examples'][split] == info.num_examples
    assert {n: rep['counts'][split].get(n, 0) for n in names} == counts
  assert rep['csv_source'] == 'manual_dir' and rep['dicom_files'] > 0


def test_missing_and_corrupt_files_skip_only_what_they_hold(trees, roi, tmp_path):
  tree = tmp_path / 'damaged'
  shutil.copytree(trees['classic'], tree)
  manifest = trees['manifest']
  excluded = set(roi[2]['excluded_images'])
  usable = [(i, a) for i, a in _abnormalities(manifest)
            if not a['quirks'] and i['subject'] not in excluded and len(i['abnormalities']) == 1]
  (img_a, abn_a), (img_b, abn_b), (img_c, _) = usable[:3]
  shutil.rmtree(os.path.dirname(tree / abn_a['mask_path']))  # abnormality's series gone
  # An image with two lesions loses one mask: the other lesion keeps its example, but no
  # patch of that image can be certified healthy any more, so it gets no baseline.
  img_d = next(i for i in manifest['images'] if i['subject'] not in excluded
               and len(i['abnormalities']) == 2
               and not any(a['quirks'] for a in i['abnormalities'])
               and roi[1][f'{i["subject"]}/abnorm_2']['has_baseline'])
  mask_d = tree / img_d['abnormalities'][0]['mask_path']
  mask_d.write_bytes(b'not a dicom file')
  mask_b = tree / abn_b['mask_path']
  mask_b.write_bytes(mask_b.read_bytes()[:400])  # truncated mask: unreadable header
  full_c = tree / img_c['path']
  full_c.write_bytes(full_c.read_bytes()[:-3000])  # truncated pixel data
  builder = build(tree, tmp_path / 'tfds')
  exs, rep = examples(builder), report(builder)
  skips = {(s['subject'], s['abnormality_id']): s for s in rep['skips']}
  assert skips[(img_a['subject'], 1)]['reason'] == 'file_missing'
  assert skips[(img_b['subject'], 1)]['reason'] == 'file_unreadable'
  assert str(mask_b) in skips[(img_b['subject'], 1)]['detail']
  assert skips[(img_c['subject'], None)]['reason'] == 'file_unreadable'
  assert 'truncated pixel data' in skips[(img_c['subject'], None)]['detail']
  assert skips[(img_d['subject'], 1)]['reason'] == 'file_unreadable'
  assert skips[(img_d['subject'], 1)]['source'].startswith(('calc_case', 'mass_case'))
  assert not exs[f'{img_d["subject"]}/abnorm_2']['has_baseline']
  lost = {f'{i["subject"]}/abnorm_1' for i in (img_a, img_b, img_c, img_d)}
  assert set(exs) == set(roi[1]) - lost
  for key in set(exs) - {f'{img_d["subject"]}/abnorm_2'}:
    assert exs[key]['has_baseline'] == roi[1][key]['has_baseline']


def test_a_split_without_any_readable_image_fails_clearly(trees, roi, tmp_path):
  tree = tmp_path / 'damaged'
  shutil.copytree(trees['classic'], tree)
  for image in trees['manifest']['images']:
    if image['official_split'] == 'test':
      full = tree / image['path']
      full.write_bytes(full.read_bytes()[:-2000])  # truncated pixel data
  with pytest.raises(ValueError, match=f"split 'test' under manual_dir {tree} gave an exa"):
    build(tree, tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / 'cbis_ddsm' / 'roi150' / str(builder_lib.Builder.VERSION)
              ).exists()


def test_no_images_or_malformed_csv_fail_with_a_clear_error(trees, tmp_path):
  only_csvs = tmp_path / 'only_csvs'
  only_csvs.mkdir()
  for name in cases.CSV_FILES.values():
    shutil.copy(trees['classic'] / name, only_csvs / name)
  with pytest.raises(ValueError, match=f'manual_dir {only_csvs} holds no CBIS-DDSM image'):
    build(only_csvs, tmp_path / 'a')
  (only_csvs / 'calc_case_description_test_set.csv').write_text('nothing,useful\r\n')
  with pytest.raises(cases.CsvFormatError, match='calc_case_description_test_set.csv'):
    build(only_csvs, tmp_path / 'b')
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'README.txt').write_text('not a download')
  with pytest.raises(ValueError, match='holds no CBIS-DDSM image'):
    build(empty, tmp_path / 'c')  # the packaged CSVs, but no DICOM


def _resized_masks(tree, image, shape=(1152, 896)):
  """Each abnormality's mask at the s10 image scale (any covered pixel counts, as the builder)."""
  out = {}
  full_shape = tuple(image['shape'])
  for abn in image['abnormalities']:
    mask = dicom.read_pixels(tree / abn['mask_path']) > 0
    mask = geometry.resize(mask, full_shape, 'nearest').astype(np.uint8) * 255
    out[abn['abnormality_id']] = geometry.resize(mask, shape, 'area') > 0
  return out


def test_s10_sampling(trees, roi, tmp_path):
  builder = build(trees['classic'], tmp_path, 's10_224', num_workers=2)
  exs = examples(builder)
  roi_exs = roi[1]
  names = builder.info.features['label'].names
  assert names[0] == 'BACKGROUND' and names[1:] == roi[0].info.features['label'].names
  per_unit = {}
  for key, ex in exs.items():
    assert ex['image'].shape == (224, 224, 1) and ex['image'].dtype == np.uint16
    unit = key.rsplit('/', 1)[0] if '/patch_' in key else key.rsplit('_', 1)[0]
    per_unit[unit] = per_unit.get(unit, 0) + 1
    if '/patch_' in key:
      assert ex['label'] == roi_exs[unit]['label'] + 1
    else:
      assert ex['label'] == 0 and ex['abnormality_id'] == 0
  assert set(per_unit.values()) == {10}
  assert {u for u in per_unit if '/abnorm_' in u} == set(roi_exs)
  # Background patches come from exactly the images with a kept abnormality.
  assert {u for u in per_unit if u.endswith('/background')} == {
      f'{k.split("/")[0]}/background' for k in roi_exs}

  # Overlap rules, measured on the masks themselves.
  tree, strong = trees['classic'], []
  for image in trees['manifest']['images']:
    masks = None
    for key in [k for k in exs if k.startswith(image['subject'] + '/')]:
      masks = masks or _resized_masks(tree, image)
      y0, x0, y1, x1 = exs[key]['box']
      assert (y1 - y0, x1 - x0) == (224, 224)
      if '/patch_' in key:
        lesion = masks[exs[key]['abnormality_id']]
        inside = lesion[y0:y1, x0:x1].sum()
        share = max(inside / 224**2, inside / lesion.sum())
        assert share > 0.1, key  # the last relaxation level
        strong.append(share > 0.9)
      else:
        for lesion in masks.values():
          inside = lesion[y0:y1, x0:x1].sum()
          assert max(inside / 224**2, inside / lesion.sum()) <= 0.9, key
  assert np.mean(strong) > 0.8  # most patches meet the initial 0.9 threshold

  again = examples(build(trees['classic'], tmp_path / 'again', 's10_224', num_workers=1))
  assert again.keys() == exs.keys()
  for key in list(exs)[::7]:
    np.testing.assert_array_equal(again[key]['image'], exs[key]['image'])


def test_beam_direct_runner_builds_the_same_dataset(trees, roi, tmp_path):
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  builder = build(trees['classic'], tmp_path, beam_options=PipelineOptions(
      ['--runner=DirectRunner', '--direct_num_workers=1']))
  exs, rep = examples(builder), report(builder)
  assert exs.keys() == roi[1].keys()
  for key in exs:
    np.testing.assert_array_equal(exs[key]['image'], roi[1][key]['image'])
    np.testing.assert_array_equal(exs[key]['baseline'], roi[1][key]['baseline'])
  assert rep['counts'] == roi[2]['counts']
  assert sorted(map(json.dumps, rep['skips'])) == sorted(map(json.dumps, roi[2]['skips']))


def test_tfds_build_cli(trees, roi, tmp_path):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true', TFDS_CBIS_WORKERS='1')
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  done = subprocess.run(
      [tfds_cli, 'build', 'cbis_ddsm', '--imports', 'tfds_cbis', '--config', 'roi150',
       '--manual_dir', str(trees['nbia']), '--data_dir', str(tmp_path)],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  rep = json.loads(
      (tmp_path / 'cbis_ddsm' / 'roi150' / str(builder_lib.Builder.VERSION)
       / build_report.REPORT_NAME).read_text())
  assert rep['examples'] == roi[2]['examples']  # the NBIA tree through the CLI = classic


def test_parallel_build_from_a_plain_script(trees, tmp_path):
  """Worker processes must not re-run the caller's script (no `__main__` guard here)."""
  script = tmp_path / 'build.py'
  script.write_text(
      'import tensorflow_datasets as tfds\n'
      'from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as b\n'
      f'builder = b.Builder(config="roi150", data_dir={str(tmp_path / "d")!r}, num_workers=2)\n'
      'builder.download_and_prepare(download_config=tfds.download.DownloadConfig(\n'
      f'    manual_dir={str(trees["classic"])!r}, try_download_gcs=False))\n'
      'print("BUILT", builder.info.splits["train"].num_examples)\n')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.count('BUILT') == 1


def test_the_printed_report_path_is_the_final_one(tmp_path, monkeypatch):
  dummy = os.path.join(os.path.dirname(builder_lib.__file__), 'dummy_data')
  # The path log_summary prints (read here, not from the log: absl's handler may not
  # propagate records to pytest's capture, depending on which tests ran before).
  logged, real = [], build_report.log_summary
  monkeypatch.setattr(build_report, 'log_summary',
                      lambda report, path: logged.append(path) or real(report, path))
  builder = build(dummy, tmp_path / 'data')
  (path,) = logged
  assert path == os.path.join(builder.data_dir, build_report.REPORT_NAME)
  assert 'incomplete' not in path and os.path.exists(path)
