"""Patient-level bootstrap intervals: patients from ids, an exactly enumerated tiny case, an
independent loop implementation, the evaluator's intervals, calibration and the report's cells."""

import itertools
import time

import numpy as np
import pytest

from mammo_jax import bootstrap, calibration, evaluation, evaluators, metrics, report

HEADLINE = ('accuracy', 'balanced_accuracy', 'macro_f1', 'auc')


@pytest.mark.parametrize('example_id, patient', [
    ('Mass-Test_P_00001_LEFT_CC/abnorm_1', 'P_00001'),  # roi150 and the pairs
    ('Calc-Training_P_01234_RIGHT_MLO_1/abnorm_2', 'P_01234'),  # a subject with its suffix
    ('Mass-Training_P_00007_LEFT_MLO/abnorm_1/patch_3', 'P_00007'),  # sampled patches
    ('Calc-Test_P_00015_RIGHT_CC/background_0', 'P_00015'),
    (b'Mass-Test_P_00001_LEFT_CC/abnorm_1', 'P_00001'),  # as TFDS yields them
])
def test_patient_of(example_id, patient):
  assert bootstrap.patient_of(example_id) == patient


@pytest.mark.parametrize('example_id', ['v00', 'Mass-Test_LEFT_CC/abnorm_1', 'XP_00001'])
def test_patient_of_refuses_an_id_without_a_patient(example_id):
  with pytest.raises(ValueError, match=f"example id '{example_id}' names no patient"):
    bootstrap.patient_of(example_id)


# Three patients: A has two correct examples, B one wrong, C one correct.
TINY_IDS = ['Mass-Test_P_00001_LEFT_CC/abnorm_1', 'Mass-Test_P_00001_LEFT_MLO/abnorm_1',
            'Calc-Test_P_00002_LEFT_CC/abnorm_1', 'Calc-Test_P_00003_LEFT_CC/abnorm_1']
TINY_LABELS = np.array([1, 1, 0, 1])
TINY_PRED = np.array([1, 1, 1, 1])
# By hand: draw counts (a, b, c) of A, B, C, each with multiplicity 3!/(a! b! c!) of the 27
# ordered draws, give accuracy (2a + c) / (2a + b + c):
TINY_ACCURACY = {1.0: 8, 0.0: 1, 4 / 5: 3, 1 / 2: 3, 1 / 3: 3, 2 / 3: 3, 3 / 4: 6}


def _tiny_scores():
  return np.eye(2)[TINY_PRED] * 0.8 + 0.1


def test_bootstrap_of_three_patients_enumerated_exactly():
  groups, n = bootstrap.patient_index(TINY_IDS)
  assert n == 3 and list(groups) == [0, 0, 1, 2]
  counts = np.array([np.bincount(draw, minlength=3)
                     for draw in itertools.product(range(3), repeat=3)])  # the 27 resamples
  samples = bootstrap.classification_samples(bootstrap.counts_to_weights(counts, groups),
                                             TINY_PRED, _tiny_scores(), TINY_LABELS, 2)
  values, freq = np.unique(np.round(samples['accuracy'], 12), return_counts=True)
  assert dict(zip(values, freq)) == {round(v, 12): c for v, c in TINY_ACCURACY.items()}
  # Percentiles of the 27 sorted values [0, 1/3 x3, ...]: 2.5 % lies at position 0.65,
  # between 0 and 1/3; 97.5 % at 25.35, among the eight 1.0s.
  interval, skipped = bootstrap.percentile_interval(samples['accuracy'])
  assert interval == pytest.approx([0.65 / 3, 1.0]) and skipped == 0
  # One class present: without B, only class 1 ((3,0,0), (0,0,3), (2,0,1) x3, (1,0,2) x3),
  # and B alone, only class 0 ((0,3,0)): 9 resamples have no AUC.
  assert np.isnan(samples['auc']).sum() == 9

  # Random resamples approach the same distribution.
  drawn = bootstrap.resampled(
      lambda w: bootstrap.classification_samples(w, TINY_PRED, None, TINY_LABELS, 2),
      TINY_IDS, resamples=27000, seed=3, max_cells=10000)  # in blocks of 2500 resamples
  assert drawn['accuracy'].shape == (27000,)
  for value, count in TINY_ACCURACY.items():
    assert np.isclose(drawn['accuracy'], value).mean() == pytest.approx(count / 27, abs=0.015)
  assert np.isnan(drawn['auc']).all()  # no scores, no AUC


