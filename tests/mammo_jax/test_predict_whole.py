"""`mammo_jax.predict` on a whole-image run (configs/whole.py:smoke): probabilities equal the
run's own evaluation of the prepared image, class-activation maps, flip TTA and the CSV."""

import csv
import glob
import os

import numpy as np
import pytest

from mammo_jax import input_pipeline
from mammo_jax import localisation
from mammo_jax import pipeline
from mammo_jax import predict
from mammo_jax import runners
from mammo_jax import train
from mammo_jax import workdir as workdir_lib
from tests.conftest import load_config
from tfds_cbis import dicom
from tfds_cbis import geometry


@pytest.fixture(scope='module')
def whole_run(tmp_path_factory):
  """configs/whole.py:smoke's first stage, its initialised model saved as the best checkpoint."""
  config = dict(pipeline.stage_configs(load_config('whole', 'smoke')))['top']
  workdir = str(tmp_path_factory.mktemp('whole') / 'top')
  predict.write_untrained_run(config, workdir, (288, 224, 1))
  return workdir


def test_whole_run_predicts_as_its_evaluation_with_a_cam(whole_run, tmp_path):
  run = predict.load_run(whole_run)
  assert run.kind == 'whole' and run.input_shape == (288, 224)
  rng = np.random.default_rng(0)
  paths = []
  for k, shape in enumerate(((500, 400), (288, 224))):
    paths.append(str(tmp_path / 'in' / f'{k}.dcm'))
    dicom.write_image(paths[-1], rng.integers(0, 65535, shape, dtype=np.uint16))
  rows, errors = predict.predict(run, paths, str(tmp_path / 'out'), progress=False)
  tta, _ = predict.predict(run, paths, str(tmp_path / 'tta'), flip_tta=True, progress=False)
  assert not errors
  step = train.make_eval_step(run.task, run.config.model.preprocess)  # the run's evaluation
  state = train.TrainState(step=0, apply_fn=run.model.apply, params=run.variables['params'],
                           tx=None, opt_state=None, batch_stats=run.variables.get('batch_stats'))
  for path, row, tta_row in zip(paths, rows, tta):
    image = geometry.resize(dicom.read_image(path), (288, 224), 'bilinear')[None, ..., None]
    out = step(state, {'image': image[None], 'label': np.zeros((1, 1), np.int32)})
    probs = np.asarray(out['probs'])[0, 0]
    np.testing.assert_allclose([row['BENIGN'], row['MALIGNANT']], probs, rtol=1e-5, atol=1e-6)
    record = workdir_lib.read_json(row['heatmap'][:-4] + '.json')
    assert record['heatmap']['kind'] == 'class_activation'
    assert record['heatmap']['shape'] == [9, 7]  # 288x224 over 32: the top's blocks halve 18x14
    mirrored = step(state, {'image': image[:, :, ::-1][None], 'label': np.zeros((1, 1), np.int32)})
    both = (probs + np.asarray(mirrored['probs'])[0, 0]) / 2
    np.testing.assert_allclose([tta_row['BENIGN'], tta_row['MALIGNANT']], both, rtol=1e-5,
                               atol=1e-6)
  with open(tmp_path / 'out' / 'predictions.csv') as f:
    assert next(csv.reader(f)) == ['file', 'BENIGN', 'MALIGNANT', 'heatmap']


def test_whole_run_localisation_scores_are_its_probabilities(whole_run, tmp_path):
  run = predict.load_run(whole_run)
  images = np.random.default_rng(1).integers(0, 65535, (4, 288, 224, 1), dtype=np.uint16)
  masks = np.zeros((4, 288, 224, 1), np.uint8)
  summary = localisation.evaluate(run, images, np.array([0, 1, 0, 1]), masks, list('abcd'),
                                  str(tmp_path), shown=1)
  probs, cams, _ = predict.forward(run, images)
  assert summary['auc'] == localisation.auc(probs[:, 1], np.array([0, 1, 0, 1]))
  assert summary['pointing_game'] == 0.0 and cams.shape == (4, 9, 7)


@pytest.mark.slow  # trains configs/whole.py:smoke on synthetic data (2-3 min on 2 cores)
def test_predict_on_the_test_dicom_files_reproduces_the_runs_test_predictions(tmp_path,
                                                                              data_cache):
  config = load_config('whole', 'smoke')
  config.unlock()
  config.data.cache_dir = data_cache
  runners.run(config, str(tmp_path / 'run'))
  workdir = str(tmp_path / 'run' / 'all')
  stored = workdir_lib.read_predictions(workdir)
  tree = input_pipeline.synthetic_tree(config.data)
  files = {}  # subject -> its full mammogram
  for path in glob.glob(os.path.join(tree, '**', '*full mammogram*', '*.dcm'), recursive=True):
    files[[p for p in path.split(os.sep) if p.startswith(('Calc-', 'Mass-'))][0]] = path
  paths = [files[i] for i in stored['test_ids']]
  rows, errors = predict.predict(predict.load_run(workdir), paths, str(tmp_path / 'out'),
                                 progress=False)
  assert not errors and len(rows) == len(stored['test_ids']) > 3
  np.testing.assert_allclose([[r['BENIGN'], r['MALIGNANT']] for r in rows],
                             stored['test_probs'], rtol=1e-4, atol=1e-6)
  # The run's final evaluation added the per-image AUC and pointing game (localisation.json).
  results, summary = workdir_lib.read_results(workdir), workdir_lib.read_json(
      os.path.join(workdir, localisation.LOCALISATION_JSON))
  assert summary['auc'] == pytest.approx(results['test']['auc'])
  assert summary['auc_flip_tta'] == pytest.approx(results['test']['auc_flip_tta'])
