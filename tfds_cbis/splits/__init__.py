"""Patient-level split protocols: which patient is in train, validation or test.

Three named protocols, each a pure function of the four description CSVs:
  official  test is the official test CSVs. Patients of any official test CSV are removed from
            train and validation (the official split leaks 31 patients across mass and
            calcification). validation is a label-stratified, patient-level share of the
            remaining official-train patients, chosen by a stable hash, so it is the same on
            every machine and in every Beam worker. The cbis_ddsm builder builds these splits,
            and a fourth, `leaking`: the leaking patients' official-train images, which this
            protocol leaves out and the others place by patient.
  tfds      TFDS's patient split of curated_breast_imaging_ddsm/patches: the sorted patient ids
            of all four CSVs, shuffled by numpy's legacy generator seeded 0x12345, cut at
            15 % test, 76.5 % train, the rest validation.
  kfoldK    K patient-disjoint folds over all patients, stratified by malignancy (a patient with
            any malignant abnormality is malignant) and dealt in stable-hash order. Fold f is
            the test split; validation is a stratified share of the other folds' patients.

`python -m tfds_cbis.splits --protocol official|tfds|kfold5 --csv_dir DIR --out FILE.csv`
writes a protocol's patient list (`patient_id,split`, or `patient_id,fold` for k-fold; cli.py).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence

import numpy as np

from tfds_cbis import cases as cases_lib

PROTOCOLS = ('official', 'tfds', 'kfoldK')  # K an integer >= 2, e.g. kfold5
SPLITS = ('train', 'validation', 'test')
# The built split of the official-train images of patients who are also in an official test
# CSV: in no split of the official protocol, in their patient's split under the others.
LEAKING = 'leaking'
TFDS_SEED = 0x12345
TFDS_FRACTIONS = {'test': 0.15, 'train': 0.765}  # validation: the rest (0.085)


@dataclasses.dataclass
class SplitPlan:
  split_of: dict[str, str]  # case subject -> 'train' | 'validation' | 'test'
  excluded_patients: list[str]  # official-train patients dropped because they are in test
  excluded_subjects: list[str]  # their official-train images
  patients: dict[str, int]  # split -> number of patients


def _stable_order(patient: str, salt: str) -> str:
  return hashlib.sha256(f'{salt}/{patient}'.encode()).hexdigest()


def _patient_stratum(labels: Sequence[str]) -> str:
  """A patient's dominant label (most abnormalities; ties broken by label order)."""
  counts = collections.Counter(labels)
  return min(counts, key=lambda l: (-counts[l], cases_lib.LABEL_NAMES.index(l)))


def _labels_of(all_cases: Sequence[cases_lib.Case], official_split: str | None = None
               ) -> dict[str, list[str]]:
  """patient -> the 4-class labels of their abnormalities (of one official split, if given)."""
  labels_of: dict[str, list[str]] = collections.defaultdict(list)
  for c in all_cases:
    if official_split is None or c.official_split == official_split:
      labels_of[c.patient_id].extend(
          cases_lib.label_name(c.abnormality_type, a.pathology) for a in c.abnormalities)
  return labels_of


def stratified_share(labels_of: Mapping[str, Sequence[str]], fraction: float,
                     salt: str = 'cbis_ddsm') -> set[str]:
  """round(fraction × patients) patients, stratified by dominant label, in stable-hash order."""
  strata: dict[str, list[str]] = collections.defaultdict(list)
  for patient, labels in labels_of.items():
    strata[_patient_stratum(labels)].append(patient)
  # Largest-remainder rounding per stratum, so the total is round(fraction × patients).
  total = round(fraction * len(labels_of))
  quotas = {s: fraction * len(p) for s, p in strata.items()}
  take = {s: int(q) for s, q in quotas.items()}
  by_remainder = sorted(quotas, key=lambda s: (-(quotas[s] - take[s]), s))
  for s in by_remainder[:max(0, total - sum(take.values()))]:
    take[s] += 1
  chosen = set()
  for s, patients in strata.items():
    chosen.update(sorted(patients, key=lambda p: _stable_order(p, salt))[:take[s]])
  return chosen


