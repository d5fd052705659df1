"""Exact evaluation of a split, and a run's final evaluation of its best checkpoint.

Evaluation is padded and masked: the last batch is padded to the batch size, its padding is
masked out on the host, so every example counts exactly once whatever the device count.
Metrics come from the run's evaluator (mammo_jax.evaluators); the final evaluation adds their
patient-bootstrap intervals and the calibration numbers (config.evaluation).
"""

from __future__ import annotations

import os

import numpy as np

from mammo_jax import calibration
from mammo_jax import distributed
from mammo_jax import evaluators
from mammo_jax import input_pipeline
from mammo_jax import localisation
from mammo_jax import parallel
from mammo_jax import plots
from mammo_jax import tasks
from mammo_jax import workdir as workdir_lib


def evaluate(p_eval_step, state, data: dict[str, np.ndarray], batch_size: int,
             task: tasks.Task, evaluator: evaluators.Evaluator | None = None
             ) -> tuple[dict, np.ndarray, np.ndarray]:
  """Exact metrics over every example of `data`; returns (metrics, probs, task labels)."""
  evaluator = evaluator or evaluators.get_evaluator()
  masks = []

  def device_batches():  # the mask stays on the host; the step never needs it
    for batch in input_pipeline.eval_batches(data, batch_size,
                                             parallel.process_rows(batch_size)):
      masks.append(batch.pop('mask'))
      yield batch

  losses, probs = [], []
  for batch in parallel.prefetch(device_batches()):
    out = p_eval_step(state, batch)
    losses.append(parallel.unshard(out['loss']))
    probs.append(parallel.unshard(out['probs']))
  # Each process evaluated its share of every batch; all get every example back, in order.
  loss, probs, mask = parallel.gather_shares(
      (np.concatenate(losses), np.concatenate(probs), np.concatenate(masks)), len(masks))
  loss = loss[mask].astype(np.float64)
  probs = probs[mask]
  labels = np.asarray(task.target(data['label']))  # eval_batches keeps the order
  result = evaluator.evaluate(probs, labels, task.class_names)
  result['loss'] = float(loss.mean())
  return result, probs, labels


def add_uncertainty(config, evaluator: evaluators.Evaluator, results: dict, outputs: dict,
                    ids: dict, class_names) -> None:
  """Adds to each split's metrics the headline metrics' bootstrap intervals (ci95, ...), the
  ECE and NLL, and with config.evaluation.temperature_scaling, `temperature_scaled`: the
  temperature fitted on validation and the ECE, NLL and AUC it gives (accuracy is unchanged)."""
  ci = evaluators.ci_settings(config)
  scaling = bool((config.get('evaluation') or {}).get('temperature_scaling', False))
  temperature = calibration.fit_temperature(*outputs['validation']) if scaling else None
  for split, (probs, labels) in outputs.items():
    values = results[split]
    values.update(evaluators.intervals(evaluator, probs.argmax(-1), probs, labels, ids[split],
                                       len(class_names), *ci))
    values['ece'] = calibration.ece(probs, labels)
    values['nll'] = calibration.nll(probs, labels)
    if temperature is not None:
      scaled = calibration.scale(probs, temperature)
      values['temperature_scaled'] = {
          'temperature': temperature, 'ece': calibration.ece(scaled, labels),
          'nll': calibration.nll(scaled, labels),
          'auc': evaluator.evaluate(scaled, labels, class_names)['auc']}


def add_flip_tta(config, evaluator: evaluators.Evaluator, results: dict, outputs: dict,
                 ids: dict, p_eval_flipped, state, splits: dict, task: tasks.Task) -> None:
  """Adds to each split's metrics `auc_flip_tta`, the AUC of the mean class probabilities of
  each image and its horizontal mirror (Shen's flip test-time augmentation, one flip), and its
  patient-bootstrap interval as ci95['auc_flip_tta'] (same resamples as the other metrics)."""
  ci = evaluators.ci_settings(config)
  for split, (probs, labels) in outputs.items():
    _, flipped, _ = evaluate(p_eval_flipped, state, splits[split], config.eval_batch_size, task,
                             evaluator)
    mean = (probs + flipped) / 2
    values = results[split]
    values['auc_flip_tta'] = evaluator.evaluate(mean, labels, task.class_names)['auc']
    interval = evaluators.intervals(evaluator, mean.argmax(-1), mean, labels, ids[split],
                                    len(task.class_names), *ci).get('ci95', {})
    if 'auc' in interval:
      values.setdefault('ci95', {})['auc_flip_tta'] = interval['auc']


