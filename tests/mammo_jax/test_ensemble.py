"""Ensembles and the composite: combination rules on hand-computed cases, the weight grid
(validation only, defect D3), members' configs and folders, alignment, reuse of finished
members, and the configs."""

import collections
import dataclasses
import inspect
import json
import os

import ml_collections
import numpy as np
import pytest

from mammo_jax import ensemble, evaluators, pipeline, train
from mammo_jax import ensemble_rules as rules
from mammo_jax.config_lib import ensembles
from tests.conftest import ROOT, load_config


def one_hot_probs(votes, k):
  """[members, examples] votes -> [members, examples, k] probabilities that argmax to them."""
  return np.eye(k)[np.asarray(votes)] * 0.7 + 0.3 / k


# ---------------------------------------------------------------------------------------------
# Rules.

def test_vote_majority_and_the_studys_tie_break():
  votes = np.array([[1, 2, 3, 0, 2],  # member 0, the earliest; one column per example
                    [1, 0, 0, 1, 1],
                    [2, 1, 0, 1, 0],
                    [3, 3, 3, 0, 0]])
  pred, fractions = rules.vote(one_hot_probs(votes, 4))
  # Example 0: two votes for 1. 1: four different votes -> member 0's (2). 2: 3 and 0 two
  # each -> 3, member 0's. 3: 0 and 1 two each -> 0, member 0's. 4: two votes for 0 beat
  # member 0's lone 2.
  assert pred.tolist() == [1, 2, 3, 0, 0]
  np.testing.assert_allclose(fractions[0], [0, 0.5, 0.25, 0.25])


def test_vote_equals_counter_most_common_on_random_votes():
  rng = np.random.default_rng(0)
  for members in (2, 3, 4, 5):
    votes = rng.integers(0, 4, size=(members, 300))
    pred, _ = rules.vote(one_hot_probs(votes, 4))
    expected = [collections.Counter(votes[:, i].tolist()).most_common(1)[0][0]
                for i in range(300)]
    assert pred.tolist() == expected


def test_binary_vote_uses_p_above_one_half():
  p1 = np.array([[0.5, 0.51, 0.2], [0.5, 0.49, 0.9], [0.6, 0.7, 0.1]])  # [members, examples]
  probs = np.stack([1 - p1, p1], -1)
  pred, _ = rules.vote(probs)
  assert pred.tolist() == [0, 1, 0]  # p = 0.5 votes 0, as Keras's predict_classes


def test_average_and_a_member_listed_twice_counts_twice():
  a = np.array([[0.9, 0.1], [0.4, 0.6]])
  b = np.array([[0.2, 0.8], [0.8, 0.2]])
  np.testing.assert_allclose(rules.average([a, b]), [[0.55, 0.45], [0.6, 0.4]])
  np.testing.assert_allclose(rules.average([a, b, b]), [[1.3 / 3, 1.7 / 3], [2 / 3, 1 / 3]])
  np.testing.assert_allclose(rules.average([a, b], [1, 2]), rules.average([a, b, b]))


def study_grid(step=0.1):
  """The study's loops (Ensemble_4_class [21]), literally."""
  rows = []
  for a in np.arange(0, 1 + step / 2, step):
    for b in np.arange(0, 1 + step / 2, step):
      for c in np.arange(0, 1 + step / 2, step):
        if a + b + c <= 1 + 1e-9:
          rows.append((a, b, c, max(0.0, 1 - a - b - c)))
  return np.array(rows)


def test_simplex_grid_has_the_studys_286_combinations_in_its_order():
  grid = rules.simplex_grid(4, 0.1)
  assert grid.shape == (286, 4)
  np.testing.assert_allclose(grid, study_grid(), atol=1e-9)
  np.testing.assert_allclose(grid.sum(1), 1)
  assert grid[0].tolist() == [0, 0, 0, 1] and grid[-1].tolist() == [1, 0, 0, 0]
  assert len(rules.simplex_grid(2)) == 11 and len(rules.simplex_grid(5)) == 1001
  assert rules.simplex_grid(1).tolist() == [[1.0]]
  with pytest.raises(ValueError, match='step dividing 1'):
    rules.simplex_grid(3, 0.3)


