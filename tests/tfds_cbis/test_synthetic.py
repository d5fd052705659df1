"""Tests for tfds_cbis.synthetic: CSV bytes, both layouts, determinism, quirks, pixels."""

from __future__ import annotations

import collections
import csv
import json
import os
import pathlib
import re

import numpy as np
import pydicom
import pytest
from scipy import ndimage, spatial

from tfds_cbis import cases
from tfds_cbis import dicom
from tfds_cbis import synthetic

SHAPE = (256, 160)
KWARGS = dict(patients=12, seed=3, image_shape=SHAPE)
REAL_CSV_DIR = pathlib.Path(cases.PACKAGED_CSV_DIR)
UID_RE = re.compile(r'^1\.3\.6\.1\.4\.1\.9590\.100\.1\.2\.[1-9]\d{35,38}$')
NBIA_RE = re.compile(
    r'^manifest-\d{13}/CBIS-DDSM/(?P<subject>[^/]+)/'
    r'(?P<date>\d\d-\d\d-\d{4})-DDSM-(?P<na>NA-)?(?P<study5>[^/-]{5})/'
    r'1\.000000-(?P<desc>full mammogram images|ROI mask images|cropped images)-'
    r'(?P<series5>[^/]{5})/(?P<name>1-[12]\.dcm)$')
CLASSIC_RE = re.compile(r'^CBIS-DDSM/(?P<subject>[^/]+)/(?P<study>[^/]+)/(?P<series>[^/]+)/'
                        r'(?P<name>00000[01]\.dcm)$')


@pytest.fixture(scope='module')
def classic(tmp_path_factory) -> tuple[str, dict]:
  out = str(tmp_path_factory.mktemp('classic'))
  return out, synthetic.generate(out, layout='classic', workers=1, **KWARGS)


@pytest.fixture(scope='module')
def nbia(tmp_path_factory) -> tuple[str, dict]:
  out = str(tmp_path_factory.mktemp('nbia'))
  return out, synthetic.generate(out, layout='nbia', workers=2, **KWARGS)


def _abnormalities(manifest: dict):
  for image in manifest['images']:
    for abn in image['abnormalities']:
      yield image, abn


def _csv_rows(out: str) -> list[tuple[str, dict[str, str]]]:
  rows = []
  for name in synthetic.CSV_FILES.values():
    with open(os.path.join(out, name), newline='') as f:
      rows.extend((name, {k: v.strip() for k, v in r.items()}) for r in csv.DictReader(f))
  return rows


def _dicom_files(out: str) -> list[str]:
  return sorted(str(p.relative_to(out)) for p in pathlib.Path(out).rglob('*.dcm'))


def _read(out: str, rel: str) -> np.ndarray:
  return dicom.read_pixels(os.path.join(out, rel))


# -- CSV bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(synthetic.CSV_FILES.values()))
def test_csv_header_equals_real_file(classic, name):
  out, _ = classic
  with open(os.path.join(out, name), 'rb') as f:
    first = f.readline()
  kind = name.split('_')[0]
  assert first == synthetic.CSV_HEADERS[kind].encode() + b'\r\n'
  real = REAL_CSV_DIR / name
  if not real.exists():
    pytest.skip(f'real CSVs not found at {REAL_CSV_DIR}')
  with open(real, 'rb') as f:
    assert first == f.readline()


@pytest.mark.parametrize('name', sorted(synthetic.CSV_FILES.values()))
def test_csv_quoting_and_line_endings(classic, name):
  """CRLF rows, no BOM, exactly one quoted cell ending in a bare LF, in the right column."""
  out, _ = classic
  data = pathlib.Path(out, name).read_bytes()
  assert not data.startswith(b'\xef\xbb\xbf')
  assert data.endswith(b'\r\n')
  records = data.split(b'\r\n')[1:-1]
  assert records, f'{name} has no rows'
  quoted = 12 if name.startswith('calc') else 13  # cropped path (calc) / ROI path (mass).
  for rec in records:
    assert rec.count(b'"') == 2 and rec.count(b'\n') == 1 and b'\r' not in rec
    cells = rec.split(b',')
    assert len(cells) == 14
    assert cells[quoted].startswith(b'"') and cells[quoted].endswith(b'\n"')
    assert all(b'"' not in c for i, c in enumerate(cells) if i != quoted)