def _loop_bootstrap(ids, probs, labels, resamples, seed):
  """The straightforward implementation: draw patients, gather their examples, compute."""
  patients = [bootstrap.patient_of(i) for i in ids]
  names = sorted(set(patients))
  members = {p: [i for i, q in enumerate(patients) if q == p] for p in names}
  draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
  out = {m: [] for m in HEADLINE}
  for draw in draws:
    index = [i for d in draw for i in members[names[d]]]
    result = metrics.classification_metrics(probs[index], labels[index])
    for m in HEADLINE:
      out[m].append(result[m])
  return {m: np.array(v) for m, v in out.items()}


@pytest.mark.parametrize('k, patients', [(2, 25), (4, 25), (2, 3), (4, 4)])
def test_vectorised_bootstrap_equals_the_loop(k, patients):
  # Few patients: resamples with absent classes, or a single class (no AUC: NaN in both).
  rng = np.random.default_rng(k)
  n = 60 if patients > 10 else 8
  ids = [f'Mass-Test_P_{rng.integers(0, patients):05d}_LEFT_CC/abnorm_{i}' for i in range(n)]
  labels = rng.integers(0, k, n)
  probs = rng.dirichlet(np.ones(k), n) + 0.4 * np.eye(k)[labels]
  probs = np.round(probs / probs.sum(1, keepdims=True), 1)  # ties in the scores
  expected = _loop_bootstrap(ids, probs, labels, 300, seed=5)
  got = bootstrap.resampled(
      lambda w: bootstrap.classification_samples(w, probs.argmax(-1), probs, labels, k),
      ids, 300, seed=5, max_cells=n * 7)  # blocks of 7 resamples, the last one shorter
  for m in HEADLINE:
    np.testing.assert_allclose(got[m], expected[m], rtol=1e-12, err_msg=m)  # NaN where NaN
  if patients < 10:
    assert np.isnan(got['auc']).any() and np.isfinite(got['auc']).any()


def test_evaluator_intervals_and_their_speed():
  rng = np.random.default_rng(0)
  n, k = 400, 4
  ids = [f'Calc-Test_P_{i // 3:05d}_RIGHT_CC/abnorm_{i % 3}' for i in range(n)]
  labels = rng.integers(0, k, n)
  probs = rng.dirichlet(np.ones(k), n) + 0.5 * np.eye(k)[labels]
  probs /= probs.sum(1, keepdims=True)
  evaluator = evaluators.get_evaluator()
  start = time.perf_counter()
  out = evaluators.intervals(evaluator, probs.argmax(-1), probs, labels, ids, k, 2000, 0)
  assert time.perf_counter() - start < 5  # about 0.1 s; generous on a shared machine
  point = evaluator.evaluate(probs, labels, ('a', 'b', 'c', 'd'))
  assert set(out['ci95']) == set(HEADLINE)
  for m in HEADLINE:
    lo, hi = out['ci95'][m]
    assert lo < point[m] < hi and hi - lo < 0.2
  assert (out['ci_method'], out['ci_resamples'], out['ci_auc_skipped']) == (
      'patient bootstrap, percentile', 2000, 0)
  assert evaluators.intervals(evaluator, probs.argmax(-1), probs, labels, ids, k, 2000, 0) == out
  assert evaluators.intervals(evaluator, probs.argmax(-1), probs, labels, ids, k, 2000, 1) != out
  no_resampling = evaluators.Evaluator('x', evaluator.evaluate, ('accuracy',))
  assert evaluators.intervals(no_resampling, probs.argmax(-1), probs, labels, ids, k, 2000,
                              0) == {}


def test_wilson_interval():
  assert bootstrap.wilson_interval(0.5, 100) == pytest.approx([0.40383, 0.59617], abs=1e-5)
  lo, hi = bootstrap.wilson_interval(0.6131, 336)
  assert (round(100 * lo, 1), round(100 * hi, 1)) == (56.0, 66.4)


