"""Tasks (label maps, losses) and metrics against hand-computed cases."""

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
    tasks.get_task('five_class')


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
