"""The study's learning-rate range test (docs/REFERENCE_STUDY.md §2.11): `run(config, workdir)`.

For each optimizer in config.lr_range.optimizers, a fresh model (same init, batch order and
augmentation for all: everything derives from config.seed) trains with the LR of epoch e
(0-based) = start_lr x factor^e; an epoch is one pass over the training split in full batches,
as in the training core. The rate is an optax schedule of the update count, so the step
compiles once per optimizer, not once per epoch. A sweep stops at the first epoch whose mean
training loss is above stop_above after an earlier epoch went below stop_below (the study's
callback), at a non-finite loss, or after max_epochs.

Outputs: WORKDIR/<optimizer>/lr_range.jsonl (one object per epoch: epoch, step,
learning_rate, loss (null if not finite), accuracy) and lr_range.png (loss against LR, log
axis); WORKDIR/lr_range.png (every swept optimizer on one figure), WORKDIR/lr_range.json (per
optimizer: the sweep's extent, stop reason, minima, suggestion, and the study's numbers from
config.published) and config.json. A summary table is printed.

Suggested LR: the LR at the minimum of the running median of the epoch losses (a centred
window of smooth_window = 5 epochs, shrunk symmetrically at the ends), divided by
suggest_divisor = 3.
- Why a median: the sweep ends on an epoch whose loss can be a huge spike; a median ignores
  it, and a centred window does not lag (an EMA would push the minimum to higher LRs).
- Why 3, not the common "minimum / 10": applied to the study's logged minima (SGD 0.129,
  RMSprop 2.3e-4, Adam 2.5e-4, Nadam 1.9e-4), /3 gives 4.3e-2, 7.7e-5, 8.3e-5 and 6.3e-5,
  within a factor 1.6 of the LRs the study chose (3e-2, 1e-4, 1e-4, 1e-4); /10 gives 1.3e-2,
  2.3e-5, 2.5e-5 and 1.9e-5, 2.3-5.3x below them and near the 1e-5 that the study's verification
  grid found too low for RMSprop and Adam. Set lr_range.suggest_divisor=10 for the usual rule.
- Also reported, not used: the raw minimum and the steepest descent (the LR of the most
  negative slope of the smoothed loss against log LR, up to its minimum).
- Caveat: like the study's, a sweep is one continuous run, so the loss of epoch e reflects all
  the training before it, not the LR of that epoch alone. A minimum at the last epoch (the
  loss was still falling when the sweep ended) is flagged: the suggestion is then a lower
  bound.

Not supported: resuming. A sweep is short (the stop rule usually ends it long before
max_epochs); re-running the command starts it again and overwrites the workdir's outputs.
Each run's lr_range.json and combined plot cover the optimizers that run swept.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import optax
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mammo_jax import freezing
from mammo_jax import input_pipeline
from mammo_jax import optimizers
from mammo_jax import parallel
from mammo_jax import tasks
from mammo_jax import train
from mammo_jax import workdir as workdir_lib
from tfds_cbis import strict_json

RULE = ('suggested_lr = LR at the minimum of the centred running median of the epoch training '
        'losses (smooth_window epochs) / suggest_divisor')
_COLORS = {'sgd': 'tab:blue', 'rmsprop': 'tab:orange', 'adam': 'tab:green',
           'nadam': 'tab:red'}


def published(config: ml_collections.ConfigDict, name: str) -> dict | None:
  """The study's published sweep of optimizer `name` (config.published: epochs run, minimum
  training loss and its LR, the LR it chose), or None."""
  table = config.get('published')
  return table[name].to_dict() if table and name in table else None


def epoch_schedule(start_lr: float, factor: float, steps_per_epoch: int) -> optax.Schedule:
  """LR of update `count` (0-based): start_lr x factor^epoch, constant within an epoch."""
  return lambda count: start_lr * factor**(count // steps_per_epoch)


def epoch_lr(start_lr: float, factor: float, epoch: int) -> float:
  """The schedule's value in epoch `epoch`, in double precision (what the logs record)."""
  return start_lr * factor**epoch


