"""Paired comparison of two models on the same examples.

  python -m mammo_jax.compare RUN_A RUN_B [--split test] [--out F.json]

RUN is one of:
  a run's workdir (results.json), a stage pipeline's stage among them (PIPELINE/STAGE);
  a stage pipeline's workdir (pipeline.json): its last stage, the pipeline's model;
  ENSEMBLE_DIR:METHOD, a method of an ensemble by the name ensemble.json gives it (e.g.
    runs/ens:average:m1+m2+m3), recomputed from its members' predictions with the weights
    ensemble.json recorded; or ENSEMBLE_DIR:MEMBER, one member's model.
The two are aligned by example id (runs evaluated on different examples are refused) and
compared with one set of patient resamples (mammo_jax.bootstrap) applied to both: for
accuracy and AUC (the evaluator's definitions) the difference A - B, its paired percentile 95 %
interval and a two-sided bootstrap p-value (bootstrap.paired_p_value); for accuracy also
McNemar's exact test on the examples that exactly one of the two gets right, for AUC also
DeLong's test (`delong`; it takes examples as independent). `--out` writes
{"accuracy": {"difference", "ci95", "p_value", "mcnemar_p_value", ...},
 "auc": {..., "delong_p_value", "delong_se"}, ...}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence

import numpy as np
from scipy import stats

from mammo_jax import bootstrap
from mammo_jax import evaluators
from mammo_jax import metrics
from mammo_jax import tasks
from mammo_jax import workdir as workdir_lib

METHOD = 'paired patient bootstrap, percentile'


@dataclasses.dataclass(frozen=True)
class Predictions:
  """One model's outputs on one split."""
  name: str
  ids: np.ndarray  # [N] str
  pred: np.ndarray  # [N] predicted classes
  scores: np.ndarray | None  # [N, K] class scores; None for hard decisions only
  labels: np.ndarray  # [N]
  class_names: tuple[str, ...]
  evaluator: evaluators.Evaluator


def _ensemble_predictions(spec: str, directory: str, name: str, split: str) -> Predictions:
  from mammo_jax import ensemble  # pylint: disable=g-import-not-at-top  (imports the models)
  summary = workdir_lib.read_json(os.path.join(directory, workdir_lib.ENSEMBLE_JSON))
  if name in summary['members']:
    return load(os.path.join(directory, summary['members'][name]['run_dir']), split, spec)
  entries = {e['name']: e for e in summary['methods']}
  if name not in entries:
    raise ValueError(f'{spec}: ensemble {directory} has no method or member {name!r}; methods: '
                     f'{", ".join(entries)}; members: {", ".join(summary["members"])}')
  entry = entries[name]
  method = ensemble.Method(entry['rule'], tuple(entry['members']))
  outputs = ensemble.load_outputs(
      {m: os.path.join(directory, summary['members'][m]['run_dir']) for m in method.members})
  weights = None if entry['weights'] is None else np.asarray(entry['weights'])
  pred, scores, labels = ensemble.predict(method, weights, outputs[split])
  task = ensemble.method_task(method, outputs[split].tasks)
  evaluator = evaluators.of_config(workdir_lib.read_config(directory))
  return Predictions(spec, outputs[split].ids, pred, scores, labels, task.class_names, evaluator)


def load(spec: str, split: str = 'test', name: str | None = None) -> Predictions:
  """The predictions of RUN (see the module docstring) on `split`."""
  directory, sep, member = spec.partition(':')
  while sep and not os.path.isdir(directory):  # a ':' inside the folder's name
    head, sep, member = member.partition(':')
    directory += ':' + head
  if sep and os.path.exists(os.path.join(directory, workdir_lib.ENSEMBLE_JSON)):
    return _ensemble_predictions(spec, directory, member, split)
  directory = spec
  pipeline_json = os.path.join(directory, workdir_lib.PIPELINE_JSON)
  if not workdir_lib.is_finished(directory) and os.path.exists(pipeline_json):
    directory = os.path.join(directory, list(workdir_lib.read_json(pipeline_json))[-1])
  if not workdir_lib.is_finished(directory):
    hint = (f'; an ensemble needs a method or member: {directory}:METHOD' if os.path.exists(
        os.path.join(directory, workdir_lib.ENSEMBLE_JSON)) else '')
    raise FileNotFoundError(f'{spec} holds no finished run (no results.json or pipeline.json)'
                            + hint)
  arrays = workdir_lib.read_predictions(directory)
  probs = arrays[f'{split}_probs']
  return Predictions(name or spec, arrays[f'{split}_ids'], probs.argmax(-1), probs,
                     arrays[f'{split}_labels'], tasks.get_task(arrays['task']).class_names,
                     evaluators.of_config(workdir_lib.read_config(directory)))