def test_grid_search_hand_case_takes_the_first_best():
  # Weight a on A, 1 - a on B. P(class 1) = 0.7 - 0.6a (ex 0, label 0: right for a >= 0.4),
  # 0.8 - 0.4a (ex 1, label 1: right for a <= 0.7), 0.55 - 0.35a (ex 2, label 1: a <= 0.1).
  a = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
  b = np.array([[0.3, 0.7], [0.2, 0.8], [0.45, 0.55]])
  weights, accuracy, accuracies = rules.grid_search(np.stack([a, b]), np.array([0, 1, 1]))
  np.testing.assert_allclose(accuracies * 3, [2, 2, 1, 1, 2, 2, 2, 2, 1, 1, 1])
  assert weights.tolist() == [0.0, 1.0] and accuracy == pytest.approx(2 / 3)  # first of six


def test_grid_search_matches_the_studys_loop_on_random_members():
  rng = np.random.default_rng(1)
  probs = rng.dirichlet(np.ones(4), size=(4, 60))
  labels = rng.integers(0, 4, 60)
  weights, accuracy, _ = rules.grid_search(probs, labels)
  best, best_w = -1.0, None
  for w in study_grid():  # the study's rule: strictly better replaces
    acc = np.mean(np.einsum('m,mnk->nk', w, probs).argmax(-1) == labels)
    if acc > best:
      best, best_w = acc, w
  assert accuracy == best
  np.testing.assert_allclose(weights, best_w, atol=1e-9)


def test_composite_threshold_and_product_hand_cases():
  type_probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.7, 0.3], [0.5, 0.5]])
  severity = np.array([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9], [0.8, 0.2], [0.5, 0.5]])
  # label = 2 * calcification + malignant; p = 0.5 is not above the threshold.
  assert rules.composite_threshold(type_probs, severity).tolist() == [1, 2, 3, 0, 0]
  product = rules.composite_product(type_probs, severity)
  np.testing.assert_allclose(product[0], [0.27, 0.63, 0.03, 0.07])
  np.testing.assert_allclose(product[1], [0.12, 0.08, 0.48, 0.32])
  np.testing.assert_allclose(product.sum(1), 1)
  assert product.argmax(-1).tolist() == [1, 2, 3, 0, 0]


# ---------------------------------------------------------------------------------------------
# Methods on aligned outputs; the weight search sees validation only.

def split_outputs(probs, labels, task='four_class'):
  names = [f'm{i}' for i in range(len(probs))]
  n = len(labels)
  return ensemble.SplitOutputs(
      ids=np.array([f'x{i}' for i in range(n)]), label4=np.asarray(labels),
      probs=dict(zip(names, probs)), labels={m: np.asarray(labels) for m in names},
      tasks={m: task for m in names})


def test_parse_methods_and_its_errors():
  methods = ensemble.parse_methods('vote:a+b+c, average:a+b+c+d+d,weighted:a+b', 'abcd')
  assert [m.name for m in methods] == ['vote:a+b+c', 'average:a+b+c+d+d', 'weighted:a+b']
  assert methods[1].members == ('a', 'b', 'c', 'd', 'd')
  for spec, message in [('mean:a+b', 'unknown rule'), ('vote:a+x', r"names \['x'\]"),
                        ('vote', 'RULE:MEMBER'), ('threshold:a+b+c', 'takes two members'),
                        ('', 'names no method')]:
    with pytest.raises(ValueError, match=message):
      ensemble.parse_methods(spec, 'abcd')