def test_real_csv_quoting_matches_ours():
  """Guards the rule the generator copies: the quoted column is fixed per file type."""
  if not REAL_CSV_DIR.exists():
    pytest.skip(f'real CSVs not found at {REAL_CSV_DIR}')
  for name in synthetic.CSV_FILES.values():
    records = (REAL_CSV_DIR / name).read_bytes().split(b'\r\n')[1:-1]
    quoted = 12 if name.startswith('calc') else 13
    for rec in records[:200]:
      cells = rec.split(b',')
      assert cells[quoted].startswith(b'"') and cells[quoted].endswith(b'\n"'), rec


def test_csv_rows_match_manifest(classic):
  out, manifest = classic
  by_key = {(img['csv_path'], abn['abnormality_id']): (img, abn)
            for img, abn in _abnormalities(manifest)}
  rows = _csv_rows(out)
  assert len(rows) == len(by_key) == manifest['counts']['abnormalities']
  values = collections.defaultdict(set)
  for name, row in rows:
    img, abn = by_key[row['image file path'], int(row['abnormality id'])]
    kind = 'calcification' if name.startswith('calc') else 'mass'
    split = 'train' if 'train' in name else 'test'
    assert (img['abnormality_type'], img['official_split']) == (kind, split)
    assert row['patient_id'] == img['patient_id']
    assert re.fullmatch(r'P_\d{5}', row['patient_id'])
    assert row['left or right breast'] == img['breast']
    assert row['image view'] == img['view']
    assert row['abnormality type'] == kind
    assert row['pathology'] == abn['pathology']
    assert abn['label'] == ('MALIGNANT_' if row['pathology'] == 'MALIGNANT' else 'BENIGN_') + (
        'CALCIFICATION' if kind == 'calcification' else 'MASS')
    density = row.get('breast density') or row.get('breast_density')
    assert density in {'1', '2', '3', '4'}
    assert row['assessment'] in {'0', '1', '2', '3', '4', '5'}
    assert row['subtlety'] in {'1', '2', '3', '4', '5'}
    assert row['cropped image file path'] == abn['csv_crop_path']
    assert row['ROI mask file path'] == abn['csv_roi_path']
    assert row['image file path'].endswith('/000000.dcm')
    assert row['image file path'].split('/')[0] == img['subject']
    for col in ('cropped image file path', 'ROI mask file path'):
      assert row[col].split('/')[0] == f'{img["subject"]}_{abn["abnormality_id"]}'
    if 'two_series' not in abn['quirks']:
      crop_name = '000001.dcm' if kind == 'calcification' else '000000.dcm'
      assert row['cropped image file path'].endswith(crop_name)
    for col in list(row)[6:8]:
      values[col].add(row[col])
  assert 'N/A' in values['calc distribution']
  assert values['mass shape'] - {'N/A'} <= {'ROUND', 'OVAL', 'LOBULATED', 'IRREGULAR',
                                            'ARCHITECTURAL_DISTORTION',
                                            'IRREGULAR-ARCHITECTURAL_DISTORTION'}


def test_abnormality_ids_and_uids(classic):
  _, manifest = classic
  uids = []
  for img in manifest['images']:
    ids = [a['abnormality_id'] for a in img['abnormalities']]
    assert ids == list(range(1, len(ids) + 1))
    uids += [img['study_uid'], img['series_uid']]
    for abn in img['abnormalities']:
      uids += [abn['csv_crop_path'].split('/')[1], abn['csv_roi_path'].split('/')[1]]
  assert all(UID_RE.match(u) for u in uids)
  full_uids = [u for img in manifest['images'] for u in (img['study_uid'], img['series_uid'])]
  assert len(set(full_uids)) == len(full_uids)


# -- Layouts ------------------------------------------------------------------------------


