"""The `cv` and `repeat` runners: one training config trained per fold or per seed, summarised.

`cv` trains member fold_F (F = 0..K-1) with patient fold F of kfoldK as its test split and its
validation split drawn by patient from the other folds (tfds_cbis.splits); `repeat` trains
member seed_S per seed. Configs: mammo_jax.config_lib.repeats (configs/cv.py, configs/repeat.py).
Members train in WORKDIR/fold_F or WORKDIR/seed_S as ensemble members do (ensemble.run_member):
a finished one is reused, an interrupted one resumes, a stage pipeline runs all its stages.

WORKDIR/cv.json (or repeat.json) holds each member's validation and test metrics, their mean
and sample standard deviation per headline metric, and the metrics of the pooled test
predictions: for cv every example once, predicted by the fold that held it out (out-of-fold);
for repeat every seed's predictions of the same test examples together. The pooled predictions
themselves go to WORKDIR/pooled_predictions.npz (POOLED_NPZ: test_ids, test_probs,
test_labels, test_label4 as in predictions.npz, plus test_member). The pooled metrics get
patient-bootstrap intervals (evaluators.intervals), a patient's rows from every member
resampled together.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import ml_collections
import numpy as np

from mammo_jax import distributed
from mammo_jax import ensemble
from mammo_jax import evaluators
from mammo_jax import tasks
from mammo_jax import workdir as workdir_lib
from mammo_jax.config_lib import repeats as repeat_configs
from mammo_jax.metrics import fmt

POOLED_NPZ = 'pooled_predictions.npz'
SUMMARY_JSON = {'cv': 'cv.json', 'repeat': 'repeat.json'}
SPLITS = ('validation', 'test')


def mean_and_sd(values: list) -> dict:
  """Mean and sample standard deviation (ddof 1; undefined for one value) of the finite
  values; `values` as given (None for undefined ones) and how many were finite."""
  finite = [float(v) for v in values if v is not None and np.isfinite(v)]
  return {'mean': float(np.mean(finite)) if finite else None,
          'sd': float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
          'n': len(finite), 'values': values}


def pool_test_predictions(run_dirs: Mapping[str, str], disjoint: bool) -> dict[str, np.ndarray]:
  """The members' test predictions concatenated in member order, with `test_member` naming
  each row's member; `disjoint` (cv) refuses an example predicted by two members."""
  loaded = {name: workdir_lib.read_predictions(d) for name, d in run_dirs.items()}
  task = {a['task'] for a in loaded.values()}
  if len(task) > 1:
    raise ValueError(f'the members have different tasks {sorted(task)}; delete the runs '
                     'trained with another config')
  pooled = {k: np.concatenate([a[k] for a in loaded.values()])
            for k in ('test_ids', 'test_probs', 'test_labels', 'test_label4')}
  pooled['test_member'] = np.concatenate([[name] * len(a['test_ids'])
                                          for name, a in loaded.items()])
  ids, counts = np.unique(pooled['test_ids'], return_counts=True)
  if disjoint and (counts > 1).any():
    raise ValueError(f'{int((counts > 1).sum())} test examples (e.g. {ids[counts > 1][0]}) are '
                     'in the test split of more than one fold; the folds must be disjoint')
  pooled['task'] = task.pop()
  return pooled


def summarise(runner: str, workdir: str, run_dirs: Mapping[str, str],
              trained: Mapping[str, bool], evaluator: evaluators.Evaluator,
              ci: tuple[int, int]) -> dict:
  """cv.json's / repeat.json's content; writes POOLED_NPZ."""
  members, synthetic = {}, False
  for name, d in run_dirs.items():
    results = workdir_lib.read_results(d)
    synthetic |= bool(results['synthetic_data'])
    members[name] = {'run_dir': os.path.relpath(d, workdir), 'trained_now': trained[name],
                     'best_step': results['best_step'],
                     **{s: results[s] for s in SPLITS}}
  names = (*evaluator.headline, 'loss')
  spread = {s: {m: mean_and_sd([members[n][s].get(m) for n in members]) for m in names}
            for s in SPLITS}
  pooled = pool_test_predictions(run_dirs, disjoint=runner == 'cv')
  task = tasks.get_task(pooled.pop('task'))
  distributed.on_main(np.savez, os.path.join(workdir, POOLED_NPZ), **pooled)
  probs, labels = pooled['test_probs'], pooled['test_labels']
  pooled_metrics = evaluator.evaluate(probs, labels, task.class_names)
  # A patient's rows from every member (every seed, for repeat) are resampled together.
  pooled_metrics.update(evaluators.intervals(evaluator, probs.argmax(-1), probs, labels,
                                             pooled['test_ids'], len(task.class_names), *ci))
  return {'runner': runner, 'task': task.name, 'synthetic_data': synthetic,
          'members': members, 'mean_sd': spread,
          'pooled': {'test': pooled_metrics, 'examples': int(len(pooled['test_ids'])),
                     'predictions': POOLED_NPZ,
                     'kind': 'out-of-fold' if runner == 'cv' else 'all seeds'}}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains or reuses every member of a cv or repeat config; writes its summary."""
  runner = config.runner
  os.makedirs(workdir, exist_ok=True)
  workdir_lib.write_config(config, workdir)
  members = repeat_configs.member_configs(config)
  run_dirs, trained = {}, {}
  for name, member in members:
    run_dirs[name], trained[name] = ensemble.run_member(name, member,
                                                        os.path.join(workdir, name))
  summary = summarise(runner, workdir, run_dirs, trained, evaluators.of_config(config),
                      evaluators.ci_settings(config))
  path = os.path.join(workdir, SUMMARY_JSON[runner])
  workdir_lib.write_json(path, summary)
  _print_table(summary)
  print(f'{runner} summary in {path}; pooled test predictions in '
        f'{os.path.join(workdir, POOLED_NPZ)}', flush=True)
  return summary


def _print_table(summary: dict) -> None:
  names = [m for m in summary['mean_sd']['test'] if m != 'loss']
  print(f'{"member":<16}' + ''.join(f'{m:>20}' for m in names))
  for name, member in summary['members'].items():
    print(f'{name:<16}' + ''.join(f'{fmt(member["test"].get(m)):>20}' for m in names))
  spread = summary['mean_sd']['test']
  print(f'{"mean ± SD":<16}' + ''.join(
      f'{fmt(spread[m]["mean"]) + " ± " + fmt(spread[m]["sd"]):>20}' for m in names))
  pooled = summary['pooled']
  print(f'{"pooled":<16}' + ''.join(f'{fmt(pooled["test"].get(m)):>20}' for m in names)
        + f'   ({pooled["kind"]}, {pooled["examples"]} test predictions)')
  if summary['synthetic_data']:
    print('[SYNTHETIC DATA] these numbers say nothing about real mammograms.')