def test_weights_are_chosen_on_validation_and_test_labels_change_nothing(monkeypatch):
  rng = np.random.default_rng(2)
  val = split_outputs(rng.dirichlet(np.ones(4), size=(4, 40)), rng.integers(0, 4, 40))
  test_probs = rng.dirichlet(np.ones(4), size=(4, 50))
  method = ensemble.Method('weighted', ('m0', 'm1', 'm2', 'm3'))
  # fit() takes no test data at all.
  assert list(inspect.signature(ensemble.fit).parameters) == ['method', 'validation',
                                                               'grid_step']
  chosen = ensemble.fit(method, val)
  np.testing.assert_array_equal(
      chosen, rules.grid_search(np.stack(list(val.probs.values())), val.label4)[0])
  seen = []
  real_search = rules.grid_search
  monkeypatch.setattr(rules, 'grid_search',
                      lambda probs, labels, step: seen.append(labels) or real_search(
                          probs, labels, step))
  # Test labels that make other weights best on the test split: the choice must not move.
  for favourite in ([0, 0, 0, 1], [1, 0, 0, 0], [0, 0.5, 0.5, 0]):
    labels = rules.average(test_probs, favourite).argmax(-1)
    assert not np.allclose(real_search(test_probs, labels, 0.1)[0], chosen)
    test = split_outputs(test_probs, labels)
    (entry,) = ensemble.evaluate_methods([method], {'validation': val, 'test': test}, 0.1)
    np.testing.assert_allclose(entry['weights'], chosen)
    pred = rules.average(test_probs, chosen).argmax(-1)
    assert entry['test']['accuracy'] == pytest.approx(np.mean(pred == labels))
  assert len(seen) == 3  # one search per run, on the validation labels only
  assert all(np.array_equal(labels, val.label4) for labels in seen)


def test_method_tasks_must_fit_the_rule():
  outputs = split_outputs([np.full((2, 2), 0.5)] * 2, [0, 1], task='mass_vs_calc')
  with pytest.raises(ValueError, match='composite needs a mass_vs_calc member, then a '
                                       'benign_vs_malignant'):
    ensemble.predict(ensemble.Method('product', ('m0', 'm1')), None, outputs)
  mixed = dataclasses.replace(outputs, tasks={'m0': 'mass_vs_calc', 'm1': 'four_class'})
  with pytest.raises(ValueError, match='different tasks'):
    ensemble.predict(ensemble.Method('average', ('m0', 'm1')), None, mixed)


# ---------------------------------------------------------------------------------------------
# Members: resolved configs, folders, alignment.

def member(spec, overrides=''):
  return ml_collections.ConfigDict({'config': spec, 'overrides': overrides})


def member_config(name, spec, data):
  """A member's resolved config, its file relative to this repository."""
  return ensembles.member_config(name, spec, data, ROOT)


def test_member_config_gets_the_ensembles_data_and_its_overrides():
  data = load_config('default', 'smoke').data
  data.unlock()
  data.cache_dir = '/tmp/somewhere'
  data.synthetic.seed = 7
  config = member_config(
      'm1', member('configs/scratch4.py:m1', 'num_epochs=3 optimizer.learning_rate=3e-3 '
                   "model.trainable='all' half_precision=false"), data)
  assert config.data.cache_dir == '/tmp/somewhere' and config.data.synthetic.seed == 7
  assert config.data.synthetic.patients == 12  # the ensemble's (smoke) data, not the file's
  assert config.num_epochs == 3 and config.optimizer.learning_rate == 3e-3
  assert config.model.name == 'scratch4_m1'
  for overrides, message in [('data.cache_dir=/x', "members share the ensemble's data"),
                             ('num_epoch=3', 'num_epoch names no field'),
                             ('num_epochs=three', 'num_epochs=.three'),
                             ('num_epochs', 'not FIELD=VALUE')]:
    with pytest.raises(ValueError, match=message):
      member_config('m1', member('configs/scratch4.py:m1', overrides), data)
  with pytest.raises(FileNotFoundError, match='no file'):
    member_config('m1', member('configs/nope.py:x'), data)