class StopRule:
  """The study's callback, fed one epoch loss at a time.

  Loss below `below` arms it; once armed, a loss above `above` stops the sweep. A non-finite
  loss stops it at once (Keras would have gone on training NaNs).
  """

  def __init__(self, below: float, above: float):
    self.below, self.above, self.armed = below, above, False

  def update(self, loss: float) -> str | None:
    """The reason to stop after this epoch, or None to go on."""
    if not math.isfinite(loss):
      return f'non-finite training loss ({loss})'
    if self.armed and loss > self.above:
      return f'loss {loss:.4f} > {self.above} after going below {self.below}'
    self.armed = self.armed or loss < self.below
    return None


def stop_epoch(losses: Sequence[float], below: float, above: float) -> int | None:
  """The epoch at which StopRule stops a sweep with these losses, or None."""
  rule = StopRule(below, above)
  for epoch, loss in enumerate(losses):
    if rule.update(loss):
      return epoch
  return None


def running_median(values: Sequence[float], window: int) -> np.ndarray:
  """Centred running median of `window` (odd) values; near the ends the window shrinks
  symmetrically (the first and last values stay as they are), so nothing shifts."""
  values = np.asarray(values, np.float64)
  half, n = max(int(window), 1) // 2, len(values)
  return np.array([np.median(values[i - h:i + h + 1])
                   for i, h in ((i, min(half, i, n - 1 - i)) for i in range(n))])


def suggest(lrs: Sequence[float], losses: Sequence[float], window: int,
            divisor: float) -> dict:
  """The suggestion rule (module docstring) and the numbers around it; None where undefined."""
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  finite = np.isfinite(losses)
  out = dict.fromkeys(('min_loss', 'lr_at_min_loss', 'min_smoothed_loss',
                       'lr_at_min_smoothed_loss', 'steepest_lr', 'suggested_lr'))
  out['minimum_at_end'] = False
  if not finite.any():
    return out
  lrs, losses = lrs[finite], losses[finite]
  smooth = running_median(losses, window)
  i, raw = int(np.argmin(smooth)), int(np.argmin(losses))
  out.update(min_loss=float(losses[raw]), lr_at_min_loss=float(lrs[raw]),
             min_smoothed_loss=float(smooth[i]), lr_at_min_smoothed_loss=float(lrs[i]),
             suggested_lr=float(lrs[i] / divisor), minimum_at_end=i == len(losses) - 1)
  if i >= 1:
    slope = np.gradient(smooth[:i + 1], np.log(lrs[:i + 1]))
    out['steepest_lr'] = float(lrs[int(np.argmin(slope))])
  return out


def _finite_or_none(x: float) -> float | None:
  return x if math.isfinite(x) else None