def test_classic_layout_has_every_csv_path(classic):
  out, manifest = classic
  files = set(_dicom_files(out))
  referenced = set()
  for _, row in _csv_rows(out):
    for col in ('image file path', 'cropped image file path', 'ROI mask file path'):
      rel = 'CBIS-DDSM/' + row[col]
      assert rel in files, rel
      referenced.add(rel)
  assert referenced == files  # No stray files.
  assert all(CLASSIC_RE.match(f) for f in files)
  assert manifest['counts']['files'] == len(files)


def test_nbia_layout_names(nbia):
  out, manifest = nbia
  files = _dicom_files(out)
  assert len(files) == manifest['counts']['files']
  matches = [NBIA_RE.match(f) for f in files]
  assert all(matches), [f for f, m in zip(files, matches) if not m]
  assert {m['name'] for m in matches} == {'1-1.dcm', '1-2.dcm'}
  assert any(m['na'] is None for m in matches)  # Some study folders lack 'NA'.
  for rel, m in zip(files, matches):
    header = dicom.read_header(os.path.join(out, rel))
    assert header.patient_id == m['subject']
    assert header.study_uid[-5:] == m['study5'] and header.series_uid[-5:] == m['series5']
    assert header.instance_number == int(m['name'][2])
  for img in manifest['images']:
    assert NBIA_RE.match(img['path'])['desc'] == 'full mammogram images'
    assert img['path'].endswith('/1-1.dcm')


def test_layouts_differ_only_in_paths(classic, nbia):
  (c_out, c_man), (n_out, n_man) = classic, nbia
  for name in synthetic.CSV_FILES.values():
    assert pathlib.Path(c_out, name).read_bytes() == pathlib.Path(n_out, name).read_bytes()

  def strip_paths(man):
    text = json.dumps(man)
    for img, abn in _abnormalities(man):
      for key in ('mask_path', 'crop_path'):
        text = text.replace(abn[key], '')
      text = text.replace(img['path'], '')
    return json.loads(text.replace('"layout": "nbia"', '"layout": "classic"'))

  assert strip_paths(c_man) == strip_paths(n_man)
  for (ci, ca), (ni, na) in zip(_abnormalities(c_man), _abnormalities(n_man)):
    for c_rel, n_rel in ((ci['path'], ni['path']), (ca['mask_path'], na['mask_path']),
                         (ca['crop_path'], na['crop_path'])):
      assert (pathlib.Path(c_out, c_rel).read_bytes()
              == pathlib.Path(n_out, n_rel).read_bytes())


# -- Determinism --------------------------------------------------------------------------


def test_same_seed_is_byte_identical(classic, tmp_path):
  """Also checks that a worker pool gives the same output as inline generation."""
  out, manifest = classic
  again = synthetic.generate(tmp_path, layout='classic', workers=2, **KWARGS)
  assert again == manifest
  assert json.loads(pathlib.Path(tmp_path, synthetic.MANIFEST_NAME).read_text()) == manifest
  files = _dicom_files(out)
  assert files == _dicom_files(tmp_path)
  for rel in files + list(synthetic.CSV_FILES.values()):
    assert pathlib.Path(out, rel).read_bytes() == pathlib.Path(tmp_path, rel).read_bytes(), rel


def test_different_seed_differs(classic, tmp_path):
  out, manifest = classic
  other = synthetic.generate(tmp_path, layout='classic', workers=1,
                             **{**KWARGS, 'seed': KWARGS['seed'] + 1})
  assert other['images'][0]['study_uid'] != manifest['images'][0]['study_uid']
  first = _read(out, manifest['images'][0]['path'])
  second = _read(tmp_path, other['images'][0]['path'])
  assert first.shape != second.shape or not np.array_equal(first, second)


# -- Quirks -------------------------------------------------------------------------------


def test_every_quirk_is_present(classic, nbia):
  for _, manifest in (classic, nbia):
    counts = manifest['counts']['quirks']
    assert manifest['counts']['abnormalities'] >= 8
    for quirk in synthetic.ROW_QUIRKS:
      assert counts[quirk] >= 1, quirk
    assert counts['mask_size_mismatch_aspect_changed'] >= 1
    assert counts['mask_size_mismatch'] > counts['mask_size_mismatch_aspect_changed']
    assert counts['multiple_abnormalities_images'] >= 1
    assert counts['cross_split_patients'] >= 1
    assert counts['study_folder_without_na'] >= 1


