"""Evaluator table: config.evaluator -> how a split's predictions become metrics.

Runs (final evaluation and every validation), ensembles (each combination method) and the
report all take their metrics from here, so a new evaluator (per-image AUC for whole
mammograms, ...) is one entry of EVALUATORS. An evaluator maps host
arrays (class probabilities [N, K], labels [N], the task's class names) to a dict of
JSON-ready metrics; `headline` names its scalar metrics that summaries show first, and the
`*_columns` say which metrics the report's tables show: (metric, label, digits), digits None
for a percentage. `resampled` (optional) computes the headline metrics for every row of a
[resamples, N] example-weight matrix at once: with it, `intervals` gives them patient-level
bootstrap intervals (mammo_jax.bootstrap) and mammo_jax.compare paired differences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from mammo_jax import bootstrap
from mammo_jax import metrics

DEFAULT = 'classification'


Column = tuple[str, str, int | None]
# (weights [R, N], predictions [N], scores [N, K] or None, labels [N], K) -> metric -> [R].
Resampled = Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, int],
                     dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str
  evaluate: Callable[[np.ndarray, np.ndarray, Sequence[str]], dict]
  headline: tuple[str, ...]
  run_columns: tuple[Column, ...] = ()  # per split, for each trained model
  method_columns: tuple[Column, ...] = ()  # test split, for each ensemble method
  resampled: Resampled | None = None


def _classification(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
  return metrics.classification_metrics(probs, labels, class_names=tuple(class_names))


EVALUATORS = {
    'classification': Evaluator(
        'classification', _classification,
        headline=('accuracy', 'balanced_accuracy', 'macro_f1', 'auc'),
        run_columns=(('accuracy', 'acc %', None), ('auc', 'AUC', 3), ('loss', 'loss', 4)),
        method_columns=(('accuracy', 'acc %', None), ('balanced_accuracy', 'balanced acc %',
                                                       None), ('auc', 'AUC', 3)),
        resampled=bootstrap.classification_samples),
}


def get_evaluator(name: str = DEFAULT) -> Evaluator:
  if name not in EVALUATORS:
    raise ValueError(f'unknown evaluator {name!r}; known: {", ".join(sorted(EVALUATORS))}')
  return EVALUATORS[name]


def of_config(config) -> Evaluator:
  """The evaluator a run's config names (config.evaluator; the default when it has none)."""
  return get_evaluator(config.get('evaluator', DEFAULT) or DEFAULT)


def ci_settings(config) -> tuple[int, int]:
  """(resamples, seed) of a config's bootstrap intervals (config.evaluation; defaults for a
  config that predates it)."""
  settings = config.get('evaluation') or {}
  return (int(settings.get('ci_resamples', bootstrap.DEFAULT_RESAMPLES)),
          int(settings.get('ci_seed', bootstrap.DEFAULT_SEED)))


def intervals(evaluator: Evaluator, pred: np.ndarray, scores: np.ndarray | None,
              labels: np.ndarray, ids: Sequence, k: int, resamples: int, seed: int) -> dict:
  """The evaluator's headline metrics' patient-bootstrap 95 % intervals: {'ci95': {metric:
  [lo, hi]}, 'ci_method', 'ci_resamples', 'ci_auc_skipped'}; {} for an evaluator without
  `resampled`."""
  if evaluator.resampled is None:
    return {}
  pred, labels = np.asarray(pred), np.asarray(labels)
  samples = bootstrap.resampled(lambda w: evaluator.resampled(w, pred, scores, labels, k), ids,
                                resamples, seed)
  return bootstrap.summarize(samples, [m for m in evaluator.headline if m in samples])


def evaluate_decisions(evaluator: Evaluator, pred: np.ndarray, scores: np.ndarray | None,
                       labels: np.ndarray, class_names: Sequence[str],
                       ids: Sequence | None = None, ci: tuple[int, int] | None = None) -> dict:
  """Metrics of hard decisions `pred` (a vote breaks ties its own way), with the threshold-free
  ones (auc, auc_per_class) from `scores` when the rule has them and undefined (NaN)
  otherwise; with the examples' `ids` and `ci` (resamples, seed), their intervals too."""
  one_hot = np.eye(len(class_names))[np.asarray(pred)]  # its argmax is pred
  result = evaluator.evaluate(one_hot, labels, class_names)
  scored = evaluator.evaluate(scores, labels, class_names) if scores is not None else {}
  for key in ('auc', 'auc_per_class'):
    if key in result:
      result[key] = scored.get(key, _undefined(result[key]))
  if ids is not None and ci is not None:
    result.update(intervals(evaluator, pred, scores, labels, ids, len(class_names), *ci))
  return result


def _undefined(value):
  """NaN in the shape of a threshold-free metric (a number, or a dict of numbers)."""
  return {k: float('nan') for k in value} if isinstance(value, dict) else float('nan')
