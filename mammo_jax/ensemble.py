"""Ensembles and the composite 4-class model (docs/REFERENCE_STUDY.md §2.8-2.10), as one runner.

An ensemble config (`config.runner = 'ensemble'`, e.g. configs/ensemble4.py; its fields:
mammo_jax.config_lib.ensembles) names members, each a config file with overrides, and
combination methods 'RULE:MEMBER+MEMBER...': the order of the members matters (voting ties,
the weight grid) and a member may be listed twice (the study's "weight 2").
Rules: `vote` (majority of the members' predicted classes), `average` (argmax of the mean of
their probabilities), `weighted` (argmax of a weighted sum; weights grid-searched on the
validation split), `threshold` and `product` (the composite: a mass-vs-calcification member
and a benign-vs-malignant member give a 4-class label).

Each member trains in WORKDIR/members/NAME-HASH, HASH a digest of its resolved config (up to
workdir.RESUMABLE_FIELDS and workdir.ADDED_FIELDS): a finished member is reused, an interrupted
one resumes, a changed config trains afresh in a new folder. A member that is a pipeline config
(config.pipeline) runs all its stages; its last stage is the model. Members are combined from
the predictions.npz their runs wrote, aligned by example id. Results go to WORKDIR/ensemble.json
(with the study's published numbers per member and per method, from the resolved configs),
per-method plots to WORKDIR/methods/, and the report (mammo_jax.report) to WORKDIR/report.md and
report.html.

Unlike the study (defect D3), nothing is tuned on the test split: `fit` sees the validation
split only, and the test split is only predicted with what it returned.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from mammo_jax import ensemble_rules as rules
from mammo_jax import evaluators
from mammo_jax import metrics as metrics_lib
from mammo_jax import models
from mammo_jax import pipeline
from mammo_jax import plots
from mammo_jax import report
from mammo_jax import runners
from mammo_jax import tasks
from mammo_jax import workdir as workdir_lib
from mammo_jax.config_lib import ensembles as ensemble_configs
from mammo_jax.metrics import fmt
SPLITS = ('validation', 'test')
RULES = ('vote', 'average', 'weighted', 'threshold', 'product')
COMPOSITE_RULES = ('threshold', 'product')
COMPOSITE_TASKS = ('mass_vs_calc', 'benign_vs_malignant')  # (type, severity) members


# ---------------------------------------------------------------------------------------------
# Methods: a rule applied to a list of members.

@dataclasses.dataclass(frozen=True)
class Method:
  rule: str
  members: tuple[str, ...]

  @property
  def name(self) -> str:
    return f'{self.rule}:{"+".join(self.members)}'


@dataclasses.dataclass(frozen=True)
class SplitOutputs:
  """The members' outputs on one split, aligned by example id."""
  ids: np.ndarray  # [N] str
  label4: np.ndarray  # [N] 4-class labels
  probs: Mapping[str, np.ndarray]  # member -> [N, classes]
  labels: Mapping[str, np.ndarray]  # member -> [N] labels of the member's task
  tasks: Mapping[str, str]  # member -> task name


def parse_methods(spec: str, members: Sequence[str]) -> list[Method]:
  """'vote:m1+m2,average:m1+m2' -> Methods; checks rules and member names."""
  methods = []
  for item in (s.strip() for s in spec.split(',')):
    if not item:
      continue
    rule, sep, names = item.partition(':')
    listed = tuple(n.strip() for n in names.split('+') if n.strip())
    if not sep or not listed:
      raise ValueError(f'config.ensemble.methods: {item!r} is not RULE:MEMBER+MEMBER...')
    if rule not in RULES:
      raise ValueError(f'config.ensemble.methods: unknown rule {rule!r} in {item!r}; known: '
                       f'{", ".join(RULES)}')
    unknown = [n for n in listed if n not in members]
    if unknown:
      raise ValueError(f'config.ensemble.methods: {item!r} names {unknown}, which are not in '
                       f'config.ensemble.members ({", ".join(members)})')
    if rule in COMPOSITE_RULES and len(listed) != 2:
      raise ValueError(f'config.ensemble.methods: {item!r}: {rule} takes two members, the '
                       f'mass-vs-calcification one, then the benign-vs-malignant one')
    methods.append(Method(rule, listed))
  if not methods:
    raise ValueError('config.ensemble.methods names no method')
  return methods