def test_swapped_files_hold_the_other_content(classic):
  out, manifest = classic
  for _, abn in _abnormalities(manifest):
    roi_file = 'CBIS-DDSM/' + abn['csv_roi_path']
    crop_file = 'CBIS-DDSM/' + abn['csv_crop_path']
    swapped = 'swapped' in abn['quirks']
    assert (abn['mask_path'], abn['crop_path']) == (
        (crop_file, roi_file) if swapped else (roi_file, crop_file))
    at_roi = _read(out, roi_file)
    assert (len(np.unique(at_roi)) <= 2) != swapped  # The crop is not binary.


def test_two_series(classic):
  out, manifest = classic
  seen = 0
  for _, abn in _abnormalities(manifest):
    crop_parts, roi_parts = abn['csv_crop_path'].split('/'), abn['csv_roi_path'].split('/')
    if 'two_series' in abn['quirks']:
      seen += 1
      assert crop_parts[2] != roi_parts[2] and crop_parts[1] != roi_parts[1]
      assert crop_parts[3] == roi_parts[3] == '000000.dcm'
      assert abn['mask_series_uid'] != abn['crop_series_uid']
      headers = [dicom.read_header(os.path.join(out, abn[k])) for k in ('mask_path',
                                                                          'crop_path')]
      assert {h.series_uid for h in headers} == {crop_parts[2], roi_parts[2]}
    else:
      assert crop_parts[1:3] == roi_parts[1:3]
      assert {crop_parts[3], roi_parts[3]} == {'000000.dcm', '000001.dcm'}
  assert seen


def test_mask_size_mismatch(classic):
  out, manifest = classic
  variants = set()
  for img, abn in _abnormalities(manifest):
    mask = _read(out, abn['mask_path'])
    assert list(mask.shape) == abn['mask_shape']
    if 'mask_size_mismatch' not in abn['quirks']:
      assert 'mask_aspect_ok' not in abn and mask.shape == SHAPE
      continue
    assert mask.shape != SHAPE and set(np.unique(mask)) <= {0, 255}
    ratio = (mask.shape[0] / mask.shape[1]) / (SHAPE[0] / SHAPE[1])
    if abn['mask_aspect_ok']:
      assert abs(ratio - 1) < 0.01
    else:
      assert abs(ratio - 1) > 0.02
    variants.add(abn['mask_aspect_ok'])
  assert variants == {True, False}


def test_blank_series_description(classic):
  out, manifest = classic
  for _, abn in _abnormalities(manifest):
    mask = dicom.read_header(os.path.join(out, abn['mask_path']))
    crop = dicom.read_header(os.path.join(out, abn['crop_path']))
    if 'blank_series_description' in abn['quirks']:
      assert mask.series_description == crop.series_description == ''
    else:
      assert mask.series_description == synthetic.MASK_DESCRIPTION
      assert crop.series_description == synthetic.CROP_DESCRIPTION


def test_multiple_abnormalities_and_cross_split_patients(classic):
  out, manifest = classic
  assert any(len(img['abnormalities']) > 1 for img in manifest['images'])
  splits = collections.defaultdict(set)
  for name, row in _csv_rows(out):
    splits[row['patient_id']].add((name.split('_')[0], 'train' if 'train' in name else 'test'))
  crossing = [p for p, s in splits.items() if len({split for _, split in s}) > 1]
  assert crossing
  for pid in crossing:
    kinds = {kind: split for kind, split in splits[pid]}
    assert kinds['calc'] != kinds['mass']  # Never within one type.


def test_quirk_rate_zero_disables_file_quirks(tmp_path):
  manifest = synthetic.generate(tmp_path, layout='nbia', workers=1, quirk_rate=0.0, **KWARGS)
  counts = manifest['counts']['quirks']
  assert all(counts[q] == 0 for q in synthetic.ROW_QUIRKS)
  assert counts['study_folder_without_na'] == 0


# -- Pixels -------------------------------------------------------------------------------


