"""Calibration: expected calibration error, reliability bins, temperature scaling.

The expected calibration error (ECE) uses the top-class confidence (the largest class
probability) in BINS = 15 equal-width bins over [0, 1] (a confidence of exactly 1 falls in the
last bin): the mean over examples of |accuracy - mean confidence| of their bin, i.e. the bins'
gaps weighted by their share of the examples. Temperature scaling divides the log
probabilities by one temperature T > 0 fitted to minimise the validation negative
log-likelihood; it never changes the predicted class (hence not the accuracy), only the
confidences. Fit it on the validation split only and apply it to the others.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

BINS = 15
_EPS = 1e-12


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per equal-width confidence bin: (count, mean top-class confidence, accuracy); NaN where a
  bin is empty."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  confidence = probs.max(-1)
  correct = (probs.argmax(-1) == labels).astype(np.float64)
  index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
  count = np.bincount(index, minlength=bins).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    mean_confidence = np.bincount(index, confidence, bins) / count
    accuracy = np.bincount(index, correct, bins) / count
  return count, mean_confidence, accuracy


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
  """Expected calibration error of the top-class confidence (NaN without examples)."""
  count, confidence, accuracy = reliability_bins(probs, labels, bins)
  if not count.sum():
    return float('nan')
  used = count > 0
  return float((count[used] * np.abs(accuracy[used] - confidence[used])).sum() / count.sum())


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
  """Mean negative log-likelihood of the true classes."""
  probs = np.asarray(probs, np.float64)
  picked = probs[np.arange(len(probs)), np.asarray(labels)]
  return float(-np.log(np.clip(picked, _EPS, 1.0)).mean())


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
  """softmax(log(probs) / temperature)."""
  logits = np.log(np.maximum(np.asarray(probs, np.float64), _EPS)) / temperature
  logits -= logits.max(-1, keepdims=True)
  exp = np.exp(logits)
  return exp / exp.sum(-1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
  """The temperature in [e^-5, e^5] that minimises the NLL of (probs, labels): the validation
  split's, never the test split's."""
  result = optimize.minimize_scalar(lambda log_t: nll(scale(probs, np.exp(log_t)), labels),
                                    bounds=(-5.0, 5.0), method='bounded',
                                    options={'xatol': 1e-6})
  return float(np.exp(result.x))