def test_pipeline_member_with_a_shortened_chain():
  data = load_config('default', 'smoke').data
  config = member_config('vgg', member(
      'configs/vgg16_4.py:pipeline,smoke',
      "pipeline=fe_fc128,ft3 stages.ft3.init_from=@fe_fc128 model.pretrained=''"), data)
  stages = pipeline.stage_configs(config)
  assert [s for s, _ in stages] == ['fe_fc128', 'ft3']
  assert stages[1][1].init_from == '@fe_fc128' and stages[1][1].model.pretrained == ''


def test_member_folder_is_keyed_by_the_config_up_to_resumable_fields(tmp_path):
  data = load_config('default', 'smoke').data
  base = member_config('m1', member('configs/scratch4.py:m1'), data)
  same = member_config('m1', member('configs/scratch4.py:m1', 'log_every_steps=7'),
                                data)
  other = member_config('m1', member('configs/scratch4.py:m1', 'num_epochs=7'), data)
  d = ensemble.member_dir(str(tmp_path), 'm1', base)
  assert d.startswith(str(tmp_path / 'members' / 'm1-')) and len(os.path.basename(d)) == 11
  assert ensemble.member_dir(str(tmp_path), 'm1', same) == d
  assert ensemble.member_dir(str(tmp_path), 'm1', other) != d


def write_run(run_dir, task, ids, label4, probs, seed=0, synthetic=True):
  """A finished run's outputs, as evaluation.final_evaluation writes them (no training)."""
  os.makedirs(run_dir, exist_ok=True)
  target = {'four_class': lambda y: y, 'mass_vs_calc': lambda y: (y >= 2).astype(int),
            'benign_vs_malignant': lambda y: y % 2}[task]
  arrays, results = {}, {'task': task, 'synthetic_data': synthetic, 'best_epoch': 0,
                         'epochs_run': 1, 'trainable_params': 1, 'model': 'fake'}
  for split in ('validation', 'test'):
    labels = target(label4[split])
    arrays.update({f'{split}_ids': ids[split], f'{split}_probs': probs[split],
                   f'{split}_labels': labels, f'{split}_label4': label4[split]})
    results[split] = {'accuracy': float(np.mean(probs[split].argmax(-1) == labels)),
                      'auc': 0.5, 'loss': 1.0, 'balanced_accuracy': 0.5}
  np.savez(os.path.join(run_dir, 'predictions.npz'), **arrays)
  with open(os.path.join(run_dir, 'results.json'), 'w') as f:
    json.dump(results, f)
  with open(os.path.join(run_dir, 'config.json'), 'w') as f:
    json.dump({'model': {'name': 'fake'}, 'seed': seed, 'task': task}, f)


def test_outputs_are_aligned_by_id_and_mismatches_refused(tmp_path):
  ids = {'validation': np.array(['a', 'b', 'c']), 'test': np.array(['d', 'e'])}
  label4 = {'validation': np.array([0, 1, 2]), 'test': np.array([3, 0])}
  probs = {s: np.eye(4)[label4[s]] for s in label4}
  write_run(str(tmp_path / 'one'), 'four_class', ids, label4, probs)
  flip = {s: v[::-1] for s, v in ids.items()}
  write_run(str(tmp_path / 'two'), 'four_class', flip, {s: v[::-1] for s, v in label4.items()},
            {s: v[::-1] for s, v in probs.items()})
  outputs = ensemble.load_outputs({'one': str(tmp_path / 'one'), 'two': str(tmp_path / 'two')})
  for split in ('validation', 'test'):
    np.testing.assert_array_equal(outputs[split].probs['two'], probs[split])
    np.testing.assert_array_equal(outputs[split].labels['two'], label4[split])
  other = dict(ids, test=np.array(['d', 'z']))
  write_run(str(tmp_path / 'three'), 'four_class', other, label4, probs)
  with pytest.raises(ValueError, match=r"different test examples .*only in one: 1 \['e'\], "
                                       r"only in three: 1 \['z'\]"):
    ensemble.load_outputs({'one': str(tmp_path / 'one'), 'three': str(tmp_path / 'three')})


