"""Paired comparison: two constructed runs with a known difference, the refusal of runs on
different examples, and RUN as a pipeline or an ensemble method or member."""

import json

import numpy as np
import pytest
from scipy import stats

from mammo_jax import bootstrap, compare, metrics
from mammo_jax import workdir as workdir_lib
from tests.mammo_jax.test_ensemble import write_run
from tests.mammo_jax.test_report import fake_ensemble

N = 40
IDS = np.array([f'Mass-Test_P_{i // 2:05d}_LEFT_CC/abnorm_{i % 2}' for i in range(N)])
LABEL4 = np.arange(N) % 4  # mass_vs_calc labels: label4 >= 2


def _run(path, wrong: int, ids=IDS):
  """A mass_vs_calc run right on every example but the first `wrong` (confidence 0.8)."""
  target = (LABEL4 >= 2).astype(int)
  pred = np.where(np.arange(N) < wrong, 1 - target, target)
  probs = 0.2 + 0.6 * np.eye(2)[pred] + 0.001 * np.arange(N)[:, None] * [0, 1]
  split = {'ids': ids, 'label4': LABEL4, 'probs': probs}
  write_run(str(path), 'mass_vs_calc', {s: split['ids'] for s in workdir_lib.SPLITS},
            {s: LABEL4 for s in workdir_lib.SPLITS}, {s: probs for s in workdir_lib.SPLITS})
  return str(path), probs, target


def test_compare_two_runs_with_a_known_difference(tmp_path, capsys):
  a, probs_a, target = _run(tmp_path / 'a', wrong=0)
  b, probs_b, _ = _run(tmp_path / 'b', wrong=10)
  out = tmp_path / 'cmp.json'
  assert compare.main([a, b, '--out', str(out)]) == 0
  result = json.loads(out.read_text())
  acc = result['accuracy']
  assert acc['difference'] == pytest.approx(0.25)  # 40/40 vs 30/40
  lo, hi = acc['ci95']
  assert 0 < lo < 0.25 < hi  # the 10 errors sit on 5 of 20 patients: clearly not zero
  assert acc['p_value'] < 0.05  # as the interval says; McNemar, per example, is smaller
  assert acc['mcnemar_p_value'] == pytest.approx(2 * 0.5 ** 10)  # 10 discordant, all A's
  assert (acc['only_a_right'], acc['only_b_right']) == (10, 0)
  auc = result['auc']
  expected = metrics.roc_auc(probs_a[:, 1], target == 1) - metrics.roc_auc(probs_b[:, 1],
                                                                           target == 1)
  assert auc['difference'] == pytest.approx(expected) and expected > 0
  assert auc['ci95'][0] <= expected <= auc['ci95'][1]
  assert (auc['delong_se'], auc['delong_p_value']) == compare.delong(probs_a, probs_b, target, 2)
  assert set(result) >= {'accuracy', 'auc', 'split', 'examples', 'patients', 'resamples'}
  assert (result['examples'], result['patients'], result['resamples']) == (40, 20, 2000)
  printed = capsys.readouterr().out
  assert 'accuracy' in printed and '+0.2500' in printed and 'McNemar' in printed

  # A run compared with itself: no difference, p = 1.
  same = compare.compare(compare.load(a), compare.load(a))
  assert same['accuracy']['difference'] == 0 and same['accuracy']['ci95'] == [0.0, 0.0]
  assert same['accuracy']['p_value'] == 1.0 and same['accuracy']['mcnemar_p_value'] == 1.0
  # The order of the examples does not matter: they are aligned by id.
  shuffled = compare.load(b)
  order = np.random.default_rng(0).permutation(N)
  shuffled = compare.Predictions(b, shuffled.ids[order], shuffled.pred[order],
                                 shuffled.scores[order], shuffled.labels[order],
                                 shuffled.class_names, shuffled.evaluator)
  again = compare.compare(compare.load(a), shuffled)
  assert again['accuracy'] == result['accuracy'] and again['auc'] == result['auc']


def test_compare_refuses_runs_on_different_examples(tmp_path, capsys):
  a, _, _ = _run(tmp_path / 'a', wrong=0)
  other = IDS.copy()
  other[0] = 'Mass-Test_P_09999_LEFT_CC/abnorm_1'
  b, _, _ = _run(tmp_path / 'b', wrong=0, ids=other)
  assert compare.main([a, b]) == 1
  err = capsys.readouterr().err.strip()
  assert err == (f'mammo_jax.compare: error: {a} and {b} were evaluated on different test '
                 f'examples (40 vs 40, 39 in common); a paired comparison needs two models '
                 f'evaluated on the same dataset')
  assert compare.main([a, str(tmp_path / 'nothing')]) == 1
  assert 'holds no finished run' in capsys.readouterr().err


