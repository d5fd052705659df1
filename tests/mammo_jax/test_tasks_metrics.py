"""Tasks (label maps, losses) and metrics against hand-computed cases."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import metrics
from mammo_jax import tasks

LABELS4 = jnp.array([0, 1, 2, 3])


def test_label_maps_follow_the_study():
  assert tasks.get_task('mass_vs_calc').target(LABELS4).tolist() == [0, 0, 1, 1]
  assert tasks.get_task('benign_vs_malignant').target(LABELS4).tolist() == [0, 1, 0, 1]
  assert tasks.get_task('four_class').target(LABELS4).tolist() == [0, 1, 2, 3]
  with pytest.raises(ValueError, match='unknown task'):
    tasks.get_task('six_class')


def test_losses_equal_the_textbook_formulas():
  binary = tasks.get_task('mass_vs_calc')
  logits = jnp.array([[2.0], [-1.0], [0.5], [0.0]])
  p = 1 / (1 + np.exp(-np.array([2.0, -1.0, 0.5, 0.0])))
  y = np.array([0, 0, 1, 1])
  np.testing.assert_allclose(binary.loss(logits, LABELS4),
                             -(y * np.log(p) + (1 - y) * np.log(1 - p)), rtol=1e-6)
  np.testing.assert_allclose(binary.probabilities(logits)[:, 1], p, rtol=1e-6)
  four = tasks.get_task('four_class')
  logits4 = jnp.log(jnp.array([[0.7, 0.1, 0.1, 0.1]] * 4))
  np.testing.assert_allclose(four.loss(logits4, LABELS4), -np.log([0.7, 0.1, 0.1, 0.1]),
                             rtol=1e-6)


def test_auc_hand_computed_with_ties():
  # positives 0.8, 0.4; negatives 0.4, 0.1: pairs (0.8>0.4, 0.8>0.1, 0.4=0.4, 0.4>0.1) = 3.5/4
  assert metrics.roc_auc(np.array([0.8, 0.4, 0.4, 0.1]), np.array([1, 1, 0, 0])) == 0.875
  assert np.isnan(metrics.roc_auc(np.array([0.1, 0.2]), np.array([1, 1])))


def test_metrics_hand_computed_and_masked_padding_ignored():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7],
                    [0.0, 1.0]])  # the last row is padding
  labels = np.array([0, 1, 1, 0, 0])
  mask = np.array([1, 1, 1, 1, 0])
  m = metrics.classification_metrics(probs, labels, mask, ('MASS', 'CALCIFICATION'))
  assert m['count'] == 4
  assert m['confusion_matrix'] == [[1, 1], [1, 1]]
  assert m['accuracy'] == 0.5 and m['balanced_accuracy'] == 0.5 and m['macro_f1'] == 0.5
  assert m['precision'] == {'MASS': 0.5, 'CALCIFICATION': 0.5}
  assert m['auc'] == 0.75  # positives 0.8, 0.4 vs negatives 0.1, 0.7: 3 of 4 pairs


def test_constant_predictions_give_chance_auc_and_majority_accuracy():
  probs = np.tile([[0.1, 0.2, 0.3, 0.4]], (8, 1))
  labels = np.array([0, 1, 2, 3, 3, 3, 3, 3])
  m = metrics.classification_metrics(probs, labels)
  assert m['accuracy'] == 5 / 8 and m['balanced_accuracy'] == 0.25 and m['auc'] == 0.5


def test_roc_curve_matches_a_hand_computed_case():
  fpr, tpr, thresholds = metrics.roc_curve(np.array([0.1, 0.4, 0.35, 0.8]),
                                           np.array([0, 0, 1, 1]))
  np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
  np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
  np.testing.assert_allclose(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
  # Tied scores enter together: one diagonal segment.
  fpr, tpr, thresholds = metrics.roc_curve(np.full(4, 0.3), np.array([1, 0, 1, 0]))
  np.testing.assert_allclose(fpr, [0, 1])
  np.testing.assert_allclose(tpr, [0, 1])
  assert np.trapezoid(tpr, fpr) == 0.5 == metrics.roc_auc(np.full(4, 0.3), np.array([1, 0, 1, 0]))


@pytest.mark.parametrize('seed', range(5))
def test_trapezoid_auc_equals_mann_whitney_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(5, 200))
  positive = rng.random(n) < 0.4
  positive[:2] = [True, False]
  # Coarse rounding makes many ties, within and across the classes.
  scores = np.round(rng.random(n) * 0.6 + 0.4 * positive, 1)
  fpr, tpr, thresholds = metrics.roc_curve(scores, positive)
  assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1
  assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
  assert len(thresholds) == len(np.unique(scores)) + 1
  assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(scores, positive), abs=1e-12)


def test_roc_curve_with_one_class_is_undefined():
  fpr, tpr, _ = metrics.roc_curve(np.array([0.2, 0.7]), np.array([1, 1]))
  np.testing.assert_allclose(tpr, [0, 0.5, 1])
  assert np.isnan(fpr).all()
  fpr, tpr, thresholds = metrics.roc_curve(np.array([]), np.array([], bool))
  assert thresholds.tolist() == [np.inf]
  assert math.isnan(metrics.roc_auc(np.array([]), np.array([], bool)))


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
  m = metrics.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
  np.testing.assert_array_equal(m, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
