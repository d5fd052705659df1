"""tfds_cbis.splits on the real CSVs: leakage removal, patient disjointness, stratification,
the tfds and k-fold protocols."""

import collections
import csv

import pytest

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


def _csv_patients():
  """Every patient id of the four CSVs, read as TFDS reads them (csv.DictReader, stripped)."""
  patients = set()
  for path in cases.find_csvs(None)[0].values():
    with open(path) as f:
      patients.update(row['patient_id'].strip() for row in csv.DictReader(f))
  return patients


def test_tfds_protocol_is_tfds_own_patient_split():
  from tensorflow_datasets.image_classification import cbis_ddsm as tfds_cbis_ddsm
  test, train, valid = tfds_cbis_ddsm._split_patients({p: {} for p in _csv_patients()})
  ours = splits.tfds_patients(cases.load_cases(cases.find_csvs(None)[0]))
  assert (len(test), len(train), len(valid)) == (234, 1197, 135)  # TFDS's documented sizes
  assert {p for p, s in ours.items() if s == 'test'} == test
  assert {p for p, s in ours.items() if s == 'train'} == train
  assert {p for p, s in ours.items() if s == 'validation'} == valid


def test_kfold_folds_are_disjoint_complete_and_stratified():
  all_cases = cases.load_cases(cases.find_csvs(None)[0])
  folds = splits.kfold_patients(all_cases, 5)
  assert set(folds) == _csv_patients() and set(folds.values()) == set(range(5))
  malignant = {c.patient_id for c in all_cases
               if any(a.pathology == 'MALIGNANT' for a in c.abnormalities)}
  sizes = collections.Counter(folds.values())
  malignant_sizes = collections.Counter(f for p, f in folds.items() if p in malignant)
  assert max(sizes.values()) - min(sizes.values()) <= 1
  assert max(malignant_sizes.values()) - min(malignant_sizes.values()) <= 1
  assert splits.kfold_patients(all_cases, 5) == folds  # deterministic
  tests = set()
  for fold in range(5):
    split_of = splits.assign_patients('kfold5', all_cases, fold)
    assert {p for p, s in split_of.items() if s == 'test'} == {
        p for p, f in folds.items() if f == fold}
    rest = len(folds) - sizes[fold]
    assert collections.Counter(split_of.values())['validation'] == round(0.1 * rest)
    tests |= {p for p, s in split_of.items() if s == 'test'}
  assert tests == set(folds)


def test_official_protocol_is_the_built_plan():
  all_cases, plan = _plan()
  split_of = splits.assign_patients('official', all_cases)
  for c in all_cases:
    if c.subject in plan.split_of:
      assert split_of[c.patient_id] == plan.split_of[c.subject]
  assert collections.Counter(split_of.values()) == plan.patients


@pytest.mark.parametrize('protocol,fold,message', [
    ('kfold1', 0, "unknown split protocol 'kfold1'"),
    ('random', 0, "unknown split protocol 'random'; known: official, tfds, kfoldK"),
    ('tfds', 1, "fold 1 given, but protocol 'tfds' has no folds"),
    ('kfold3', 3, 'fold 3 is not in 0..2 of protocol kfold3'),
])
def test_bad_protocol_or_fold(protocol, fold, message):
  with pytest.raises(ValueError, match=message):
    splits.assign_patients(protocol, cases.load_cases(cases.find_csvs(None)[0]), fold)