# ---------------------------------------------------------------------------------------------
# The runner: training, reuse, the composite, with fake training (fast) and smoke members.

def fake_train_and_evaluate(calls, synthetic=True):
  """Stands in for train.train_and_evaluate: writes a finished run whose probabilities are
  the labels plus seeded noise, without any training."""
  def fake(config, workdir):
    calls.append(workdir)
    rng = np.random.default_rng(config.seed + 10 * len(config.task))
    ids = {s: np.array([f'Mass-{s}_P_{i // 2:05d}_LEFT_CC/abnorm_{i % 2}' for i in range(n)])
           for s, n in (('validation', 30), ('test', 40))}  # two examples a patient
    label4 = {s: np.arange(len(v)) % 4 for s, v in ids.items()}
    k = 4 if config.task == 'four_class' else 2
    target = {'four_class': lambda y: y, 'mass_vs_calc': lambda y: y // 2,
              'benign_vs_malignant': lambda y: y % 2}[config.task]
    probs = {s: 0.4 * np.eye(k)[target(label4[s])] + 0.6 * rng.dirichlet(np.ones(k), len(v))
             for s, v in ids.items()}
    write_run(workdir, config.task, ids, label4, probs, synthetic=synthetic)
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort())
    return None, json.load(open(os.path.join(workdir, 'results.json')))
  return fake


def test_composite_config_runs_and_a_second_run_trains_nothing(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train_and_evaluate(calls))
  config = load_config('composite4', 'smoke')
  summary = ensemble.run(config, str(tmp_path / 'c'))
  assert len(calls) == 3  # the type member's two VGG stages (demo shape), the severity one
  names = [m['name'] for m in summary['methods']]
  assert names == ['threshold:type+severity', 'product:type+severity']
  threshold, product = summary['methods']
  assert threshold['task'] == 'four_class' and threshold['test']['count'] == 40
  assert threshold['test']['accuracy'] == product['test']['accuracy']
  assert np.isnan(threshold['test']['auc']) and 0 <= product['test']['auc'] <= 1
  # Intervals per method (patient bootstrap); the threshold rule has no scores, so no AUC.
  lo, hi = product['test']['ci95']['accuracy']
  assert lo <= product['test']['accuracy'] <= hi and product['test']['ci_resamples'] == 2000
  assert threshold['test']['ci95']['auc'] is None and threshold['test']['ci_auc_skipped'] == 2000
  assert os.path.exists(tmp_path / 'c' / 'report.html')
  ensemble.run(config, str(tmp_path / 'c'))
  assert len(calls) == 3


@pytest.fixture(scope='module')
def smoke_ensemble(tmp_path_factory, data_cache):
  """Two real smoke members (M1 with two seeds), trained once for the tests below."""
  config = load_config('ensemble4', 'smoke')
  config.unlock()
  config.data.cache_dir = data_cache
  config.data.num_workers = 1
  config.ensemble.members = ml_collections.ConfigDict({
      'a': member('configs/scratch4.py:m1,smoke', 'num_epochs=1'),
      'b': member('configs/scratch4.py:m1,smoke', 'num_epochs=1 seed=1')})
  config.ensemble.methods = 'vote:a+b,average:a+b+b,weighted:a+b'
  config.lock()
  workdir = str(tmp_path_factory.mktemp('ensemble') / 'run')
  return config, workdir, ensemble.run(config, workdir)


