"""`python -m mammo_jax.predict` end to end on a tiny S10 patch run: the CLI with a bad file among
good ones, the CSV and JSON contents, and the prediction path against the run's own evaluation."""

import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from mammo_jax import heatmaps
from mammo_jax import input_pipeline
from mammo_jax import localisation
from mammo_jax import pipeline
from mammo_jax import predict
from mammo_jax import preprocessing
from mammo_jax import runners
from mammo_jax import workdir as workdir_lib
from tests.conftest import ROOT, load_config
from tfds_cbis import dicom
from tfds_cbis import geometry

FIVE = ('BACKGROUND', 'BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION',
        'MALIGNANT_CALCIFICATION')


def _head_stage(data_cache):
  """The head stage of configs/shen_patch.py:vgg16,smoke (32-px patches, five classes)."""
  stage = dict(pipeline.stage_configs(load_config('shen_patch', 'vgg16,smoke')))['head']
  stage.unlock()
  stage.data.cache_dir = data_cache
  return stage


@pytest.fixture(scope='module')
def patch_run(tmp_path_factory, data_cache):
  """A finished run without training data: the smoke head stage's initialised model saved as
  its best checkpoint (step 0), with the config.json and results.json a run writes."""
  config = _head_stage(data_cache)
  workdir = str(tmp_path_factory.mktemp('predict') / 'head')
  predict.write_untrained_run(config, workdir, (32, 32, 1))
  return workdir


@pytest.fixture(scope='module')
def mammograms(tmp_path_factory):
  """Three synthetic 16-bit mammograms of different sizes (with a bright blob each)."""
  folder = tmp_path_factory.mktemp('dicom')
  rng = np.random.default_rng(0)
  paths = []
  for k, shape in enumerate(((400, 300), (256, 160), (300, 300))):
    pixels = rng.integers(0, 20000, shape).astype(np.uint16)
    pixels[100:140, 60:100] = 60000
    paths.append(str(folder / f'P{k}' / '1-1.dcm'))
    dicom.write_image(paths[-1], pixels, bits_stored=16)
  return paths


def _mammograms(config):
  """The synthetic tree's full-mammogram DICOM files, by subject."""
  tree = input_pipeline.synthetic_tree(config.data)
  found = {}
  for path in sorted(glob.glob(os.path.join(tree, '**', '*.dcm'), recursive=True)):
    if 'full mammogram' in path:
      subject = [p for p in path.split(os.sep) if p.startswith(('Calc-', 'Mass-'))][0]
      found[subject] = path
  return found


@pytest.mark.slow  # builds cbis_ddsm/s10_224 from the synthetic tree and trains (2-3 min)
def test_prepare_gives_the_builds_pixels_and_the_classifier_the_runs_evaluation(tmp_path,
                                                                              data_cache):
  config = _head_stage(data_cache)
  config.num_train_steps, config.eval_batch_size = 2, 32
  workdir = str(tmp_path / 'head')
  runners.run(config, workdir)
  run = predict.load_run(workdir)
  assert run.kind == 'patch' and run.window == 32 and run.input_shape == (165, 128)
  builder = input_pipeline.prepare_builder(config.data)
  test = input_pipeline.load_split(builder, 'test', ('image', 'id', 'box'))
  stored = workdir_lib.read_predictions(workdir)
  files = _mammograms(config)
  checked = 0
  for k in range(0, len(test['id']), 7):
    key = test['id'][k].decode()
    path = files[key.split('/')[0]]
    # predict's resize is the builder's: the test patch is the resized file's box, bit for bit.
    whole = geometry.resize(dicom.read_image(path), (1152, 896), 'bilinear')  # as the build
    y0, x0, y1, x1 = test['box'][k]
    np.testing.assert_array_equal(whole[y0:y1, x0:x1, None], test['image'][k])
    # ... and the run's model on it (resized as the run resized it) is the run's evaluation.
    patch = input_pipeline.resize(whole[None, y0:y1, x0:x1, None], config.data.image_size)
    logits = run.model.apply(run.variables, preprocessing.preprocess(patch, 'shen'))
    i = list(stored['test_ids']).index(key)
    np.testing.assert_allclose(run.task.probabilities(logits)[0], stored['test_probs'][i],
                               rtol=1e-4, atol=1e-6)
    checked += 1
  assert checked >= 3
  # The image-level evaluation on the whole-image test split (cbis_ddsm/whole_1152x896, built
  # from the same synthetic tree) scores each view as predict scores its DICOM file.
  summary = localisation.evaluate_run(workdir)
  whole_data = config.data.copy_and_resolve_references()
  whole_data.name = 'cbis_ddsm/whole_1152x896'
  whole_builder = input_pipeline.prepare_builder(whole_data)
  views = input_pipeline.load_split(whole_builder, 'test', ('label', 'id'))
  assert summary['images'] == len(views['id']) > 3
  rows, errors = predict.predict(run, [files[i.decode()] for i in views['id']],
                                 str(tmp_path / 'out'), progress=False)
  scores = [workdir_lib.read_json(r['heatmap'][:-4] + '.json')['malignant_score'] for r in rows]
  assert not errors and summary['auc'] == pytest.approx(localisation.auc(np.array(scores),
                                                                         views['label']))
  assert os.path.exists(os.path.join(workdir, summary['figures'][0]['png']))