def align(a: Predictions, b: Predictions, split: str) -> Predictions:
  """b in a's example order; refuses runs on different examples or with different labels."""
  if len(a.ids) != len(b.ids) or set(a.ids) != set(b.ids):
    common = len(set(a.ids) & set(b.ids))
    raise ValueError(f'{a.name} and {b.name} were evaluated on different {split} examples '
                     f'({len(a.ids)} vs {len(b.ids)}, {common} in common); a paired comparison '
                     f'needs two models evaluated on the same dataset')
  index = {i: n for n, i in enumerate(b.ids)}
  order = np.array([index[i] for i in a.ids])
  b = dataclasses.replace(b, ids=b.ids[order], pred=b.pred[order], labels=b.labels[order],
                          scores=None if b.scores is None else b.scores[order])
  if a.class_names != b.class_names or not np.array_equal(a.labels, b.labels):
    raise ValueError(f'{a.name} and {b.name} label the same {split} examples differently '
                     f'(classes {a.class_names} vs {b.class_names}); compare models of one task')
  return b


def mcnemar_p_value(a_right: np.ndarray, b_right: np.ndarray) -> tuple[float, int, int]:
  """McNemar's exact (binomial) two-sided p-value, and the discordant counts (A only right,
  B only right)."""
  only_a = int((a_right & ~b_right).sum())
  only_b = int((~a_right & b_right).sum())
  if only_a + only_b == 0:
    return 1.0, 0, 0
  return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue), only_a, only_b


def _auc_classes(labels: np.ndarray, k: int) -> list[int]:
  """The classes whose one-vs-rest AUCs make the evaluator's AUC: class 1 of two, else every
  class with both positives and negatives (their mean)."""
  if k == 2:
    return [1]
  return [c for c in range(k) if 0 < np.sum(labels == c) < len(labels)]