def test_ece_of_constructed_probabilities():
  # Ten examples at confidence 0.9, eight right: ECE 0.1.
  probs = np.tile([0.9, 0.1], (10, 1))
  labels = np.array([0] * 8 + [1] * 2)
  assert calibration.ece(probs, labels) == pytest.approx(0.1)
  # Half at confidence 0.6 with accuracy 0.6 (gap 0), half at 0.95, all right (gap 0.05).
  probs = np.concatenate([np.tile([0.4, 0.6], (10, 1)), np.tile([0.05, 0.95], (10, 1))])
  labels = np.array([1] * 6 + [0] * 4 + [1] * 10)
  assert calibration.ece(probs, labels) == pytest.approx(0.025)
  count, _, _ = calibration.reliability_bins(np.tile([0.0, 1.0], (3, 1)), np.ones(3, int))
  assert count[-1] == 3  # confidence 1 falls in the last of the 15 bins
  assert np.isnan(calibration.ece(np.zeros((0, 2)), np.zeros(0, int)))


def test_temperature_scaling_reduces_the_validation_nll():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(300, 3))
  labels = np.array([rng.choice(3, p=p) for p in calibration.scale(np.exp(logits), 1.0)])
  overconfident = calibration.scale(np.exp(logits), 1 / 3)  # logits x 3
  temperature = calibration.fit_temperature(overconfident, labels)
  assert temperature == pytest.approx(3, rel=0.3)
  scaled = calibration.scale(overconfident, temperature)
  assert calibration.nll(scaled, labels) < calibration.nll(overconfident, labels) - 0.1
  assert calibration.ece(scaled, labels) < calibration.ece(overconfident, labels)
  np.testing.assert_array_equal(scaled.argmax(-1), overconfident.argmax(-1))


def test_final_evaluation_adds_intervals_and_calibration():
  rng = np.random.default_rng(1)
  outputs, ids, results = {}, {}, {}
  for split, n in (('validation', 60), ('test', 80)):
    labels = rng.integers(0, 2, n)
    probs = calibration.scale(0.3 + 0.4 * np.eye(2)[labels], 0.3)  # overconfident
    outputs[split] = (probs, labels)
    ids[split] = [f'Mass-Test_P_{i // 2:05d}_LEFT_CC/abnorm_{i % 2}' for i in range(n)]
    results[split] = {'accuracy': 1.0}
  config = {'evaluation': {'ci_resamples': 2000, 'ci_seed': 0, 'temperature_scaling': True}}
  evaluation.add_uncertainty(config, evaluators.get_evaluator(), results, outputs, ids,
                             ('benign', 'malignant'))
  test = results['test']
  assert set(test['ci95']) == set(HEADLINE) and test['ci_resamples'] == 2000
  assert test['ece'] == pytest.approx(calibration.ece(*outputs['test']))
  scaled = test['temperature_scaled']
  assert scaled['temperature'] == results['validation']['temperature_scaled']['temperature']
  assert scaled['temperature'] == pytest.approx(calibration.fit_temperature(
      *outputs['validation']))  # fitted on validation only
  assert scaled['nll'] < test['nll']


def test_report_cells_with_and_without_intervals():
  new = {'accuracy': 0.6131, 'auc': 0.7, 'ci95': {'accuracy': [0.5604, 0.664]}}
  assert report._with_ci(new, 'accuracy', None) == '61.3 (56.0–66.4)'
  assert report._with_ci(new, 'auc', 3) == '0.700'  # no interval: the point estimate
  assert report._with_ci({'accuracy': 0.6131}, 'accuracy', None) == '61.31'  # old workdir
  a = {'ci95': {'accuracy': [0.5, 0.6]}, 'ci_resamples': 2000}
  b = {'ci95': {'accuracy': [0.55, 0.7]}}
  c = {'ci95': {'accuracy': [0.65, 0.8]}}
  (text,) = report._overlaps([('a', a), ('b', b), ('c', c), ('old', {'accuracy': 0.5})])
  assert text.startswith('Test accuracy intervals that do not overlap: a vs c; every other')
  (text,) = report._overlaps([('a', a), ('b', b)])
  assert text.startswith('The test accuracy intervals of all 2 models and methods overlap')
  assert report._overlaps([('a', a), ('old', {'accuracy': 0.5})]) == []
