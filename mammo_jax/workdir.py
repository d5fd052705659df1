"""The workdir contract: what a run leaves in its folder, and the one place that reads it.

A finished run's workdir holds (names below):
  config.json        the resolved config (written when the run starts);
  metrics.jsonl      one JSON object per logged step and split (MetricsLog);
  results.json       the best checkpoint's validation and test metrics (with their 95 %
                     intervals, ci95, and calibration, ece); written last, so its presence
                     marks the run finished;
  predictions.npz    per split: example ids, class probabilities, task and 4-class labels;
  dataset_report.json  what the dataset build kept, skipped and excluded, its
                     `provenance`, and `dataset`, the TFDS name and version the run loaded
                     (cbis_ddsm/roi150/1.1.0); a run on another dataset, or another version
                     of it, is refused (check_dataset);
  init_from.json     the finished run a warm-started run began from (its identity);
  checkpoints/       Orbax checkpoints (mammo_jax.checkpointing), tensorboard/, *.png plots;
  .lock              the running process's pid and start time (mammo_jax.workdir_lock);
  error.log          the traceback of the last failed run (mammo_jax.main).
Stages (mammo_jax.pipeline), ensembles (mammo_jax.ensemble) and the report read runs through
the functions here, never by opening these files themselves.

Every JSON file is standard JSON: metrics that are undefined (an AUC where one class is
absent) are written as null, never NaN or Infinity. In a run of several processes, process 0
alone writes these files (mammo_jax.distributed.on_main); Orbax writes checkpoints/.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from flax import traverse_util
import ml_collections
import numpy as np

from mammo_jax import distributed
import tfds_cbis
from tfds_cbis import provenance as provenance_lib
from tfds_cbis import strict_json

CONFIG_JSON = 'config.json'
METRICS_JSONL = 'metrics.jsonl'
RESULTS_JSON = 'results.json'
PREDICTIONS_NPZ = 'predictions.npz'
DATASET_REPORT_JSON = 'dataset_report.json'
DATASET_KEY = 'dataset'  # in dataset_report.json: the TFDS full name the run loaded
INIT_FROM_JSON = 'init_from.json'
ERROR_LOG = 'error.log'
# Written by the runners that combine runs, in their own workdir:
PIPELINE_JSON = 'pipeline.json'  # stages: each stage's summary
ENSEMBLE_JSON = 'ensemble.json'  # ensembles: members, methods, their metrics
LR_RANGE_JSON = 'lr_range.json'  # the LR range test's suggestions

# Fields that may change between an interrupted run and its resumption.
# num_train_steps is not among them: a capped run validates and stops at the cap.
RESUMABLE_FIELDS = ('log_every_steps', 'checkpoint_every_steps', 'data.num_workers',
                    'data.cache_dir', 'data.data_dir')
# Fields added after runs were first written, left out of fingerprints (with everything
# under them) so that those runs still resume and ensembles still find their members:
# published numbers (read by the report), which weight-file entries are not loaded, the
# evaluator and what evaluation adds (intervals, calibration), where an ensemble's member config
# files are resolved from, and the divergence threshold (it only stops runs, it never changes
# what a finished one computed).
ADDED_FIELDS = ('published', 'model.dont_load', 'evaluator', 'evaluation', 'ensemble.root',
                'divergence_factor')

# Fields added later that do change what a run computes: left out of the fingerprint only
# while they hold these values (what every earlier run used), so earlier runs still resume
# while a run on fold 1 never resumes as fold 2.
DEFAULT_FIELDS = {'data.protocol': 'official', 'data.fold': 0, 'class_balance': 'none',
                  'data.image_size': 0, 'grad_accum_steps': 1, 'checkpoint_metric': 'loss'}

SPLITS = ('validation', 'test')


# ---------------------------------------------------------------------------------------------
# Strict JSON.

def write_json(path: str, obj: Any, **kwargs) -> None:
  """Writes obj as standard JSON (non-finite numbers as null), indented, keys sorted (on
  process 0 of a run of several)."""
  kwargs.setdefault('indent', 1)
  kwargs.setdefault('sort_keys', True)
  distributed.on_main(_write_text, path, strict_json.dumps(obj, **kwargs))


def _write_text(path: str, text: str) -> None:
  with open(path, 'w') as f:
    f.write(text)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


# ---------------------------------------------------------------------------------------------
# Config: fingerprint, same-config check, config.json.

def _excluded(key: str) -> bool:
  return key in RESUMABLE_FIELDS or any(key == f or key.startswith(f + '.')
                                        for f in ADDED_FIELDS)


def config_fingerprint(config_dict: dict) -> dict:
  """The config fields that must not change when a run resumes, flattened (DEFAULT_FIELDS
  at their defaults left out)."""
  flat = traverse_util.flatten_dict(config_dict, sep='.')
  return {k: v for k, v in flat.items()
          if not _excluded(k) and not (k in DEFAULT_FIELDS and v == DEFAULT_FIELDS[k])}


def config_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def config_hash(config: ml_collections.ConfigDict, digits: int = 8) -> str:
  """Hex digest of the config's fingerprint (what names an ensemble member's folder)."""
  fingerprint = json.dumps(config_fingerprint(config_dict(config)), sort_keys=True)
  return hashlib.sha256(fingerprint.encode()).hexdigest()[:digits]


def read_config(workdir: str) -> dict:
  return read_json(os.path.join(workdir, CONFIG_JSON))


def config_differences(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
  """Fingerprint fields that differ from workdir's config.json (None when it has none)."""
  if not os.path.exists(os.path.join(workdir, CONFIG_JSON)):
    return None
  old = config_fingerprint(read_config(workdir))
  new = config_fingerprint(config_dict(config))
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def same_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """True when workdir's run used this config (up to RESUMABLE_FIELDS and ADDED_FIELDS)."""
  return config_differences(config, workdir) == []


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """config.json; a finished run whose fingerprint is unchanged may be given it again, so that
  fields added since (ADDED_FIELDS: the study's published numbers) reach its report."""
  write_json(os.path.join(workdir, CONFIG_JSON), config_dict(config))