def test_cli_predicts_good_files_names_the_bad_one_and_exits_1(patch_run, mammograms, tmp_path):
  workdir, files = patch_run, mammograms[:2]
  folder = tmp_path / 'in'
  os.makedirs(folder / 'sub')
  (folder / 'sub' / 'notes.dcm').write_text('not a DICOM file')
  dicom.write_image(folder / 'colour.dcm', np.zeros((8, 8), np.uint16), photometric='RGB')
  out = tmp_path / 'out'
  proc = subprocess.run(
      [sys.executable, '-m', 'mammo_jax.predict', f'--workdir={workdir}', f'--out={out}',
       '--flip_tta', *files, str(folder)],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 1, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('mammo_jax.predict: error:')]
  assert len(errors) == 2, proc.stderr[-2000:]
  assert any(f'{folder}/sub/notes.dcm: not a DICOM file' in l for l in errors)
  assert any(f'{folder}/colour.dcm: colour image (RGB' in l for l in errors)
  assert '2 of 4 files predicted' in proc.stdout
  with open(out / 'predictions.csv') as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['file', *FIVE, 'heatmap']
  assert [r['file'] for r in rows] == [os.path.abspath(p) for p in files]
  for row in rows:
    assert os.path.exists(row['heatmap']) and row['heatmap'].endswith('.png')
    record = workdir_lib.read_json(row['heatmap'][:-len('.png')] + '.json')
    probs = record['probabilities']
    assert list(probs) == sorted(FIVE)  # strict JSON sorts keys; the CSV keeps the task order
    assert all(abs(float(row[c]) - probs[c]) < 1e-6 for c in FIVE)
    assert record['run']['config_sha256'] == workdir_lib.run_identity(workdir)['config_sha256']
    assert len(record['run']['weights_sha256']) == 64
    assert record['preprocessing']['resize'] == {
        'shape': [1152, 896], 'method': 'bilinear', 'function': 'tfds_cbis.geometry.resize'}
    assert record['preprocessing']['flip_tta'] is True
    assert record['heatmap']['shape'] == [5, 4]  # 165x128 px, 32-px windows at 32-px steps
    assert record['preprocessing']['model_input_shape'] == [165, 128]  # 1152x896 x 32/224


def test_flip_tta_and_the_maps_agree_with_the_batch_path(patch_run, mammograms, tmp_path):
  run = predict.load_run(patch_run)
  path = mammograms[2]
  rows, errors = predict.predict(run, [path], str(tmp_path / 'a'), progress=False)
  tta, _ = predict.predict(run, [path], str(tmp_path / 'b'), flip_tta=True, progress=False)
  assert not errors
  image = predict.prepare(run, dicom.read_image(path))[None]
  x = preprocessing.preprocess(image, 'shen')
  plain = run.task.probabilities(heatmaps.patch_logit_map(run.model, run.variables, x, 32))
  mirrored = run.task.probabilities(heatmaps.patch_logit_map(run.model, run.variables,
                                                             x[:, :, ::-1], 32))
  malignant = plain[0, ..., 2] + plain[0, ..., 4]
  assert abs(workdir_lib.read_json(rows[0]['heatmap'][:-4] + '.json')['malignant_score']
             - float(malignant.max())) < 1e-5
  for c, name in enumerate(FIVE):
    assert abs(rows[0][name] - float(plain[0, ..., c].max())) < 1e-5
    both = (float(plain[0, ..., c].max()) + float(mirrored[0, ..., c].max())) / 2
    assert abs(tta[0][name] - both) < 1e-5


