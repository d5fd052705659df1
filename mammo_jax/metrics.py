"""Classification metrics on host arrays, counting only unmasked (real) examples.

Predictions are argmax of the class probabilities (for binary tasks: p > 0.5), not the
study's rounding. ROC AUC is the Mann-Whitney statistic (ties count one half); for more than
two classes it is the macro average of one-vs-rest AUCs over classes present in the labels.
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


def classification_metrics(probs: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                           class_names: tuple[str, ...] | None = None) -> dict:
  """Accuracy, balanced accuracy, macro-F1, per-class precision/recall, confusion, AUC."""
  probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
  if mask is not None:
    keep = np.asarray(mask).astype(bool)
    probs, labels = probs[keep], labels[keep]
  k = probs.shape[-1]
  names = class_names or tuple(str(i) for i in range(k))
  pred = probs.argmax(-1)
  confusion = np.zeros((k, k), np.int64)
  np.add.at(confusion, (labels, pred), 1)
  tp = np.diag(confusion).astype(np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    precision = tp / confusion.sum(0)
    recall = tp / confusion.sum(1)
    f1 = 2 * precision * recall / (precision + recall)
  present = confusion.sum(1) > 0
  if k == 2:
    auc = roc_auc(probs[:, 1], labels == 1)
  else:
    aucs = [roc_auc(probs[:, c], labels == c) for c in range(k) if present[c]]
    auc = float(np.mean(aucs)) if aucs else float('nan')
  return {
      'count': int(len(labels)),
      'accuracy': float((pred == labels).mean()) if len(labels) else float('nan'),
      'balanced_accuracy': float(np.nanmean(recall[present])) if present.any() else float('nan'),
      'macro_f1': float(np.mean(np.nan_to_num(f1[present]))) if present.any() else float('nan'),
      'auc': auc,
      'precision': {n: float(p) for n, p in zip(names, precision)},
      'recall': {n: float(r) for n, r in zip(names, recall)},
      'confusion_matrix': confusion.tolist(),
  }
