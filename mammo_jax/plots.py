"""PNG plots of a run: learning curves, confusion matrices, ROC curves, reliability diagrams.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot, so
plotting keeps no global state and is safe inside tests and training processes.

The learning curves read the records that a run appends to `metrics.jsonl`, one JSON object a
line: {"step": int, "split": "train" | "validation" | "test", "epoch": int (optional),
"metrics": {name: value}}. Only scalar metrics are plotted; nested values (per-class dicts,
confusion matrices) and non-finite values are skipped.
"""

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

from absl import logging
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from mammo_jax import calibration
from mammo_jax import distributed
from mammo_jax import metrics

_DPI = 100
_SPLIT_COLORS = {'train': 'tab:blue', 'validation': 'tab:orange'}


def read_metrics(path: str | os.PathLike) -> list[dict]:
  """Records of a `metrics.jsonl` file, in file order.

  Blank lines are ignored. A line that is not a JSON object is skipped with a warning: a run
  killed while writing leaves a truncated last line (and, if it is resumed and appends, that
  fragment ends up mid-file).
  """
  with open(path, 'rb') as f:
    lines = f.read().decode('utf-8', errors='replace').splitlines()
  records = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      record = None
    if not isinstance(record, dict):
      logging.warning('%s:%d: skipping a line that is not a JSON object (truncated?)', path,
                      lineno)
      continue
    records.append(record)
  return records