def test_compare_resolves_pipelines_and_ensemble_methods(tmp_path, monkeypatch):
  a, _, _ = _run(tmp_path / 'p' / 'fe', wrong=5)
  b, _, _ = _run(tmp_path / 'p' / 'ft', wrong=0)
  workdir_lib.write_json(str(tmp_path / 'p' / 'pipeline.json'), {'fe': {}, 'ft': {}})
  result = compare.compare(compare.load(a), compare.load(str(tmp_path / 'p')))
  assert result['accuracy']['difference'] == pytest.approx(-5 / 40)  # the last stage: ft

  summary = fake_ensemble(tmp_path / 'e', monkeypatch, synthetic=True)
  method = summary['methods'][-1]  # weighted: the recorded weights are used
  assert method['rule'] == 'weighted'
  got = compare.load(f'{tmp_path}/e:{method["name"]}')
  assert float(np.mean(got.pred == got.labels)) == pytest.approx(method['test']['accuracy'])
  member = compare.load(f'{tmp_path}/e:m1')
  result = compare.compare(member, got)
  assert result['accuracy']['difference'] == pytest.approx(
      summary['members']['m1']['test']['accuracy'] - method['test']['accuracy'])
  with pytest.raises(ValueError, match='has no method or member \'nope\''):
    compare.load(f'{tmp_path}/e:nope')
  with pytest.raises(FileNotFoundError, match='an ensemble needs a method or member'):
    compare.load(f'{tmp_path}/e')


def test_paired_p_value():
  # Differences centred on the observed 0.1: |d - 0.1| >= 0.1 for 0.0 and 0.2 of these four.
  assert bootstrap.paired_p_value(np.array([0.0, 0.1, 0.1, 0.2]), 0.1) == pytest.approx(3 / 5)
  assert bootstrap.paired_p_value(np.array([np.nan]), 0.1) is None


def test_delong_on_a_hand_computed_case():
  # Positives (label 1) then negatives. A: V10 = (1, 1/2), V01 = (1/2, 1), AUC 3/4.
  # B: V10 = (1/2, 0), V01 = (1/2, 0), AUC 1/4. Differences: V10 (1/2, 1/2), sample variance 0;
  # V01 (0, 1), sample variance 1/2; var = 0 / 2 + (1/2) / 2 = 1/4, so se 1/2, z = 1.
  labels = np.array([1, 1, 0, 0])
  two = lambda p: np.stack([1 - np.array(p), np.array(p)], axis=1)  # noqa: E731
  se, p = compare.delong(two([0.9, 0.4, 0.5, 0.1]), two([0.6, 0.2, 0.3, 0.7]), labels, 2)
  assert se == pytest.approx(0.5) and p == pytest.approx(0.31731050786291415)  # 2 (1 - Phi(1))


def _delong_pairwise(a, b, labels, classes):
  """An independent DeLong: V10 and V01 from every positive-negative pair (not from ranks), the
  covariance matrix of the per-class AUCs of both models, and the contrast of their means."""
  groups = np.unique(labels)
  influences = []  # per (model, class): the example's (V - AUC) / group size
  for scores in (a, b):
    for c in classes:
      pos, neg = scores[labels == c, c], scores[labels != c, c]
      psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
      auc = psi.mean()
      v = np.empty(len(labels))
      v[labels == c] = (psi.mean(axis=1) - auc) / len(pos)
      v[labels != c] = (psi.mean(axis=0) - auc) / len(neg)
      influences.append(v)
  influences = np.array(influences)
  cov = sum(np.sum(labels == y) * np.cov(influences[:, labels == y]) for y in groups)
  contrast = np.r_[np.full(len(classes), 1 / len(classes)), np.full(len(classes),
                                                                     -1 / len(classes))]
  return float(np.sqrt(contrast @ cov @ contrast))


@pytest.mark.parametrize('k', [2, 4])
def test_delong_equals_an_independent_pairwise_implementation(k):
  rng = np.random.default_rng(k)
  labels = rng.integers(0, k, 60)
  a = rng.random((60, k)).round(1) + 0.3 * np.eye(k)[labels]  # rounded: ties too
  b = rng.random((60, k)).round(1) + 0.1 * np.eye(k)[labels]
  classes = [1] if k == 2 else list(range(k))
  se, p = compare.delong(a, b, labels, k)
  assert se == pytest.approx(_delong_pairwise(a, b, labels, classes), rel=1e-9)
  difference = np.mean([metrics.roc_auc(a[:, c], labels == c) - metrics.roc_auc(b[:, c],
                                                                                 labels == c)
                        for c in classes])
  assert p == pytest.approx(2 * stats.norm.sf(abs(difference) / se), rel=1e-9)
  assert compare.delong(a, a, labels, k) == (0.0, 1.0)  # a model against itself