def _write_plots(workdir: str, metrics_path: str, outputs: dict, class_names) -> None:
  plots.write_run_plots(workdir, plots.read_metrics(metrics_path), outputs, class_names)
  for split, (probs, labels) in outputs.items():
    plots.reliability_plot(probs, labels, os.path.join(workdir, f'reliability_{split}.png'),
                           title=f'{split} reliability (n={len(labels)})')


def final_evaluation(config, workdir, ckpt, state, loop, splits, p_eval_step, task, log, *,
                     synthetic: bool, steps_per_epoch: int, param_counts: tuple[int, int],
                     ids: dict[str, np.ndarray],
                     without_baseline: dict[str, int] | None = None,
                     data_provenance: str | None = None, p_eval_flipped=None) -> dict:
  """Evaluates the best checkpoint (config.checkpoint_metric) once on validation and test;
  with `p_eval_flipped` (config.evaluation.flip_tta), on the mirrored images too.

  Writes results.json, the plots, and predictions.npz: per split, the example ids, the
  class probabilities, the task labels and the 4-class labels, for ensembles and composites
  (mammo_jax.ensemble), which combine runs without running their models again. Pair runs
  also record `examples_without_baseline` per split: examples left out of training and of
  every evaluation (their ids are not in predictions.npz either). `data_provenance` is the
  dataset's provenance_id (None for a build that predates provenance). With
  config.evaluation.localisation, the finished run then gets localisation.json and its test
  heatmaps (mammo_jax.localisation.evaluate_run: per-image AUC, pointing game).
  """
  evaluator = evaluators.of_config(config)
  best = ckpt.restore_best(state, loop['best_step'])
  outputs, results = {}, {}
  for split in workdir_lib.SPLITS:
    values, probs, labels = evaluate(p_eval_step, best, splits[split], config.eval_batch_size,
                                     task, evaluator)
    results[split] = values
    outputs[split] = (probs, labels)
  add_uncertainty(config, evaluator, results, outputs, ids, task.class_names)
  if p_eval_flipped is not None:
    add_flip_tta(config, evaluator, results, outputs, ids, p_eval_flipped, best, splits, task)
  log.write(loop['best_step'], 'test', results['test'], epoch=loop['best_epoch'],
            checkpoint='best')
  summary = {
      'task': task.name, 'model': config.model.name, 'synthetic_data': synthetic,
      'data_provenance': data_provenance,
      'best_epoch': loop['best_epoch'], 'best_step': loop['best_step'],
      'epochs_run': loop['epoch'], 'steps_run': int(state.step),
      'steps_per_epoch': steps_per_epoch, 'stop_reason': loop['stop_reason'],
      'trainable_params': param_counts[0], 'total_params': param_counts[1],
      'examples': {s: int(len(d['label'])) for s, d in splits.items()},
      **({} if without_baseline is None else {'examples_without_baseline': without_baseline}),
      **results,
  }
  workdir_lib.write_predictions(workdir, ids, outputs,
                                {s: splits[s]['label'] for s in workdir_lib.SPLITS})
  workdir_lib.write_results(workdir, summary)  # last: marks the run finished
  distributed.on_main(_write_plots, workdir, log.path, outputs, task.class_names)
  if (config.get('evaluation') or {}).get('localisation'):  # reads the finished run's files
    distributed.on_main(localisation.evaluate_run, workdir)
  test_ci = results['test'].get('ci95', {}).get('accuracy')
  print(f'Best checkpoint: epoch {loop["best_epoch"]} (step {loop["best_step"]}); validation '
        f'acc {results["validation"]["accuracy"]:.4f}, test acc '
        f'{results["test"]["accuracy"]:.4f}'
        + (f' (95 % interval {test_ci[0]:.4f}-{test_ci[1]:.4f})' if test_ci else '')
        + f', test AUC {results["test"]["auc"]:.4f}'
        + (' [SYNTHETIC DATA]' if synthetic else ''), flush=True)
  print(f'Results in {os.path.join(workdir, workdir_lib.RESULTS_JSON)}', flush=True)
  return summary