def _scalar(value) -> float | None:
  """`value` as a finite float, or None for nested, non-numeric or non-finite values."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    return None
  value = float(value)
  return value if math.isfinite(value) else None


def _x_key(records: Iterable[dict]) -> str:
  """'epoch' when every train/validation record carries an epoch, else 'step'."""
  curve_records = [r for r in records if r.get('split') in _SPLIT_COLORS]
  if curve_records and all(isinstance(r.get('epoch'), int) for r in curve_records):
    return 'epoch'
  return 'step'


def _series(records: Sequence[dict], split: str, name: str,
            x_key: str) -> tuple[np.ndarray, np.ndarray]:
  """Sorted (x, y) of a scalar metric in one split; values logged at the same x are averaged."""
  values = {}
  for record in records:
    if record.get('split') != split:
      continue
    values_by_name = record.get('metrics')
    if not isinstance(values_by_name, dict):
      continue
    x, y = _scalar(record.get(x_key)), _scalar(values_by_name.get(name))
    if x is not None and y is not None:
      values.setdefault(x, []).append(y)
  xs = np.array(sorted(values), np.float64)
  return xs, np.array([np.mean(values[x]) for x in xs], np.float64)


def best_epoch(records: Sequence[dict], metric: str = 'loss') -> int | None:
  """Epoch (or step, when records lack epochs) of the minimum validation `metric`.

  The axis is the one `learning_curves` uses. Ties go to the earliest; None when no validation
  record has a finite value.
  """
  xs, ys = _series(records, 'validation', metric, _x_key(records))
  if not len(xs):
    return None
  return int(xs[np.argmin(ys)])


def _new_figure(width: float, height: float, ncols: int = 1):
  fig = Figure(figsize=(width, height), dpi=_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Figure, out_path: str | os.PathLike, title: str) -> str:
  """Writes `fig` as a PNG (creating parent directories), releases it, returns the path.
  In a run of several processes, process 0 writes it."""
  out_path = os.fspath(out_path)
  try:
    if title:
      fig.suptitle(title)
    if distributed.is_main():
      os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
      fig.savefig(out_path, format='png', dpi=_DPI)
  finally:
    fig.clear()
  return out_path


def _no_data(ax, message: str = 'no data') -> None:
  ax.text(0.5, 0.5, message, ha='center', va='center', transform=ax.transAxes, color='gray')


def learning_curves(records: Sequence[dict], out_path: str | os.PathLike, title: str = '') -> str:
  """Loss and accuracy of train and validation against epoch (or step), best epoch marked."""
  x_key = _x_key(records)
  best = best_epoch(records)
  fig, axes = _new_figure(11, 4, ncols=2)
  for ax, name in zip(axes, ('loss', 'accuracy')):
    plotted = False
    for split, color in _SPLIT_COLORS.items():
      xs, ys = _series(records, split, name, x_key)
      if len(xs):
        ax.plot(xs, ys, marker='.' if len(xs) < 50 else None, color=color, label=split)
        plotted = True
    if best is not None:
      ax.axvline(best, color='gray', linestyle='--', linewidth=1, label=f'best {x_key} {best}')
    if plotted or best is not None:
      ax.legend(loc='best')
    if not plotted:
      _no_data(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(x_key)
    ax.set_ylabel(name)
    ax.set_title(name)
    ax.grid(True, alpha=0.3)
  return _save(fig, out_path, title)


def confusion_matrix_plot(matrix, class_names: Sequence[str], out_path: str | os.PathLike,
                          title: str = '') -> str:
  """Confusion matrix (rows true, columns predicted): counts and row-normalised percentages."""
  k = len(class_names)
  matrix = np.asarray(matrix, np.int64)
  matrix = matrix.reshape(k, k) if matrix.size else np.zeros((k, k), np.int64)
  rows = matrix.sum(1, keepdims=True)
  with np.errstate(invalid='ignore', divide='ignore'):
    fraction = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
  size = max(4.0, 1.0 + 1.1 * k)
  name_width = 0.08 * max((len(str(n)) for n in class_names), default=0)  # Tick labels.
  fig, (ax,) = _new_figure(size + 1.0 + name_width, size + name_width / 2)
  if k == 0:
    _no_data(ax)
  else:
    image = ax.imshow(np.nan_to_num(fraction), cmap='Blues', vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of true class')
    for i in range(k):
      for j in range(k):
        pct = 'n/a' if np.isnan(fraction[i, j]) else f'{100 * fraction[i, j]:.1f}%'
        dark = not np.isnan(fraction[i, j]) and fraction[i, j] > 0.5
        ax.text(j, i, f'{matrix[i, j]}\n{pct}', ha='center', va='center',
                color='white' if dark else 'black')
    ax.set_xticks(range(k), class_names, rotation=30 if k > 2 else 0)
    ax.set_yticks(range(k), class_names)
  ax.set_xlabel('predicted label')
  ax.set_ylabel('true label')
  return _save(fig, out_path, title)


def _as_probs(probs) -> np.ndarray:
  """[N, K] probabilities; a 1-D input is taken as P(class 1) of a binary task."""
  probs = np.asarray(probs, np.float64)
  if probs.ndim == 1:
    probs = np.stack([1.0 - probs, probs], axis=-1)
  return probs


def roc_plot(probs, labels, class_names: Sequence[str], out_path: str | os.PathLike,
             title: str = '') -> str:
  """ROC curves with AUC: class 1 vs 0 for binary tasks, one-vs-rest per class otherwise.

  Classes without both positive and negative examples get no curve. Examples with non-finite
  probabilities are left out.
  """
  probs, labels = _as_probs(probs), np.asarray(labels).ravel()
  keep = np.isfinite(probs).all(-1)
  probs, labels = probs[keep], labels[keep]
  k = probs.shape[-1]
  if k == 2:
    curves = [(1, f'{class_names[1]} vs {class_names[0]}')]
  else:
    curves = [(c, f'{class_names[c]} vs rest') for c in range(k)]
  fig, (ax,) = _new_figure(5.5, 5)
  ax.plot([0, 1], [0, 1], color='gray', linestyle=':', linewidth=1)
  drawn = 0
  for c, name in curves:
    is_positive = labels == c
    if is_positive.all() or not is_positive.any():
      continue
    fpr, tpr, _ = metrics.roc_curve(probs[:, c], is_positive)
    auc = metrics.roc_auc(probs[:, c], is_positive)
    ax.plot(fpr, tpr, label=f'{name} (AUC = {auc:.3f})')
    drawn += 1
  if drawn:
    ax.legend(loc='lower right')
  else:
    _no_data(ax, 'ROC undefined: needs positive and negative examples')
  ax.set_xlim(-0.01, 1.01)
  ax.set_ylim(-0.01, 1.01)
  ax.set_aspect('equal')
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.grid(True, alpha=0.3)
  return _save(fig, out_path, title)


def write_run_plots(workdir: str | os.PathLike, records: Sequence[dict] | None,
                    eval_outputs: Mapping[str, tuple], class_names: Sequence[str]) -> list[str]:
  """Writes the learning curves and, per evaluated split, its confusion matrix and ROC.

  Args:
    workdir: run directory; the PNGs go there.
    records: metric records; None reads `workdir/metrics.jsonl` (no curves if it is missing).
    eval_outputs: split -> (probs [N, K], labels [N]) or (probs, labels, mask) where the mask
      marks real (non-padding) examples.
    class_names: the task's K class names.

  Returns:
    The paths written.
  """
  workdir = os.fspath(workdir)
  if records is None:
    jsonl = os.path.join(workdir, 'metrics.jsonl')
    records = read_metrics(jsonl) if os.path.exists(jsonl) else []
  paths = [learning_curves(records, os.path.join(workdir, 'learning_curves.png'),
                           title=os.path.basename(os.path.normpath(workdir)))]
  for split, outputs in eval_outputs.items():
    probs, labels = _as_probs(outputs[0]), np.asarray(outputs[1]).ravel()
    if len(outputs) > 2 and outputs[2] is not None:
      keep = np.asarray(outputs[2]).astype(bool).ravel()
      probs, labels = probs[keep], labels[keep]
    confusion = metrics.confusion_matrix(labels, probs.argmax(-1), len(class_names))
    paths.append(confusion_matrix_plot(confusion, class_names,
                                       os.path.join(workdir, f'confusion_{split}.png'),
                                       title=f'{split} (n={len(labels)})'))
    paths.append(roc_plot(probs, labels, class_names, os.path.join(workdir, f'roc_{split}.png'),
                          title=f'{split} ROC'))
  return paths


def reliability_plot(probs, labels, out_path: str | os.PathLike, title: str = '',
                     bins: int = calibration.BINS) -> str:
  """Reliability diagram: accuracy against top-class confidence per equal-width bin (the gap
  to the diagonal shaded), with the ECE and, below, how many examples each bin holds."""
  probs, labels = _as_probs(probs), np.asarray(labels).ravel()
  count, confidence, accuracy = calibration.reliability_bins(probs, labels, bins)
  edges = np.linspace(0.0, 1.0, bins + 1)
  centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / bins
  fig = Figure(figsize=(5.5, 6.5), dpi=_DPI, layout='constrained')
  FigureCanvasAgg(fig)
  ax, hist = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
  ax.plot([0, 1], [0, 1], color='gray', linestyle=':', linewidth=1, label='perfect calibration')
  used = count > 0
  if used.any():
    ax.bar(centers[used], accuracy[used], width=width, edgecolor='tab:blue', color='tab:blue',
           alpha=0.7, label='accuracy')
    ax.bar(centers[used], confidence[used] - accuracy[used], bottom=accuracy[used],
           width=width, color='tab:red', alpha=0.25, hatch='//', label='gap to confidence')
    ax.legend(loc='upper left', title=f'ECE = {calibration.ece(probs, labels, bins):.3f}')
  else:
    _no_data(ax)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy')
  ax.grid(True, alpha=0.3)
  hist.bar(centers, count, width=width, color='gray')
  hist.set_xlabel(f'top-class confidence ({bins} equal-width bins)')
  hist.set_ylabel('examples')
  return _save(fig, out_path, title)