def check_and_write_config(config: ml_collections.ConfigDict, workdir: str,
                           resuming: bool) -> None:
  """Refuses to resume a checkpointed run with a different config; writes config.json."""
  diff = config_differences(config, workdir) if resuming else None
  if diff:
    raise ValueError(f'workdir {workdir} holds a run with a different config (fields '
                     f'{", ".join(diff)}); use another --workdir or delete this one')
  write_config(config, workdir)


# ---------------------------------------------------------------------------------------------
# The dataset a run trained on: its build report, with the build's provenance.

def read_dataset_report(workdir: str) -> dict | None:
  path = os.path.join(workdir, DATASET_REPORT_JSON)
  return read_json(path) if os.path.exists(path) else None


def recorded_dataset(workdir: str) -> str | None:
  """The TFDS full name (name/config/version) the run in workdir loaded; None when it recorded
  none (a workdir from before runs recorded it)."""
  return (read_dataset_report(workdir) or {}).get(DATASET_KEY)


def check_dataset(report: dict | None, workdir: str, dataset: str | None = None) -> None:
  """Refuses a workdir whose run used a dataset of another provenance, or another version of
  the dataset (`dataset`: the TFDS full name this run loads), like a config change: a new
  version may split the same patients differently (1.1.0 added the `leaking` split).

  Writes nothing. A workdir or build that predates provenance, or the recorded name, has none
  to compare: accepted.
  """
  before = recorded_dataset(workdir)
  if dataset and before and before != dataset:
    raise ValueError(f'workdir {workdir} holds a run on {before}, not {dataset} (another '
                     'version of the dataset: its splits may differ); use another --workdir '
                     'or delete this one')
  old = provenance_lib.of_report(read_dataset_report(workdir))
  new = provenance_lib.of_report(report)
  if old is None or new is None or old['provenance_id'] == new['provenance_id']:
    return
  raise ValueError(
      f'workdir {workdir} holds a run on another dataset (provenance {old["provenance_id"]}: '
      f'{provenance_lib.describe_source(old["source"])}) than this one (provenance '
      f'{new["provenance_id"]}: {provenance_lib.describe_source(new["source"])}); use another '
      '--workdir or delete this one')


# ---------------------------------------------------------------------------------------------
# A run's state and outputs.