def sweep(config: ml_collections.ConfigDict, name: str, data: dict[str, np.ndarray],
          task: tasks.Task, outdir: str) -> dict:
  """One optimizer's range test; writes outdir/lr_range.jsonl, returns its summary."""
  cfg = config.lr_range
  start_lr = float(cfg.start_lrs[name])
  steps = input_pipeline.steps_per_epoch(input_pipeline.num_examples(data), config.batch_size)
  model = train.create_model(config, task).clone(dropout=cfg.dropout)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = train.create_train_state(init_rng, config, model, data['image'].shape[1:])
  momentum = config.optimizer.momentum if name == 'sgd' else 0.0
  tx = optimizers.keras_optimizer(name, epoch_schedule(start_lr, cfg.factor, steps),
                                  momentum=momentum)
  tx = freezing.masked_optimizer(tx, state.params, config.model.trainable)
  # Same parameters as create_train_state's, with the scheduled optimizer in place of its own.
  state = train.TrainState.create(apply_fn=state.apply_fn, params=state.params, tx=tx,
                                  batch_stats=state.batch_stats)
  n_params = sum(int(np.size(p)) for p in jax.tree.leaves(state.params))
  p_train_step = train.make_train_step(config, task)
  batches = parallel.prefetch(input_pipeline.train_batches(data, config.batch_size,
                                                           config.seed))
  rule = StopRule(cfg.stop_below, cfg.stop_above)
  os.makedirs(outdir, exist_ok=True)
  records, reason, start = [], None, time.time()
  print(f'{name}: {n_params:,} parameters, {steps} steps per epoch, LR {start_lr:.3g} x '
        f'{cfg.factor}^epoch for up to {cfg.max_epochs} epochs', flush=True)
  with open(os.path.join(outdir, 'lr_range.jsonl'), 'w') as log:
    for epoch in range(cfg.max_epochs):
      step_metrics = []
      for _ in range(steps):  # metrics stay on the device until the epoch ends
        state, metrics = p_train_step(state, next(batches), train_rng)
        step_metrics.append(metrics)
      step_metrics = jax.device_get(step_metrics)
      loss = float(np.mean([m['loss'] for m in step_metrics]))
      accuracy = float(np.mean([m['accuracy'] for m in step_metrics]))
      lr = epoch_lr(start_lr, cfg.factor, epoch)
      records.append({'epoch': epoch, 'step': (epoch + 1) * steps, 'learning_rate': lr,
                      'loss': _finite_or_none(loss), 'accuracy': accuracy})
      log.write(strict_json.dumps(records[-1]) + '\n')
      log.flush()
      print(f'{name} epoch {epoch:>3} lr {lr:.3e} train loss {loss:.4f} acc {accuracy:.4f}',
            flush=True)
      reason = rule.update(loss)
      if reason:
        break
  reason = reason or f'reached max_epochs={cfg.max_epochs}'
  lrs = [r['learning_rate'] for r in records]
  losses = [np.nan if r['loss'] is None else r['loss'] for r in records]
  summary = {'start_lr': start_lr, 'epochs_run': len(records), 'last_lr': lrs[-1],
             'stop_reason': reason, 'steps_per_epoch': steps, 'total_params': n_params,
             'seconds': round(time.time() - start, 1),
             **suggest(lrs, losses, cfg.smooth_window, cfg.suggest_divisor),
             'study': published(config, name)}
  plot_sweeps({name: records}, {name: summary}, cfg,
              os.path.join(outdir, 'lr_range.png'), f'LR range test: {name}')
  return summary