def plan_splits(all_cases: Sequence[cases_lib.Case], validation_fraction: float = 0.1,
                salt: str = 'cbis_ddsm') -> SplitPlan:
  """The official protocol per case (image); every patient lands in exactly one split."""
  _check_fraction(validation_fraction)
  test_patients = {c.patient_id for c in all_cases if c.official_split == 'test'}
  excluded_subjects = sorted(c.subject for c in all_cases
                             if c.official_split == 'train' and c.patient_id in test_patients)
  labels_of = {p: l for p, l in _labels_of(all_cases, 'train').items()
               if p not in test_patients}
  validation = stratified_share(labels_of, validation_fraction, salt)
  split_of = {}
  for c in all_cases:
    if c.official_split == 'test':
      split_of[c.subject] = 'test'
    elif c.patient_id not in test_patients:
      split_of[c.subject] = 'validation' if c.patient_id in validation else 'train'
  excluded_patients = sorted({c.patient_id for c in all_cases
                              if c.official_split == 'train' and c.patient_id in test_patients})
  return SplitPlan(
      split_of=split_of, excluded_patients=excluded_patients,
      excluded_subjects=excluded_subjects,
      patients={'train': len(labels_of) - len(validation), 'validation': len(validation),
                'test': len(test_patients)})


def _check_fraction(fraction: float) -> None:
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1), got {fraction}')


# ---------------------------------------------------------------------------------------------
# Protocols as patient lists.

def parse_protocol(name: str) -> int | None:
  """The K of 'kfoldK' (None for official and tfds); ValueError for an unknown name."""
  if name in ('official', 'tfds'):
    return None
  match = re.fullmatch(r'kfold([0-9]+)', name)
  if not match or int(match.group(1)) < 2:
    raise ValueError(f'unknown split protocol {name!r}; known: official, tfds, kfoldK with '
                     'K >= 2 (e.g. kfold5)')
  return int(match.group(1))


def official_patients(all_cases: Sequence[cases_lib.Case],
                      validation_fraction: float = 0.1) -> dict[str, str]:
  """patient -> split of the official protocol. A leaking patient is 'test'; their
  official-train images belong to no split."""
  plan = plan_splits(all_cases, validation_fraction)
  out = {}
  for c in all_cases:
    if c.subject in plan.split_of:
      out[c.patient_id] = plan.split_of[c.subject]
  return out


def tfds_patients(all_cases: Sequence[cases_lib.Case]) -> dict[str, str]:
  """patient -> split as TFDS's curated_breast_imaging_ddsm/patches assigns it."""
  patients = sorted({c.patient_id for c in all_cases})
  np.random.RandomState(TFDS_SEED).shuffle(patients)  # = np.random.seed + np.random.shuffle
  cut_test = int(TFDS_FRACTIONS['test'] * len(patients))
  cut_train = cut_test + int(TFDS_FRACTIONS['train'] * len(patients))
  return {p: ('test' if i < cut_test else 'train' if i < cut_train else 'validation')
          for i, p in enumerate(patients)}


def kfold_patients(all_cases: Sequence[cases_lib.Case], k: int,
                   salt: str = 'cbis_ddsm') -> dict[str, int]:
  """patient -> fold (0..k-1): malignant patients, then benign ones, each in stable-hash order,
  dealt round robin, so every fold's size and malignant count is within one of the others'."""
  labels_of = _labels_of(all_cases)
  malignant = {p for p, labels in labels_of.items() if any(l.startswith('MALIGNANT')
                                                           for l in labels)}
  order = sorted(labels_of, key=lambda p: (p not in malignant, _stable_order(p, salt)))
  return {p: i % k for i, p in enumerate(order)}


def assign_patients(protocol: str, all_cases: Sequence[cases_lib.Case], fold: int = 0,
                    validation_fraction: float = 0.1) -> dict[str, str]:
  """patient -> 'train' | 'validation' | 'test' under `protocol` (and `fold` for kfoldK)."""
  k = parse_protocol(protocol)
  _check_fraction(validation_fraction)
  if k is None and fold != 0:
    raise ValueError(f'fold {fold} given, but protocol {protocol!r} has no folds (use 0)')
  if protocol == 'official':
    return official_patients(all_cases, validation_fraction)
  if protocol == 'tfds':
    return tfds_patients(all_cases)
  if not 0 <= fold < k:
    raise ValueError(f'fold {fold} is not in 0..{k - 1} of protocol {protocol}')
  folds = kfold_patients(all_cases, k)
  labels_of = _labels_of(all_cases)
  rest = {p: labels_of[p] for p, f in folds.items() if f != fold}
  validation = stratified_share(rest, validation_fraction, salt=f'cbis_ddsm/{protocol}/{fold}')
  return {p: 'test' if f == fold else 'validation' if p in validation else 'train'
          for p, f in folds.items()}


def patient_list(protocol: str, all_cases: Sequence[cases_lib.Case]) -> tuple[str, dict]:
  """(column name, {patient: value}) of the CLI's CSV: ('split', ...) or ('fold', ...)."""
  k = parse_protocol(protocol)
  if k is not None:
    return 'fold', kfold_patients(all_cases, k)
  return 'split', assign_patients(protocol, all_cases)