def method_task(method: Method, member_tasks: Mapping[str, str]) -> tasks.Task:
  """The task a method predicts; refuses members whose tasks do not fit the rule."""
  got = tuple(member_tasks[m] for m in method.members)
  if method.rule in COMPOSITE_RULES:
    if got != COMPOSITE_TASKS:
      raise ValueError(f'{method.name}: the composite needs a {COMPOSITE_TASKS[0]} member, '
                       f'then a {COMPOSITE_TASKS[1]} one; got tasks {got}')
    return tasks.get_task('four_class')
  if len(set(got)) > 1:
    raise ValueError(f'{method.name}: members have different tasks '
                     f'{dict(zip(method.members, got))}; a {method.rule} needs one task')
  return tasks.get_task(got[0])


def fit(method: Method, validation: SplitOutputs, grid_step: float = 0.1) -> np.ndarray | None:
  """What a method learns, from the validation split only: the weights of `weighted`."""
  if method.rule != 'weighted':
    return None
  probs = np.stack([validation.probs[m] for m in method.members])
  weights, _, _ = rules.grid_search(probs, validation.labels[method.members[0]], grid_step)
  return weights


def predict(method: Method, weights: np.ndarray | None,
            split: SplitOutputs) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
  """(predictions, class scores or None, labels) of a method on one split."""
  task = method_task(method, split.tasks)
  if method.rule in COMPOSITE_RULES:
    type_probs, severity_probs = (split.probs[m] for m in method.members)
    if method.rule == 'threshold':  # hard decisions only: no scores, no ROC
      return rules.composite_threshold(type_probs, severity_probs), None, split.label4
    scores = rules.composite_product(type_probs, severity_probs)
    return scores.argmax(-1), scores, split.label4
  labels = split.labels[method.members[0]]
  for m in method.members[1:]:
    if not np.array_equal(split.labels[m], labels):
      raise ValueError(f'{method.name}: members {method.members[0]} and {m} disagree on the '
                       f'{task.name} labels of the same examples')
  probs = np.stack([split.probs[m] for m in method.members])
  if method.rule == 'weighted' and weights is None:
    raise ValueError(f'{method.name}: no weights; fit() them on the validation split first')
  if method.rule == 'vote':
    return (*rules.vote(probs), labels)
  scores = rules.average(probs, weights if method.rule == 'weighted' else None)
  return scores.argmax(-1), scores, labels


def method_metrics(pred: np.ndarray, scores: np.ndarray | None, labels: np.ndarray,
                   class_names: Sequence[str],
                   evaluator: evaluators.Evaluator | None = None,
                   ids: np.ndarray | None = None, ci: tuple[int, int] | None = None) -> dict:
  """The evaluator's metrics of hard predictions; AUC from the scores (NaN without); with the
  examples' ids and ci (resamples, seed), their patient-bootstrap intervals."""
  return evaluators.evaluate_decisions(evaluator or evaluators.get_evaluator(), pred, scores,
                                       labels, class_names, ids, ci)


# ---------------------------------------------------------------------------------------------
# Members: configs, folders, training or reuse, predictions.

def member_dir(workdir: str, name: str, config: ml_collections.ConfigDict) -> str:
  """WORKDIR/members/NAME-HASH, HASH 8 hex digits of the member config's fingerprint."""
  return os.path.join(workdir, 'members', f'{name}-{workdir_lib.config_hash(config)}')


def run_member(name: str, config: ml_collections.ConfigDict, directory: str) -> tuple[str, bool]:
  """Trains, resumes or reuses a member with its runner; returns (the run folder of its
  model, trained now). A stage pipeline's model is its last stage."""
  if config.get('pipeline'):
    runs = [(c, os.path.join(directory, s)) for s, c in pipeline.stage_configs(config)]
    what = f' pipeline {config.pipeline}'
  else:
    runs, what = [(config, directory)], ''
  model_dir = runs[-1][1]
  if all(workdir_lib.finished_with(c, d) for c, d in runs):
    print(f'=== member {name}: finished in {directory}; reusing it', flush=True)
    for c, d in runs:  # same fingerprints; refreshes fields added since (published numbers)
      workdir_lib.write_config(c, d)
    return model_dir, False
  print(f'=== member {name}:{what} in {directory}' if what else
        f'=== member {name} in {directory}', flush=True)
  runners.run(config, directory)
  return model_dir, True