def plot_sweeps(records: dict[str, list[dict]], summaries: dict[str, dict],
                cfg: ml_collections.ConfigDict, out_path: str, title: str) -> str:
  """Training loss against LR (log axis): raw epochs as dots, the running median as a line,
  the suggestion as a dotted vertical line, the stop thresholds as grey dashed lines. Losses
  above max(1, 1.2 x stop_above) are off the chart."""
  fig = Figure(figsize=(8, 5), dpi=100, layout='constrained')
  FigureCanvasAgg(fig)
  ax = fig.subplots()
  single, shown = len(records) == 1, []
  for name, recs in records.items():
    pairs = [(r['learning_rate'], r['loss']) for r in recs if r['loss'] is not None]
    if not pairs:
      continue
    lrs, losses = map(np.array, zip(*pairs))
    shown.extend(losses)
    color = _COLORS.get(name, 'tab:purple')
    suggested = summaries[name].get('suggested_lr')
    label = name if suggested is None else f'{name} (suggested {suggested:.2g})'
    ax.plot(lrs, losses, '.', color=color, alpha=0.4, label='epoch loss' if single else None)
    ax.plot(lrs, running_median(losses, cfg.smooth_window), '-', color=color,
            label=f'running median ({cfg.smooth_window})' if single else label)
    if suggested:
      ax.axvline(suggested, color=color, linestyle=':',
                 label=f'suggested {suggested:.2g}' if single else None)
  for y in (cfg.stop_below, cfg.stop_above):
    ax.axhline(y, color='grey', linestyle='--', linewidth=0.8)
  if shown:  # the final, diverged epoch can be far above the rest; keep the curves readable
    low = min(min(shown), cfg.stop_below)
    high = max(min(max(shown), max(1.0, 1.2 * cfg.stop_above)), cfg.stop_above)
    ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
  ax.set_xscale('log')
  ax.set_xlabel('learning rate')
  ax.set_ylabel('mean training loss per epoch')
  ax.grid(True, which='both', alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend()
  fig.suptitle(title)
  try:
    fig.savefig(out_path, format='png')
  finally:
    fig.clear()
  return out_path


def optimizer_names(config: ml_collections.ConfigDict) -> list[str]:
  names = list(dict.fromkeys(n.strip() for n in config.lr_range.optimizers.split(',')
                             if n.strip()))
  unknown = [n for n in names if n not in optimizers.MAKERS]
  if not names or unknown:
    raise ValueError(f'lr_range.optimizers={config.lr_range.optimizers!r}: give a comma-'
                     f'separated subset of {", ".join(optimizers.MAKERS)}')
  missing = [n for n in names if n not in config.lr_range.start_lrs]
  if missing:
    raise ValueError(f'lr_range.start_lrs has no start LR for {", ".join(missing)}')
  return names


def _at(loss: float | None, lr: float | None) -> str:
  return '-' if loss is None else f'{loss:.3f} ({lr:.2e})'


def summary_table(summaries: dict[str, dict]) -> str:
  """One row per optimizer; '(>=)' marks a suggestion whose minimum was the last epoch."""
  rows = [('optimizer', 'start LR', 'epochs', 'last LR', 'min loss (LR)', 'median min (LR)',
           'suggested', 'study chose', 'stop')]
  for name, s in summaries.items():
    study = s.get('study') or {}
    rows.append((name, f'{s["start_lr"]:.0e}', str(s['epochs_run']), f'{s["last_lr"]:.3e}',
                 _at(s['min_loss'], s['lr_at_min_loss']),
                 _at(s['min_smoothed_loss'], s['lr_at_min_smoothed_loss']),
                 '-' if s['suggested_lr'] is None else
                 f'{s["suggested_lr"]:.2e}' + (' (>=)' if s['minimum_at_end'] else ''),
                 f'{study["chosen_lr"]:.0e}' if study else '-', s['stop_reason']))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
  return '\n'.join('  '.join(c.ljust(w) for c, w in zip(r, widths)) + '  ' + r[-1]
                   for r in rows)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Sweeps every optimizer of config.lr_range.optimizers; returns lr_range.json's content."""
  if jax.process_count() > 1:
    raise ValueError('the LR range test runs as one process; start it without '
                     '--coordinator_address, --num_processes and --process_id')
  names = optimizer_names(config)
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(os.path.join(workdir, workdir_lib.LR_RANGE_JSON)):
    print(f'{workdir} holds an earlier sweep: starting again (no resume)', flush=True)
  task = tasks.get_task(config.task)
  if task.num_outputs != 1:  # the stop thresholds sit around ln 2, a binary chance level
    raise ValueError(f'lr_range needs a binary task (the study\'s is mass_vs_calc), not '
                     f'{task.name}')
  workdir_lib.write_config(config, workdir)
  builder = input_pipeline.prepare_builder(config.data)
  print(input_pipeline.describe(builder), flush=True)
  # The train split of data.protocol (and fold), resized to data.image_size, as training has it.
  data = input_pipeline.load_splits(builder, config.data)[0]['train']
  data.pop('id')  # bytes, not for devices

  summaries, records = {}, {}
  for name in names:
    outdir = os.path.join(workdir, name)
    summaries[name] = sweep(config, name, data, task, outdir)
    with open(os.path.join(outdir, 'lr_range.jsonl')) as f:
      records[name] = [json.loads(line) for line in f]
  plot_sweeps(records, summaries, config.lr_range, os.path.join(workdir, 'lr_range.png'),
              'LR range test: ' + ', '.join(names))
  cfg = config.lr_range
  result = {
      'rule': RULE, 'smooth_window': cfg.smooth_window, 'suggest_divisor': cfg.suggest_divisor,
      'factor': cfg.factor, 'max_epochs': cfg.max_epochs, 'stop_below': cfg.stop_below,
      'stop_above': cfg.stop_above, 'model': config.model.name, 'dropout': cfg.dropout,
      'task': task.name, 'seed': config.seed, 'batch_size': config.batch_size,
      'protocol': config.data.protocol, 'fold': config.data.fold,
      'image_shape': list(data['image'].shape[1:]),
      'train_examples': input_pipeline.num_examples(data),
      'synthetic_data': not config.data.manual_dir, 'optimizers': summaries,
  }
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.LR_RANGE_JSON), result,
                         sort_keys=False)
  print(summary_table(summaries), flush=True)
  if result['synthetic_data']:
    print('[SYNTHETIC DATA: these LRs say nothing about real mammograms]', flush=True)
  print(f'Suggestions ({RULE}) in {os.path.join(workdir, workdir_lib.LR_RANGE_JSON)}',
        flush=True)
  return result
