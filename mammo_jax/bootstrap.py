"""Patient-level percentile bootstrap: 95 % intervals of metrics, and of paired differences.

A patient contributes several examples (both views of a breast, several abnormalities, a
lesion's patches), which are not independent; so a resample draws patients with replacement,
as many as there are, and takes all of each drawn patient's examples. A resample is a row of
example weights (how often each example was drawn), and the metrics are computed for every row
at once as weighted counts, which equal the metrics of the materialised resample
(mammo_jax.metrics's definitions: argmax predictions, balanced accuracy and macro-F1 over the
classes present in the labels, Mann-Whitney AUC, macro one-vs-rest for more than two classes).
The interval is the 2.5th and 97.5th percentile of the resampled values (numpy's linear
interpolation). A resample whose labels hold one class has no AUC: it is left out of the AUC's
percentiles and counted (`ci_auc_skipped`). Resamples depend on the patients and the seed
only, so two models resampled with one seed on the same examples are paired (mammo_jax.compare:
interval of the difference, paired_p_value). wilson_interval is the binomial interval of a
published accuracy, whose per-example predictions are unknown.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

METHOD = 'patient bootstrap, percentile'
DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0
_PATIENT = re.compile(r'(?<![A-Za-z0-9])P_\d+')


def patient_of(example_id) -> str:
  """The patient of an example id: 'Mass-Test_P_00001_LEFT_CC/abnorm_1' -> 'P_00001'."""
  if isinstance(example_id, bytes):
    example_id = example_id.decode()
  found = _PATIENT.search(str(example_id))
  if not found:
    raise ValueError(f'example id {example_id!r} names no patient (no P_<digits> in it); '
                     f'patient-level intervals need the dataset\'s ids, e.g. '
                     f'\'Mass-Test_P_00001_LEFT_CC/abnorm_1\'')
  return found.group()


def patient_index(ids: Sequence) -> tuple[np.ndarray, int]:
  """([N] index of each example's patient, number of patients)."""
  patients = [patient_of(i) for i in ids]
  _, index = np.unique(np.asarray(patients), return_inverse=True)
  return index.astype(np.int64), int(index.max()) + 1 if len(index) else 0


def counts_to_weights(patient_counts: np.ndarray, groups: np.ndarray) -> np.ndarray:
  """[R, N] example weights from [R, patients] draw counts: an example counts as its patient."""
  return np.asarray(patient_counts)[:, groups].astype(np.float64)


def resampled(metrics_of: Callable[[np.ndarray], dict[str, np.ndarray]], ids: Sequence,
              resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
              max_cells: int = 1 << 22) -> dict[str, np.ndarray]:
  """metrics_of([R, N] example weights) -> {metric: [R]}, over `resamples` patient resamples
  drawn with `seed`, in blocks of at most `max_cells` weights so that memory stays bounded
  (the same resamples whatever the blocks: the patients are drawn at once)."""
  groups, n_patients = patient_index(ids)
  if n_patients == 0:
    raise ValueError('no examples to resample')
  draws = np.random.default_rng(seed).integers(0, n_patients, (resamples, n_patients))
  counts = _row_bincount(draws, np.ones(draws.shape), n_patients)
  rows = max(1, max_cells // len(groups))
  blocks = [metrics_of(counts_to_weights(counts[i:i + rows], groups))
            for i in range(0, resamples, rows)]
  return {name: np.concatenate([b[name] for b in blocks]) for name in blocks[0]}


def _row_bincount(index: np.ndarray, weights: np.ndarray, n: int) -> np.ndarray:
  """[R, n] sums of `weights` [R, M] by `index` [R, M] (values < n), row by row."""
  rows = index.shape[0]
  flat = (index + n * np.arange(rows)[:, None]).ravel()
  return np.bincount(flat, weights.ravel(), minlength=rows * n).reshape(rows, n)


def _weighted_auc(weights: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """[R] Mann-Whitney AUC of each weighted resample (ties count one half); NaN without both
  classes."""
  _, group = np.unique(scores, return_inverse=True)  # examples of equal score share a group
  n_groups = int(group.max()) + 1
  neg_w = weights[:, ~positive]
  per_group = _row_bincount(np.broadcast_to(group[~positive], neg_w.shape), neg_w, n_groups)
  below = np.cumsum(per_group, 1) - per_group  # negative weight strictly below each group
  wins = below + 0.5 * per_group  # ties count one half
  pos_g = group[positive]
  pos_w = weights[:, positive]
  total_pos, total_neg = pos_w.sum(1), neg_w.sum(1)
  with np.errstate(invalid='ignore', divide='ignore'):
    auc = (pos_w * wins[:, pos_g]).sum(1) / (total_pos * total_neg)
  return np.where((total_pos > 0) & (total_neg > 0), auc, np.nan)


def classification_samples(weights: np.ndarray, pred: np.ndarray, scores: np.ndarray | None,
                           labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
  """Each resample's (row of `weights`) accuracy, balanced accuracy, macro-F1 and AUC ([R]
  each; AUC from `scores` [N, k], NaN where they are None or one class is present)."""
  weights = np.asarray(weights, np.float64)
  pred, labels = np.asarray(pred), np.asarray(labels)
  is_label = labels[None, :] == np.arange(k)[:, None]  # [k, N]
  is_pred = pred[None, :] == np.arange(k)[:, None]
  true_n = weights @ is_label.T  # [R, k]
  pred_n = weights @ is_pred.T
  tp = weights @ (is_label & is_pred).T
  present = true_n > 0
  n_present = present.sum(1)
  with np.errstate(invalid='ignore', divide='ignore'):
    recall = np.where(present, tp / true_n, 0.0)
    f1 = np.where(present, 2 * tp / (pred_n + true_n), 0.0)  # 2PR/(P+R), 0 where tp = 0
    out = {
        'accuracy': tp.sum(1) / weights.sum(1),
        'balanced_accuracy': recall.sum(1) / n_present,
        'macro_f1': f1.sum(1) / n_present,
    }
  if scores is None:
    out['auc'] = np.full(len(weights), np.nan)
  elif k == 2:
    out['auc'] = _weighted_auc(weights, np.asarray(scores)[:, 1], labels == 1)
  else:
    per_class = np.stack([_weighted_auc(weights, np.asarray(scores)[:, c], labels == c)
                          for c in range(k)], 1)  # NaN where the class is absent
    with np.errstate(invalid='ignore'):
      macro = np.nansum(per_class, 1) / np.isfinite(per_class).sum(1)
    out['auc'] = np.where(n_present >= 2, macro, np.nan)
  return out


def percentile_interval(values: np.ndarray) -> tuple[list[float] | None, int]:
  """([2.5th, 97.5th percentile] of the finite values (None if there are none), the number of
  non-finite values left out)."""
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  skipped = int(len(values) - len(finite))
  if not len(finite):
    return None, skipped
  lo, hi = np.percentile(finite, [2.5, 97.5])
  return [float(lo), float(hi)], skipped


def summarize(samples: dict[str, np.ndarray], names: Sequence[str]) -> dict:
  """The results.json fields: ci95 per metric, the method, the resample count, AUC skips."""
  ci, skipped = {}, 0
  for name in names:
    ci[name], left_out = percentile_interval(samples[name])
    if name == 'auc':
      skipped = left_out
  return {'ci95': ci, 'ci_method': METHOD, 'ci_resamples': int(len(samples[names[0]])),
          'ci_auc_skipped': skipped}


def wilson_interval(proportion: float, n: int, z: float = 1.959964) -> list[float]:
  """The Wilson score 95 % interval of a binomial proportion observed on n examples (for
  published accuracies, whose per-example predictions are not available)."""
  centre = (proportion + z * z / (2 * n)) / (1 + z * z / n)
  half = z / (1 + z * z / n) * np.sqrt(proportion * (1 - proportion) / n + z * z / (4 * n * n))
  return [float(centre - half), float(centre + half)]


def paired_p_value(differences: np.ndarray, observed: float) -> float | None:
  """Two-sided bootstrap p-value of a paired difference: how often the resampled differences,
  shifted to a null mean of zero, lie at least as far from zero as the observed one
  ((1 + count) / (1 + resamples), never 0). None where nothing is defined."""
  differences = np.asarray(differences, np.float64)
  differences = differences[np.isfinite(differences)]
  if not len(differences) or not np.isfinite(observed):
    return None
  extreme = np.abs(differences - observed) >= abs(observed) - 1e-12
  return float((1 + extreme.sum()) / (1 + len(differences)))
