"""Evaluator table: config.evaluator -> how a split's predictions become metrics.

Runs (final evaluation and every validation), ensembles (each combination method) and the
report all take their metrics from here, so a new evaluator (per-image AUC for whole
mammograms, confidence intervals, ...) is one entry of EVALUATORS. An evaluator maps host
arrays (class probabilities [N, K], labels [N], the task's class names) to a dict of
JSON-ready metrics; `headline` names its scalar metrics that summaries show first, and the
`*_columns` say which metrics the report's tables show: (metric, label, digits), digits None
for a percentage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from mammo_jax import metrics

DEFAULT = 'classification'


Column = tuple[str, str, int | None]


@dataclasses.dataclass(frozen=True)
class Evaluator:
  name: str
  evaluate: Callable[[np.ndarray, np.ndarray, Sequence[str]], dict]
  headline: tuple[str, ...]
  run_columns: tuple[Column, ...] = ()  # per split, for each trained model
  method_columns: tuple[Column, ...] = ()  # test split, for each ensemble method


def _classification(probs: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> dict:
  return metrics.classification_metrics(probs, labels, class_names=tuple(class_names))


EVALUATORS = {
    'classification': Evaluator(
        'classification', _classification,
        headline=('accuracy', 'balanced_accuracy', 'macro_f1', 'auc'),
        run_columns=(('accuracy', 'acc %', None), ('auc', 'AUC', 3), ('loss', 'loss', 4)),
        method_columns=(('accuracy', 'acc %', None), ('balanced_accuracy', 'balanced acc %',
                                                       None), ('auc', 'AUC', 3))),
}


def get_evaluator(name: str = DEFAULT) -> Evaluator:
  if name not in EVALUATORS:
    raise ValueError(f'unknown evaluator {name!r}; known: {", ".join(sorted(EVALUATORS))}')
  return EVALUATORS[name]


def of_config(config) -> Evaluator:
  """The evaluator a run's config names (config.evaluator; the default when it has none)."""
  return get_evaluator(config.get('evaluator', DEFAULT) or DEFAULT)


def evaluate_decisions(evaluator: Evaluator, pred: np.ndarray, scores: np.ndarray | None,
                       labels: np.ndarray, class_names: Sequence[str]) -> dict:
  """Metrics of hard decisions `pred` (a vote breaks ties its own way), with the threshold-free
  ones (auc, auc_per_class) from `scores` when the rule has them and undefined (NaN)
  otherwise."""
  one_hot = np.eye(len(class_names))[np.asarray(pred)]  # its argmax is pred
  result = evaluator.evaluate(one_hot, labels, class_names)
  scored = evaluator.evaluate(scores, labels, class_names) if scores is not None else {}
  for key in ('auc', 'auc_per_class'):
    if key in result:
      result[key] = scored.get(key, _undefined(result[key]))
  return result


def _undefined(value):
  """NaN in the shape of a threshold-free metric (a number, or a dict of numbers)."""
  return {k: float('nan') for k in value} if isinstance(value, dict) else float('nan')