def load_outputs(run_dirs: Mapping[str, str]) -> dict[str, SplitOutputs]:
  """Every member's predictions per split, aligned on the first member's example ids."""
  loaded = {}
  for name, run_dir in run_dirs.items():
    try:
      loaded[name] = workdir_lib.read_predictions(run_dir)
    except FileNotFoundError as e:
      raise FileNotFoundError(f'member {name}: {e}') from None
  first = next(iter(loaded))
  out = {}
  for split in SPLITS:
    ids = loaded[first][f'{split}_ids']
    index = {i: n for n, i in enumerate(ids)}
    probs, labels = {}, {}
    for name, arrays in loaded.items():
      theirs = arrays[f'{split}_ids']
      if len(theirs) != len(ids) or any(i not in index for i in theirs):
        only_first = sorted(str(i) for i in set(ids) - set(theirs))
        only_theirs = sorted(str(i) for i in set(theirs) - set(ids))
        raise ValueError(
            f'members {first} and {name} were evaluated on different {split} examples '
            f'({len(ids)} vs {len(theirs)}; only in {first}: {len(only_first)} '
            f'{only_first[:3]}, only in {name}: {len(only_theirs)} {only_theirs[:3]}). '
            f'Members must see one dataset; the ensemble\'s config.data reaches all of them, '
            f'so delete the member run that was trained on other data: {run_dirs[name]}')
      order = np.argsort([index[i] for i in theirs], kind='stable')  # theirs -> first's order
      if not np.array_equal(arrays[f'{split}_label4'][order], loaded[first][f'{split}_label4']):
        raise ValueError(f'members {first} and {name} give the same {split} examples '
                         f'different labels; their datasets differ')
      probs[name] = arrays[f'{split}_probs'][order]
      labels[name] = arrays[f'{split}_labels'][order]
    out[split] = SplitOutputs(ids=ids, label4=loaded[first][f'{split}_label4'], probs=probs,
                              labels=labels,
                              tasks={n: a['task'] for n, a in loaded.items()})
  return out


# ---------------------------------------------------------------------------------------------
# The runner.

def _published_model(config: ml_collections.ConfigDict) -> dict | None:
  """The study's published numbers of a member's model (a pipeline's: its last stage's), from
  its resolved config: a reused member's config.json may predate config.published."""
  if config.get('pipeline'):
    config = pipeline.stage_configs(config)[-1][1]
  published = config.get('published')
  return published.to_dict() if published else None


def _without_pretrained_weights(config: ml_collections.ConfigDict) -> bool:
  """A model whose family has pretrained weights (VGG16) trained without them."""
  return models.family_of(config.model.name) is not None and not config.model.pretrained


def evaluate_methods(methods: Sequence[Method], outputs: Mapping[str, SplitOutputs],
                     grid_step: float, workdir: str | None = None,
                     evaluator: evaluators.Evaluator | None = None,
                     ci: tuple[int, int] | None = None) -> list[dict]:
  """Fits each method on validation, predicts both splits (with intervals when `ci`, the
  bootstrap's (resamples, seed), is given); writes plots under workdir."""
  results = []
  for method in methods:
    task = method_task(method, outputs['validation'].tasks)
    weights = fit(method, outputs['validation'], grid_step)  # validation only (D3)
    entry = {'name': method.name, 'rule': method.rule, 'members': list(method.members),
             'task': task.name,
             'weights': None if weights is None else [float(w) for w in weights]}
    plot_dir = os.path.join('methods', method.name.replace(':', '_'))  # relative to workdir
    for split in SPLITS:
      pred, scores, labels = predict(method, weights, outputs[split])
      entry[split] = method_metrics(pred, scores, labels, task.class_names, evaluator,
                                    outputs[split].ids, ci)
      if workdir:
        paths = _method_plots(os.path.join(workdir, plot_dir), split, pred, scores, labels,
                              task.class_names, method.name)
        entry.setdefault('plots', {})[split] = {
            k: os.path.join(plot_dir, os.path.basename(p)) for k, p in paths.items()}
    results.append(entry)
  return results