def test_smoke_ensemble_trains_members_and_reuses_them(smoke_ensemble, monkeypatch):
  config, workdir, first = smoke_ensemble
  assert all(m['trained_now'] for m in first['members'].values())
  n_test = first['examples']['test']
  for m in first['methods']:
    assert m['test']['count'] == n_test > 0 and m['validation']['count'] > 0
  assert len(first['methods'][2]['weights']) == 2

  def refuse(*args, **kwargs):
    raise AssertionError('a finished member was trained again')
  monkeypatch.setattr(train, 'train_and_evaluate', refuse)
  again = ensemble.run(config, workdir)
  assert not any(m['trained_now'] for m in again['members'].values())
  for a, b in zip(again['methods'], first['methods']):
    assert (a['test']['accuracy'], a['test']['confusion_matrix'], a['weights']) == (
        b['test']['accuracy'], b['test']['confusion_matrix'], b['weights'])


# ---------------------------------------------------------------------------------------------
# Configs.

def test_ensemble_configs_name_the_studys_members_and_methods():
  e4 = load_config('ensemble4', 'study')
  assert {n: m.config for n, m in e4.ensemble.members.items()} == {
      'm1': 'configs/scratch4.py:m1', 'm2': 'configs/scratch4.py:m2',
      'm3': 'configs/scratch4.py:m3', 'vgg': 'configs/vgg16_4.py:pipeline'}
  assert e4.ensemble.methods == ('vote:m1+m2+m3,average:m1+m2+m3,average:m1+m2+m3+vgg,'
                                 'weighted:m1+m2+m3+vgg')
  e2 = load_config('ensemble2', 'study')
  assert {n: m.config for n, m in e2.ensemble.members.items()} == {
      'm5': 'configs/scratch2.py:exp5', 'm6': 'configs/scratch2.py:exp6',
      'm9': 'configs/scratch2.py:exp9', 'vgg': 'configs/vgg16_2.py:pipeline'}
  assert 'vote:m5+m6+m9+vgg+vgg' in e2.ensemble.methods
  c4 = load_config('composite4', 'study')
  assert c4.ensemble.members.type.config == 'configs/vgg16_2.py:pipeline'
  assert c4.ensemble.members.severity.config == 'configs/benmal.py:run3'
  for config in (e4, e2, c4):  # the study's members as the config files define them
    assert config.runner == 'ensemble'
    assert all(not m.overrides for m in config.ensemble.members.values())


@pytest.mark.parametrize('name', ['ensemble2', 'ensemble4', 'composite4'])
@pytest.mark.parametrize('arg', ['demo', 'study', 'smoke', 'study,smoke'])
def test_every_config_variant_resolves_its_members(name, arg):
  config = load_config(name, arg)
  names = list(config.ensemble.members.keys())
  methods = ensemble.parse_methods(config.ensemble.methods, names)
  for n in names:
    resolved = ensembles.member_config(n, config.ensemble.members[n], config.data,
                                       config.ensemble.root)
    if resolved.get('pipeline'):
      pipeline.stage_configs(resolved)
    assert resolved.data.synthetic.patients == config.data.synthetic.patients
  assert {m for method in methods for m in method.members} == set(names)


def test_ensemble_methods_use_the_configs_evaluator(tmp_path, monkeypatch):
  calls = []
  monkeypatch.setattr(train, 'train_and_evaluate', fake_train_and_evaluate(calls))
  seen = []

  def counting(probs, labels, class_names):
    seen.append(len(labels))
    return evaluators.get_evaluator('classification').evaluate(probs, labels, class_names)

  monkeypatch.setitem(evaluators.EVALUATORS, 'counting',
                      evaluators.Evaluator('counting', counting, ('accuracy',)))
  config = load_config('composite4', 'smoke')
  config.unlock()
  config.evaluator = 'counting'
  config.lock()
  ensemble.run(config, str(tmp_path / 'c'))
  # threshold: hard decisions only; product: decisions and scores; validation and test each.
  assert sorted(set(seen)) == [30, 40] and len(seen) == 2 * (1 + 2)
