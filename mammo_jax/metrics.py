"""Classification metrics on host arrays, counting only unmasked (real) examples.

Predictions are argmax of the class probabilities (for binary tasks: p > 0.5), not the
study's rounding. ROC AUC is the Mann-Whitney statistic (ties count one half); for more than
two classes `auc` is the macro average of the one-vs-rest AUCs over the classes present in the
labels, and `auc_per_class` gives each class's one-vs-rest AUC by name (NaN for a class absent
from the labels, or the only one present).
The one confusion matrix, ROC curve and AUC of the project: plots, ensembles and the
evaluators use these.
"""

import numpy as np


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve; NaN when only one class is present."""
  positive = positive.astype(bool)
  n_pos, n_neg = positive.sum(), (~positive).sum()
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  order = np.argsort(scores, kind='mergesort')
  ranks = np.empty(len(scores), np.float64)
  sorted_scores = scores[order]
  # Average ranks over ties.
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  for start, count in zip(first, counts):
    ranks[order[start:start + count]] = start + (count + 1) / 2
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def fmt(value, digits: int = 4) -> str:
  """A metric for people: 'n/a' where it is undefined (null in a JSON file, NaN, inf)."""
  if value is None or not np.isfinite(value):
    return 'n/a'
  return f'{value:.{digits}f}'


def roc_curve(scores, positive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """ROC points (fpr, tpr, thresholds), from (0, 0) at threshold +inf.

  Point i counts as positive every example with score >= thresholds[i]; examples with equal
  scores enter together, so ties give one diagonal segment and the trapezoidal area equals
  roc_auc (the Mann-Whitney AUC). Rates are NaN when their class has no examples.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(positive).astype(bool).ravel()
  if scores.shape != positive.shape:
    raise ValueError(f'{scores.shape[0]} scores but {positive.shape[0]} labels')
  order = np.argsort(scores, kind='stable')[::-1]
  scores, positive = scores[order], positive[order]
  group_ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else []
  tps = np.r_[0, np.cumsum(positive)[group_ends]].astype(np.float64)
  fps = np.r_[0, np.cumsum(~positive)[group_ends]].astype(np.float64)
  thresholds = np.r_[np.inf, scores[group_ends]]
  n_pos, n_neg = positive.sum(), (~positive).sum()
  tpr = tps / n_pos if n_pos else np.full_like(tps, np.nan)
  fpr = fps / n_neg if n_neg else np.full_like(fps, np.nan)
  return fpr, tpr, thresholds


def confusion_matrix(labels, pred, k: int) -> np.ndarray:
  """[k, k] counts: row = true label, column = predicted label."""
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (np.asarray(labels, np.int64), np.asarray(pred, np.int64)), 1)
  return confusion


def classification_metrics(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                           class_names: tuple[str, ...] | None = None) -> dict:
  """Accuracy, balanced accuracy, macro-F1, per-class precision/recall, confusion, AUCs."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if mask is not None:
    keep = np.asarray(mask).astype(bool)
    probs, labels = probs[keep], labels[keep]
  k = probs.shape[-1]
  names = class_names or tuple(str(i) for i in range(k))
  pred = probs.argmax(-1)
  confusion = confusion_matrix(labels, pred, k)
  tp = np.diag(confusion).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = tp / confusion.sum(0)
    recall = tp / confusion.sum(1)
    f1 = 2 * precision * recall / (precision + recall)
  present = confusion.sum(1) > 0
  per_class = [roc_auc(probs[:, c], labels == c) for c in range(k)]
  if k == 2:
    auc = per_class[1]
  else:
    aucs = [a for a, p in zip(per_class, present) if p]
    auc = float(np.mean(aucs)) if aucs else float('nan')
  return {
      'count': int(len(labels)),
      'accuracy': float((pred == labels).mean()) if len(labels) else float('nan'),
      'balanced_accuracy': float(np.nanmean(recall[present])) if present.any() else float('nan'),
      'macro_f1': float(np.mean(np.nan_to_num(f1[present]))) if present.any() else float('nan'),
      'auc': auc,
      'auc_per_class': dict(zip(names, per_class)),
      'precision': {n: float(p) for n, p in zip(names, precision)},
      'recall': {n: float(r) for n, r in zip(names, recall)},
      'confusion_matrix': confusion.tolist(),
  }
