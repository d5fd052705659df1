"""tfds_cbis.splits on the real CSVs: leakage removal, patient disjointness, stratification."""

import collections

from tfds_cbis import cases
from tfds_cbis import splits


def _plan(fraction=0.1):
  all_cases = cases.load_cases(cases.find_csvs(None)[0])
  return all_cases, splits.plan_splits(all_cases, fraction)


def test_official_leak_is_removed_and_reported():
  all_cases, plan = _plan()
  assert len(plan.excluded_patients) == 31  # 18 calc-train/mass-test + 13 mass-train/calc-test
  test_patients = {c.patient_id for c in all_cases if c.official_split == 'test'}
  assert set(plan.excluded_patients) <= test_patients
  assert len(plan.split_of) == 3103 - len(plan.excluded_subjects)


def test_every_patient_is_in_one_split_and_test_is_official():
  all_cases, plan = _plan()
  patient_splits = collections.defaultdict(set)
  for c in all_cases:
    if c.subject in plan.split_of:
      patient_splits[c.patient_id].add(plan.split_of[c.subject])
      if c.official_split == 'test':
        assert plan.split_of[c.subject] == 'test'
  assert all(len(s) == 1 for s in patient_splits.values())


def test_validation_is_a_stratified_tenth_of_train_patients():
  all_cases, plan = _plan()
  n = plan.patients['train'] + plan.patients['validation']
  assert plan.patients['validation'] == round(0.1 * n)
  labels = collections.defaultdict(collections.Counter)
  for c in all_cases:
    split = plan.split_of.get(c.subject)
    if split in ('train', 'validation'):
      for a in c.abnormalities:
        labels[split][cases.label_name(c.abnormality_type, a.pathology)] += 1
  for name in cases.LABEL_NAMES:
    share = labels['validation'][name] / (labels['validation'][name] + labels['train'][name])
    assert 0.06 < share < 0.14, (name, share)


def test_plan_is_deterministic_and_salt_dependent():
  all_cases, plan = _plan()
  assert splits.plan_splits(all_cases).split_of == plan.split_of
  other = splits.plan_splits(all_cases, salt='other')
  assert other.split_of != plan.split_of
  assert other.patients == plan.patients