def test_dicom_headers(classic):
  out, manifest = classic
  for img in manifest['images']:
    full = os.path.join(out, img['path'])
    header = dicom.read_header(full)
    assert header.patient_id == img['subject']
    assert (header.study_uid, header.series_uid) == (img['study_uid'], img['series_uid'])
    assert header.series_description == 'full mammogram images'
    assert header.bits_stored == 16 and header.instance_number == 1
    ds = pydicom.dcmread(full, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == 'MONOCHROME2'
    assert ds.ImageLaterality == img['breast'][0] and ds.ViewPosition == img['view']
    for abn in img['abnormalities']:
      for key, bits in (('mask_path', 8), ('crop_path', 16)):
        h = dicom.read_header(os.path.join(out, abn[key]))
        assert h.patient_id == f'{img["subject"]}_{abn["abnormality_id"]}'
        assert h.bits_stored == bits


def test_masks_crops_and_bboxes(classic):
  out, manifest = classic
  for img, abn in _abnormalities(manifest):
    full = _read(out, img['path'])
    assert full.dtype == np.uint16 and full.shape == SHAPE
    mask = _read(out, abn['mask_path'])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
    y0, x0, y1, x1 = abn['bbox']
    assert 0 <= y0 < y1 <= SHAPE[0] and 0 <= x0 < x1 <= SHAPE[1]
    if mask.shape == SHAPE:
      ys, xs = np.nonzero(mask)
      assert [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1] == abn['bbox']
    crop = _read(out, abn['crop_path'])
    assert crop.dtype == np.uint16 and list(crop.shape) == abn['crop_shape']
    assert crop.shape[0] >= y1 - y0 and crop.shape[1] >= x1 - x0
    assert crop.size < full.size / 4
    assert crop.max() > np.median(full)


def test_images_look_like_mammograms(classic):
  out, manifest = classic
  for img in manifest['images']:
    pixels = _read(out, img['path']).astype(float)
    assert pixels.max() < 0.8 * 65535 and pixels.max() > 0.3 * 65535
    edge = max(2, SHAPE[1] // 20)
    left, right = pixels[:, :edge].mean(), pixels[:, -edge:].mean()
    chest, skin = (left, right) if img['breast'] == 'LEFT' else (right, left)
    assert chest > 10 * skin  # Breast against the chest wall; background on the far side.
    assert np.median(pixels[:, -edge:] if img['breast'] == 'LEFT' else pixels[:, :edge]) < 1500
    for abn in img['abnormalities']:  # Lesions sit inside the breast, off the image edge.
      y0, x0, y1, x1 = abn['bbox']
      assert y0 > 0 and x0 > 0 and y1 < SHAPE[0] and x1 < SHAPE[1]
      assert pixels[y0:y1, x0:x1].min() > 5000


def test_lesions_do_not_overlap(nbia):
  _, manifest = nbia
  for img in manifest['images']:
    boxes = [a['bbox'] for a in img['abnormalities']]
    for i, (ay0, ax0, ay1, ax1) in enumerate(boxes):
      for by0, bx0, by1, bx1 in boxes[i + 1:]:
        assert ay1 <= by0 or by1 <= ay0 or ax1 <= bx0 or bx1 <= ax0


def _box_stats(pixels: np.ndarray, bbox: list[int]) -> tuple[float, float]:
  """(box mean minus the mean of a ring around it, box max minus box median)."""
  y0, x0, y1, x1 = bbox
  h, w = y1 - y0, x1 - x0
  ring = np.zeros(pixels.shape, bool)
  ring[max(y0 - h // 2, 0):y1 + h // 2, max(x0 - w // 2, 0):x1 + w // 2] = True
  ring[y0:y1, x0:x1] = False
  box = pixels[y0:y1, x0:x1]
  return box.mean() - pixels[ring].mean(), box.max() - np.median(box)


def test_lesions_are_visible_and_types_differ(nbia):
  out, manifest = nbia
  stats = collections.defaultdict(list)
  for img, abn in _abnormalities(manifest):
    pixels = _read(out, img['path']).astype(float)
    stats[img['abnormality_type']].append(_box_stats(pixels, abn['bbox']))
  mass, calc = np.array(stats['mass']), np.array(stats['calcification'])
  assert np.mean(mass[:, 0] > 0) >= 0.8  # Masses are denser than their surroundings.
  assert np.median(calc[:, 1]) > 1.5 * np.median(mass[:, 1])  # Calcs are bright specks.


def _solidity(mask: np.ndarray) -> float:
  points = np.argwhere(mask)
  hull = spatial.ConvexHull(points)
  return mask.sum() / (hull.volume + 0.5 * hull.area + 1)  # Pixel area vs centre polygon.


def _speck_count(pixels: np.ndarray, bbox: list[int]) -> int:
  y0, x0, y1, x1 = bbox
  box = pixels[max(y0 - 2, 0):y1 + 2, max(x0 - 2, 0):x1 + 2]
  return ndimage.label(ndimage.white_tophat(box, size=5) > 3000)[1]


def test_difficulty_zero_separates_benign_and_malignant(tmp_path):
  manifest = synthetic.generate(tmp_path, patients=25, seed=1, difficulty=0.0,
                                image_shape=(512, 320), quirk_rate=0.0, workers=2)
  solidity, specks = collections.defaultdict(list), collections.defaultdict(list)
  for img, abn in _abnormalities(manifest):
    malignant = abn['pathology'] == 'MALIGNANT'
    assert abn['morphology_score'] == (1.0 if malignant else 0.0)
    if img['abnormality_type'] == 'mass':
      solidity[malignant].append(_solidity(_read(tmp_path, abn['mask_path']) > 0))
    else:
      pixels = _read(tmp_path, img['path']).astype(float)
      specks[malignant].append(_speck_count(pixels, abn['bbox']))
  assert all(len(d[True]) >= 3 and len(d[False]) >= 3 for d in (solidity, specks))
  # Benign masses are smooth ellipses; malignant ones irregular.
  assert min(solidity[False]) > max(solidity[True])
  # Benign clusters have few coarse specks; malignant ones many fine specks.
  assert np.median(specks[True]) > 1.5 * np.median(specks[False])


# -- API and CLI --------------------------------------------------------------------------


def test_manifest_fields(classic):
  _, manifest = classic
  assert manifest['seed'] == KWARGS['seed'] and manifest['layout'] == 'classic'
  assert manifest['image_shape'] == list(SHAPE) and manifest['patients'] == 12
  for key in ('difficulty', 'quirk_rate', 'counts'):
    assert key in manifest
  for img, abn in _abnormalities(manifest):
    assert img['subject'] == (
        f'{"Calc" if img["abnormality_type"] == "calcification" else "Mass"}-'
        f'{"Training" if img["official_split"] == "train" else "Test"}_'
        f'{img["patient_id"]}_{img["breast"]}_{img["view"]}')
    assert img['shape'] == list(SHAPE)
    assert abn['pathology'] in ('BENIGN', 'BENIGN_WITHOUT_CALLBACK', 'MALIGNANT')
    assert len(abn['bbox']) == 4 and isinstance(abn['quirks'], list)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError):
    synthetic.generate(tmp_path / 'a', layout='flat')
  with pytest.raises(ValueError):
    synthetic.generate(tmp_path / 'b', difficulty=1.5)
  (tmp_path / 'c').mkdir()
  (tmp_path / 'c' / 'old.txt').write_text('x')
  with pytest.raises(FileExistsError):
    synthetic.generate(tmp_path / 'c', patients=1)


def test_cli(tmp_path, capsys):
  out = str(tmp_path / 'cli')
  assert synthetic.main(['--out', out, '--patients', '3', '--layout', 'classic', '--seed', '5',
                         '--height', '256', '--width', '160', '--workers', '1']) == 0
  printed = capsys.readouterr().out
  assert 'train:' in printed and 'Quirks:' in printed
  manifest = json.loads(pathlib.Path(out, synthetic.MANIFEST_NAME).read_text())
  assert manifest['patients'] == 3 and manifest['image_shape'] == [256, 160]
  assert synthetic.main(['--out', out, '--patients', '3']) == 2  # Not empty any more.