def has_checkpoint(workdir: str) -> bool:
  latest = os.path.join(workdir, 'checkpoints', 'latest')
  return os.path.isdir(latest) and any(n.isdigit() for n in os.listdir(latest))


def is_finished(workdir: str) -> bool:
  """A run is finished once results.json exists (final_evaluation writes it last)."""
  return os.path.exists(os.path.join(workdir, RESULTS_JSON))


def finished_with(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """True when workdir holds a finished run of exactly this config, on this version of the
  dataset (a run on an older version is not reused; running it again refuses the workdir with
  one line, check_dataset)."""
  before = recorded_dataset(workdir)
  if before and before.rsplit('/', 1)[-1] != tfds_cbis.VERSION:
    return False
  return is_finished(workdir) and same_config(config, workdir)


def read_results(workdir: str) -> dict:
  return read_json(os.path.join(workdir, RESULTS_JSON))


def write_results(workdir: str, summary: dict) -> None:
  write_json(os.path.join(workdir, RESULTS_JSON), summary)


def run_identity(workdir: str) -> dict:
  """What identifies a finished run's best checkpoint: its step and its config's fingerprint
  (not results.json's bytes, which a re-evaluation on another device may change)."""
  fingerprint = json.dumps(config_fingerprint(read_config(workdir)), sort_keys=True)
  return {'best_step': read_results(workdir)['best_step'],
          'config_sha256': hashlib.sha256(fingerprint.encode()).hexdigest()}


def write_predictions(workdir: str, ids: dict, outputs: dict, label4: dict) -> None:
  """predictions.npz: per split, ids, class probabilities, task labels and 4-class labels."""
  arrays = {}
  for split, (probs, labels) in outputs.items():
    arrays.update({f'{split}_ids': ids[split], f'{split}_probs': probs,
                   f'{split}_labels': labels, f'{split}_label4': label4[split]})
  distributed.on_main(np.savez, os.path.join(workdir, PREDICTIONS_NPZ), **arrays)


def read_predictions(workdir: str) -> dict[str, np.ndarray]:
  """predictions.npz's arrays plus 'task' (from results.json)."""
  path = os.path.join(workdir, PREDICTIONS_NPZ)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing; the run predates predictions.npz: delete '
                            f'{workdir} to train it again')
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays['task'] = read_results(workdir)['task']
  return arrays


def read_init_from(workdir: str) -> dict | None:
  """The identity of the run this one started from (None when it has no record)."""
  path = os.path.join(workdir, INIT_FROM_JSON)
  return read_json(path) if os.path.exists(path) else None


def write_init_from(workdir: str, source: str) -> None:
  write_json(os.path.join(workdir, INIT_FROM_JSON),
             {'init_from': source, **run_identity(source)}, sort_keys=False)


# ---------------------------------------------------------------------------------------------
# The metrics log.

class MetricsLog:
  """metrics.jsonl (one object per logged step and split) plus TensorBoard scalars; the other
  processes of a run of several write neither (only process 0 reads them)."""

  def __init__(self, workdir: str, resume_step: int):
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (TensorBoard: lazily)
    self.path = os.path.join(workdir, METRICS_JSONL)
    self.main = distributed.is_main()
    self.writer = metric_writers.create_default_writer(
        os.path.join(workdir, 'tensorboard'), just_logging=not self.main)
    if not self.main:
      return
    kept = []
    if os.path.exists(self.path):  # drop what a killed run logged after its checkpoint
      with open(self.path) as f:
        for line in f:
          try:
            record = json.loads(line)
          except json.JSONDecodeError:
            continue  # a line cut short by the kill
          # The final test record is written again when the run ends.
          if record['step'] <= resume_step and record['split'] != 'test':
            kept.append(line if line.endswith('\n') else line + '\n')
    with open(self.path, 'w') as f:
      f.writelines(kept)

  def write(self, step: int, split: str, values: dict, **extra) -> None:
    if self.main:
      record = {'step': int(step), 'split': split, **extra, 'metrics': values}
      with open(self.path, 'a') as f:
        f.write(strict_json.dumps(record, sort_keys=True) + '\n')
    scalars = {f'{split}/{k}': v for k, v in values.items() if isinstance(v, (int, float))}
    self.writer.write_scalars(int(step), scalars)
    self.writer.flush()