def test_wrong_workdirs_get_one_clear_line(patch_run, tmp_path):
  workdir = patch_run
  proc = subprocess.run([sys.executable, '-m', 'mammo_jax.predict', f'--workdir={tmp_path}',
                         'x.dcm'], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == (
      f'mammo_jax.predict: error: --workdir={tmp_path} is not a mammo_jax run (no config.json); '
      'give the --workdir a training run wrote')
  with pytest.raises(predict.RunError, match='is not a folder'):
    predict.load_run(str(tmp_path / 'missing'))
  with pytest.raises(predict.RunError, match=r'is not a mammo_jax run \(no config.json\)'):
    predict.load_run(str(tmp_path))
  unfinished = tmp_path / 'unfinished'
  os.makedirs(unfinished)
  with open(os.path.join(workdir, 'config.json')) as f:
    (unfinished / 'config.json').write_text(f.read())
  with pytest.raises(predict.RunError, match=r'holds no finished run \(no results.json\)'):
    predict.load_run(str(unfinished))
  workdir_lib.write_json(str(tmp_path / 'pipeline.json'), {'head': {}, 'top': {}})
  with pytest.raises(predict.RunError, match=r'holds a pipeline; give one of its stages'):
    predict.load_run(str(tmp_path))


def test_patch_runs_standardised_per_patch_are_refused(data_cache, tmp_path):
  # Each patch normalised by its own statistics: a convolutional pass over the whole image
  # would compute something else, so predict says so instead of drawing a wrong map.
  config = _head_stage(data_cache)
  config.model.preprocess = 'standardize'
  workdir = str(tmp_path / 'head')
  predict.write_untrained_run(config, workdir, (32, 32, 1))
  with pytest.raises(predict.RunError, match=r'head: model.preprocess=standardize normalises '
                     r'each patch by its own statistics, .* predict takes patch runs trained '
                     'with shen, caffe or torch preprocessing'):
    predict.load_run(workdir)


def test_files_and_output_names(tmp_path):
  for name in ('a/1-1.dcm', 'a/b/1-1.dcm', 'a/notes.txt', 'a/IMG0001'):
    os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
    (tmp_path / name).write_text('')
  files = predict.find_files([str(tmp_path / 'a'), str(tmp_path / 'x.dcm')])
  assert files == [str(tmp_path / p) for p in ('a/1-1.dcm', 'a/IMG0001', 'a/b/1-1.dcm', 'x.dcm')]
  assert predict.output_names(files[::2]) == ['1-1', 'b__1-1']


def test_localisation_evaluate_writes_the_summary_and_the_extreme_heatmaps(patch_run, tmp_path):
  run = predict.load_run(patch_run)
  rng = np.random.default_rng(1)
  images = np.stack([predict.prepare(run, rng.integers(0, 65535, (300, 240), np.uint16))
                     for _ in range(4)])
  masks = np.ones((4, 165, 128), np.uint8)  # every peak is inside
  labels = np.array([1, 0, 1, 0])
  summary = localisation.evaluate(run, images, labels, masks, ['a/1', 'b', 'c', 'd'],
                                  str(tmp_path), shown=1)
  assert summary['pointing_game'] == 1.0 and summary['malignant_images'] == 2
  _, _, scores = predict.forward(run, images)
  assert summary['auc'] == localisation.auc(scores, labels)
  assert [f['png'] for f in summary['figures']] == [
      f'heatmaps/{["a__1", "b", "c", "d"][k]}.png' for k in (np.argmax(scores), np.argmin(scores))]
  assert workdir_lib.read_json(str(tmp_path / 'localisation.json')) == summary


def test_every_encoding_the_builder_reads_gives_the_same_prediction(patch_run, tmp_path):
  from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless  # pylint: disable=g-import-not-at-top
  run = predict.load_run(patch_run)
  pixels = np.random.default_rng(2).integers(0, 4096, (300, 200)).astype(np.uint16)
  files = {'le.dcm': dict(), 'be.dcm': dict(transfer_syntax=ExplicitVRBigEndian),
           'implicit.dcm': dict(transfer_syntax=ImplicitVRLittleEndian),
           'rle.dcm': dict(transfer_syntax=RLELossless, bits_stored=12),
           'mono1.dcm': dict(photometric='MONOCHROME1', bits_stored=12)}
  for name, kwargs in files.items():
    stored = 4095 - pixels if name == 'mono1.dcm' else pixels
    dicom.write_image(tmp_path / 'in' / name, stored, **kwargs)
  rows, errors = predict.predict(run, [str(tmp_path / 'in' / n) for n in files],
                                 str(tmp_path / 'out'), progress=False)
  assert not errors and len(rows) == 5
  for row in rows[1:]:
    assert [row[c] for c in FIVE] == [rows[0][c] for c in FIVE]