def _method_plots(plot_dir, split, pred, scores, labels, class_names, title) -> dict:
  confusion = metrics_lib.confusion_matrix(labels, pred, len(class_names))
  paths = {'confusion': plots.confusion_matrix_plot(
      confusion, class_names, os.path.join(plot_dir, f'confusion_{split}.png'),
      title=f'{title}, {split} (n={len(labels)})')}
  if scores is not None:
    paths['roc'] = plots.roc_plot(scores, labels, class_names,
                                  os.path.join(plot_dir, f'roc_{split}.png'),
                                  title=f'{title}, {split} ROC')
  return paths


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains or reuses the members, combines them, writes ensemble.json and the report."""
  os.makedirs(workdir, exist_ok=True)
  members = config.ensemble.members
  methods = parse_methods(config.ensemble.methods, list(members.keys()))
  used = list(dict.fromkeys(m for method in methods for m in method.members))  # listing order
  for name in members.keys():
    if name not in used:
      print(f'Member {name} is in no method of config.ensemble.methods; not trained.')
  workdir_lib.write_config(config, workdir)

  # Every member's config is resolved (and checked) before minutes of training.
  configs = {name: ensemble_configs.member_config(name, members[name], config.data,
                                                  config.ensemble.root) for name in used}
  dirs = {name: member_dir(workdir, name, configs[name]) for name in used}
  run_dirs, info = {}, {}
  for name in used:
    run_dirs[name], trained = run_member(name, configs[name], dirs[name])
    results = workdir_lib.read_results(run_dirs[name])
    info[name] = {  # paths relative to workdir, so that the folder can move
        'config': members[name].config, 'overrides': members[name].overrides,
        'dir': os.path.relpath(dirs[name], workdir),
        'run_dir': os.path.relpath(run_dirs[name], workdir), 'trained_now': trained,
        'task': results['task'], 'synthetic_data': results['synthetic_data'],
        'stages': configs[name].pipeline.split(',') if configs[name].get('pipeline') else None,
        'vgg_without_imagenet': _without_pretrained_weights(configs[name]),
        'published': _published_model(configs[name]),
        'validation': {k: results['validation'][k] for k in ('accuracy', 'auc', 'loss')},
        'test': {k: results['test'][k] for k in ('accuracy', 'auc', 'loss')}}
  outputs = load_outputs(run_dirs)
  entries = evaluate_methods(methods, outputs, config.ensemble.grid_step, workdir,
                             evaluators.of_config(config), evaluators.ci_settings(config))
  published = config.get('published') or {}
  for e in entries:
    e['published'] = published[e['name']].to_dict() if e['name'] in published else None
  synthetic = any(i['synthetic_data'] for i in info.values())
  summary = {'synthetic_data': synthetic, 'grid_step': config.ensemble.grid_step,
             'examples': {s: int(len(outputs[s].ids)) for s in SPLITS},
             'members': info, 'methods': entries}
  workdir_lib.write_json(os.path.join(workdir, workdir_lib.ENSEMBLE_JSON), summary)

  rows = [(f'member {n}', '', i) for n, i in info.items()]
  rows += [(e['name'], ','.join(f'{w:g}' for w in e['weights'] or ()), e) for e in entries]
  print(f'{"model / method":<36} {"weights":<20} {"val acc":>8} {"test acc":>9} '
        f'{"test auc":>9}')
  for label, weights, r in rows:
    print(f'{label:<36} {weights:<20} {fmt(r["validation"]["accuracy"]):>8} '
          f'{fmt(r["test"]["accuracy"]):>9} {fmt(r["test"]["auc"]):>9}')
  for name, i in info.items():
    if i['vgg_without_imagenet']:
      print(f'Note: member {name} ({configs[name].model.name}) is trained WITHOUT its '
            f'pretrained (ImageNet) weights (model.pretrained=\'\'), unlike the study\'s '
            f'transfer learning.')
  if synthetic:
    print('[SYNTHETIC DATA] these numbers say nothing about real mammograms.')
  md, html = report.write_report(workdir)
  print(f'Ensemble summary in {os.path.join(workdir, workdir_lib.ENSEMBLE_JSON)}')
  print(f'Report: {html} (and {md})', flush=True)
  return summary