def _influence(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
  """Per example, its share of the one-vs-rest AUC's deviation (DeLong's structural components
  minus the AUC): (V10 - AUC) / m for each of the m positives, (V01 - AUC) / n for each of the
  n negatives. V10: the share of negatives a positive outranks, V01: the share of positives
  that outrank a negative, ties counting 1/2 (from midranks, as Sun and Xu's fast DeLong)."""
  m, n = int(positive.sum()), int((~positive).sum())
  ranks = stats.rankdata(scores)
  v = np.empty(len(scores))
  v[positive] = (ranks[positive] - stats.rankdata(scores[positive])) / n
  v[~positive] = 1.0 - (ranks[~positive] - stats.rankdata(scores[~positive])) / m
  auc = v[positive].mean()
  return np.where(positive, (v - auc) / m, (v - auc) / n)


def delong(a_scores: np.ndarray, b_scores: np.ndarray, labels: np.ndarray,
           k: int) -> tuple[float, float]:
  """DeLong's test of AUC(A) = AUC(B) on the same examples: (standard error of the difference,
  two-sided p-value). For two classes this is DeLong et al. (1988); for the macro AUC of more,
  the same variance of the mean of the one-vs-rest differences, summed per true class:
  sum over classes y of n_y times the sample variance of the examples' influences. Examples
  count as independent (the patient bootstrap does not assume that)."""
  classes = _auc_classes(labels, k)
  d = np.mean([_influence(a_scores[:, c], labels == c) - _influence(b_scores[:, c], labels == c)
               for c in classes], axis=0)
  var = sum(np.sum(labels == y) * np.var(d[labels == y], ddof=1)
            for y in np.unique(labels) if np.sum(labels == y) > 1)
  difference = np.mean([metrics.roc_auc(a_scores[:, c], labels == c)
                        - metrics.roc_auc(b_scores[:, c], labels == c) for c in classes])
  if var <= 0:  # no spread at all: equal AUCs are not different, others undecided
    return 0.0, 1.0 if difference == 0 else float('nan')
  se = float(np.sqrt(var))
  return se, float(2 * stats.norm.sf(abs(difference) / se))


def compare(a: Predictions, b: Predictions, split: str = 'test',
            resamples: int = bootstrap.DEFAULT_RESAMPLES, seed: int = bootstrap.DEFAULT_SEED
            ) -> dict:
  """A - B on accuracy and AUC, with paired patient-bootstrap intervals and p-values."""
  b = align(a, b, split)
  evaluator = a.evaluator
  if evaluator.resampled is None:
    raise ValueError(f'evaluator {evaluator.name!r} of {a.name} has no resampled metrics; '
                     f'a paired bootstrap needs one (mammo_jax.evaluators)')
  k = len(a.class_names)
  point = [evaluators.evaluate_decisions(evaluator, p.pred, p.scores, p.labels, p.class_names)
           for p in (a, b)]
  # One seed, hence the same patient resamples for both: the comparison is paired.
  samples = [bootstrap.resampled(
      lambda w, p=p: evaluator.resampled(w, p.pred, p.scores, p.labels, k), a.ids, resamples,
      seed) for p in (a, b)]
  out = {'run_a': a.name, 'run_b': b.name, 'split': split, 'examples': int(len(a.ids)),
         'patients': bootstrap.patient_index(a.ids)[1], 'method': METHOD,
         'resamples': resamples, 'seed': seed}
  for metric in ('accuracy', 'auc'):
    difference = point[0][metric] - point[1][metric]
    diffs = samples[0][metric] - samples[1][metric]
    ci, skipped = bootstrap.percentile_interval(diffs)
    out[metric] = {'a': point[0][metric], 'b': point[1][metric], 'difference': difference,
                   'ci95': ci, 'p_value': bootstrap.paired_p_value(diffs, difference),
                   'resamples_skipped': skipped}
  p, only_a, only_b = mcnemar_p_value(a.pred == a.labels, b.pred == b.labels)
  out['accuracy'].update(mcnemar_p_value=p, only_a_right=only_a, only_b_right=only_b)
  if a.scores is not None and b.scores is not None and _auc_classes(a.labels, k):
    se, p = delong(a.scores, b.scores, a.labels, k)
    out['auc'].update(delong_p_value=p, delong_se=se)
  return out


def _num(value, digits=4, sign=False) -> str:
  if value is None or not np.isfinite(value):
    return 'n/a'
  return f'{value:+.{digits}f}' if sign else f'{value:.{digits}f}'


def table(result: dict) -> str:
  """The comparison for people."""
  lines = [f'Paired comparison on the {result["split"]} split: {result["examples"]} examples of '
           f'{result["patients"]} patients ({result["method"]}, {result["resamples"]} '
           f'resamples, seed {result["seed"]})',
           f'  A = {result["run_a"]}', f'  B = {result["run_b"]}',
           f'{"metric":<9} {"A":>7} {"B":>7} {"A - B":>8} {"95 % interval":>19} '
           f'{"p (bootstrap)":>13} {"p (McNemar, DeLong)":>19}']
  for metric in ('accuracy', 'auc'):
    r = result[metric]
    ci = '[' + ', '.join(_num(v, sign=True) for v in r['ci95']) + ']' if r['ci95'] else 'n/a'
    exact = _num(r.get('mcnemar_p_value', r.get('delong_p_value')))
    lines.append(f'{metric:<9} {_num(r["a"]):>7} {_num(r["b"]):>7} '
                 f'{_num(r["difference"], sign=True):>8} {ci:>19} {_num(r["p_value"]):>13} '
                 f'{exact:>19}')
  acc = result['accuracy']
  lines.append(f'McNemar: {acc["only_a_right"]} examples only A gets right, '
               f'{acc["only_b_right"]} only B.')
  if result['auc']['resamples_skipped']:
    lines.append(f'AUC: {result["auc"]["resamples_skipped"]} resamples without a defined AUC '
                 f'difference were left out.')
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m mammo_jax.compare',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('run_a', help='RUN: a run, a pipeline, ENSEMBLE_DIR:METHOD or :MEMBER')
  parser.add_argument('run_b')
  parser.add_argument('--split', default='test', choices=workdir_lib.SPLITS)
  parser.add_argument('--out', help='write the comparison to this JSON file')
  parser.add_argument('--resamples', type=int, default=bootstrap.DEFAULT_RESAMPLES)
  parser.add_argument('--seed', type=int, default=bootstrap.DEFAULT_SEED)
  args = parser.parse_args(argv)
  try:
    a, b = load(args.run_a, args.split), load(args.run_b, args.split)
    result = compare(a, b, args.split, args.resamples, args.seed)
  except (FileNotFoundError, ValueError) as e:
    print(f'mammo_jax.compare: error: {e}', file=sys.stderr, flush=True)
    return 1
  print(table(result), flush=True)
  if args.out:
    workdir_lib.write_json(args.out, result)
    print(f'Written to {args.out}', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
