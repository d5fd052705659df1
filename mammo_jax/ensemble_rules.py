"""Ensemble combination rules (docs/REFERENCE_STUDY.md §2.8-2.10), pure numpy on host arrays.

probs: [members, examples, classes]. `vote`, `average` and the weight grid combine members of
one task; the composite rules turn a mass-vs-calcification member and a benign-vs-malignant
member into a 4-class label (0 benign mass, 1 malignant mass, 2 benign calc, 3 malignant
calc). mammo_jax.ensemble applies them to trained runs' predictions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def vote(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Majority vote of the members' argmax classes; returns (predictions, vote fractions).

  Ties follow the study's `Counter(votes).most_common(1)`: among the classes with the most
  votes, the one voted for by the earliest member wins (M1's vote when three 4-class members
  all disagree). Binary members vote class 1 when p > 0.5, as Keras's predict_classes.
  """
  probs = np.asarray(probs)
  n_members, n, k = probs.shape
  votes = probs.argmax(-1)  # [members, examples]
  counts = np.zeros((n, k), np.int64)
  for member_votes in votes:
    counts[np.arange(n), member_votes] += 1
  top = counts.max(1)
  # Member m's vote is one of the most-voted classes; the first such member decides.
  is_top = counts[np.arange(n)[None, :], votes] == top[None, :]
  first = is_top.argmax(0)
  return votes[first, np.arange(n)], counts / n_members


def average(probs: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
  """Weighted mean of the members' probabilities (equal weights by default)."""
  probs = np.asarray(probs, np.float64)
  w = np.ones(len(probs)) if weights is None else np.asarray(weights, np.float64)
  return np.einsum('m,mnk->nk', w / w.sum(), probs)


def simplex_grid(k: int, step: float = 0.1) -> np.ndarray:
  """[combinations, k] weights: multiples of `step`, >= 0, summing to 1, in the study's order.

  The study's loops: for a, for b, for c over 0, 0.1, ..., 1, d = 1 - a - b - c, skipped
  when negative: 286 combinations for k = 4. The first k - 1 weights vary lexicographically.
  """
  n = int(round(1 / step))
  if k < 1 or n < 1 or abs(n * step - 1) > 1e-9:
    raise ValueError(f'the weight grid needs k >= 1 members and a step dividing 1 '
                     f'(0.1, 0.05, ...); got k={k}, step={step}')
  rows = [(*head, n - sum(head)) for head in itertools.product(range(n + 1), repeat=k - 1)
          if sum(head) <= n]
  return np.asarray(rows, np.float64) / n


def grid_search(probs: np.ndarray, labels: np.ndarray,
                step: float = 0.1) -> tuple[np.ndarray, float, np.ndarray]:
  """Weights of the simplex grid whose weighted sum is most accurate on (probs, labels).

  The first strictly best combination in grid order wins, as in the study. Call it with the
  validation split only. Returns (weights, their accuracy, every combination's accuracy).
  """
  grid = simplex_grid(len(probs), step)
  combined = np.einsum('cm,mnk->cnk', grid, np.asarray(probs, np.float64))
  accuracies = (combined.argmax(-1) == np.asarray(labels)[None, :]).mean(1)
  best = int(np.argmax(accuracies))  # the first maximum
  return grid[best], float(accuracies[best]), accuracies


def composite_threshold(type_probs: np.ndarray, severity_probs: np.ndarray) -> np.ndarray:
  """The study's composite: each binary model thresholded at 0.5 (p > 0.5 is class 1), then
  label = 2 * type + severity (0 benign mass, 1 malignant mass, 2 benign calc, 3 malignant
  calc)."""
  is_calc = np.asarray(type_probs)[:, 1] > 0.5
  is_malignant = np.asarray(severity_probs)[:, 1] > 0.5
  return 2 * is_calc.astype(np.int64) + is_malignant.astype(np.int64)


def composite_product(type_probs: np.ndarray, severity_probs: np.ndarray) -> np.ndarray:
  """[N, 4] probabilities P(type) * P(severity), the two models taken as independent.

  Its argmax equals composite_threshold (the argmax of a product of two distributions is the
  pair of their argmaxes); what it adds is 4-class scores, hence ROC curves and AUC.
  """
  t, s = np.asarray(type_probs, np.float64), np.asarray(severity_probs, np.float64)
  return (t[:, :, None] * s[:, None, :]).reshape(len(t), 4)  # index 2 * type + severity
