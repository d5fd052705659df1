"""Run plots: PNG output and metrics.jsonl parsing."""

import json
import math

import numpy as np
from PIL import Image
import pytest

from mammo_jax import plots

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _check_png(path, min_size=(300, 300)):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE
  with Image.open(path) as image:
    image.verify()
  with Image.open(path) as image:
    assert image.format == 'PNG'
    assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
    return image.size


def _records(epochs=5, best=3):
  records = []
  for epoch in range(1, epochs + 1):
    step = 10 * epoch
    for half in (0, 1):  # Two train records per epoch; the curves average them.
      records.append({'step': step - 5 * (1 - half), 'split': 'train', 'epoch': epoch,
                      'metrics': {'loss': 1.0 / epoch + half * 0.01, 'accuracy': 0.5 + epoch / 20,
                                  'learning_rate': 1e-3}})
    records.append({'step': step, 'split': 'validation', 'epoch': epoch,
                    'metrics': {'loss': abs(epoch - best) + 0.5, 'accuracy': 0.6, 'auc': math.nan,
                                'precision': {'a': 0.5, 'b': 0.5},
                                'confusion_matrix': [[1, 2], [3, 4]]}})
  records.append({'step': 10 * epochs, 'split': 'test', 'epoch': epochs,
                  'metrics': {'loss': 0.7, 'accuracy': 0.7}})
  return records


def _write_jsonl(path, records):
  with open(path, 'w') as f:
    for record in records:
      f.write(json.dumps(record) + '\n')


def test_read_metrics_keeps_nan_and_skips_a_truncated_last_line(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  records = _records()
  _write_jsonl(path, records)
  with open(path, 'a') as f:
    f.write('\n{"step": 60, "split": "train", "metr')  # Killed mid-write.
  read = plots.read_metrics(path)
  assert len(read) == len(records)
  assert read[-1] == records[-1]
  assert math.isnan(read[2]['metrics']['auc'])


def test_read_metrics_skips_a_fragment_left_mid_file_by_a_resumed_run(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train", "metrics": {"loss": 1.0}}\n'
                  '{"step": 2, "spl{"step": 2, "split": "train", "metrics": {"loss": 0.5}}\n'
                  '{"step": 3, "split": "train", "metrics": {"loss": 0.25}}\n')
  assert [r['step'] for r in plots.read_metrics(path)] == [1, 3]


def test_best_epoch_is_the_minimum_validation_loss():
  assert plots.best_epoch(_records(best=3)) == 3
  assert plots.best_epoch(_records(best=1)) == 1
  # Ties go to the earliest; NaN losses are ignored.
  records = [{'step': s, 'split': 'validation', 'epoch': e, 'metrics': {'loss': loss}}
             for s, e, loss in [(10, 1, 0.5), (20, 2, math.nan), (30, 3, 0.2), (40, 4, 0.2)]]
  assert plots.best_epoch(records) == 3
  # Without epochs the axis, and the answer, is the step.
  for record in records:
    del record['epoch']
  assert plots.best_epoch(records) == 30
  assert plots.best_epoch([r for r in _records() if r['split'] != 'validation']) is None
  assert plots.best_epoch([]) is None


def test_learning_curves_write_a_png(tmp_path):
  out = plots.learning_curves(_records(), tmp_path / 'sub' / 'curves.png', title='run')
  assert out == str(tmp_path / 'sub' / 'curves.png')
  width, height = _check_png(out)
  assert abs(width - 1100) <= 2 and abs(height - 400) <= 2


@pytest.mark.parametrize('records', [
    [],
    [r for r in _records() if r['split'] == 'train'],
    [{'step': 1, 'split': 'validation', 'metrics': {'loss': math.nan}}],
    [{'step': 1, 'split': 'train', 'metrics': {'loss': {'nested': 1.0}, 'accuracy': 'x'}}],
], ids=['empty', 'no_validation', 'only_nan', 'non_scalar'])
def test_learning_curves_tolerate_missing_data(tmp_path, records):
  _check_png(plots.learning_curves(records, tmp_path / 'curves.png'))


def test_confusion_matrix_plot(tmp_path):
  out = plots.confusion_matrix_plot([[5, 1], [2, 7]], ('mass', 'calc'), tmp_path / 'c.png',
                                    title='validation')
  _check_png(out)
  # An absent class (empty row) and an empty matrix do not crash.
  _check_png(plots.confusion_matrix_plot(np.array([[3, 1, 0], [0, 0, 0], [1, 0, 2]]),
                                         ('a', 'b', 'c'), tmp_path / 'absent.png'))
  _check_png(plots.confusion_matrix_plot([], ('a', 'b'), tmp_path / 'empty.png'))


def test_roc_plot_binary_multiclass_and_degenerate(tmp_path):
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 50)
  p1 = np.clip(0.3 * labels + 0.7 * rng.random(50), 0, 1)
  _check_png(plots.roc_plot(np.stack([1 - p1, p1], -1), labels, ('mass', 'calc'),
                            tmp_path / 'binary.png', title='binary'))
  probs4 = rng.dirichlet(np.ones(4), 40)
  labels4 = rng.choice([0, 1, 3], 40)  # Class 2 absent.
  _check_png(plots.roc_plot(probs4, labels4, 'abcd', tmp_path / 'four.png'))
  _check_png(plots.roc_plot(np.stack([1 - p1, p1], -1), np.ones(50, int), ('mass', 'calc'),
                            tmp_path / 'one_class.png'))
  _check_png(plots.roc_plot(np.zeros((0, 2)), np.zeros(0, int), ('mass', 'calc'),
                            tmp_path / 'empty.png'))


def test_write_run_plots(tmp_path):
  (tmp_path / 'run').mkdir()
  _write_jsonl(tmp_path / 'run' / 'metrics.jsonl', _records())
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(2), 30)
  eval_outputs = {
      'validation': (probs, rng.integers(0, 2, 30)),
      'test': (probs, rng.integers(0, 2, 30), np.arange(30) < 20),  # Padded batch.
      'empty': (np.zeros((0, 2)), np.zeros(0, int)),
  }
  paths = plots.write_run_plots(tmp_path / 'run', None, eval_outputs, ('mass', 'calc'))
  assert paths == [str(tmp_path / 'run' / name) for name in (
      'learning_curves.png', 'confusion_validation.png', 'roc_validation.png',
      'confusion_test.png', 'roc_test.png', 'confusion_empty.png', 'roc_empty.png')]
  for path in paths:
    _check_png(path)
  paths = plots.write_run_plots(tmp_path, None, {}, ('mass', 'calc'))
  assert paths == [str(tmp_path / 'learning_curves.png')]
