"""Patient-level train / validation / test splits.

test is the official test CSVs. Patients of any official test CSV are removed from train and
validation (the official split leaks 31 patients across mass and calcification). validation
is a label-stratified, patient-level share of the remaining official-train patients, chosen by
a stable hash, so it is the same on every machine and in every Beam worker.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
from collections.abc import Sequence

from tfds_cbis import cases as cases_lib


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


def plan_splits(all_cases: Sequence[cases_lib.Case], validation_fraction: float = 0.1,
                salt: str = 'cbis_ddsm') -> SplitPlan:
  """Assigns each case (image) to a split; every patient lands in exactly one split."""
  if not 0.0 <= validation_fraction < 1.0:
    raise ValueError(f'validation_fraction must be in [0, 1), got {validation_fraction}')
  test_patients = {c.patient_id for c in all_cases if c.official_split == 'test'}
  labels_of: dict[str, list[str]] = collections.defaultdict(list)
  excluded_subjects, excluded_patients = [], set()
  for c in all_cases:
    if c.official_split != 'train':
      continue
    if c.patient_id in test_patients:
      excluded_subjects.append(c.subject)
      excluded_patients.add(c.patient_id)
      continue
    labels_of[c.patient_id].extend(
        cases_lib.label_name(c.abnormality_type, a.pathology) for a in c.abnormalities)
  strata: dict[str, list[str]] = collections.defaultdict(list)
  for patient, labels in labels_of.items():
    strata[_patient_stratum(labels)].append(patient)
  # Largest-remainder rounding per stratum, so the total is round(fraction × patients).
  total = round(validation_fraction * len(labels_of))
  quotas = {s: validation_fraction * len(p) for s, p in strata.items()}
  take = {s: int(q) for s, q in quotas.items()}
  by_remainder = sorted(quotas, key=lambda s: (-(quotas[s] - take[s]), s))
  for s in by_remainder[:max(0, total - sum(take.values()))]:
    take[s] += 1
  validation = set()
  for s, patients in strata.items():
    validation.update(sorted(patients, key=lambda p: _stable_order(p, salt))[:take[s]])
  split_of = {}
  for c in all_cases:
    if c.official_split == 'test':
      split_of[c.subject] = 'test'
    elif c.patient_id not in test_patients:
      split_of[c.subject] = 'validation' if c.patient_id in validation else 'train'
  return SplitPlan(
      split_of=split_of, excluded_patients=sorted(excluded_patients),
      excluded_subjects=sorted(excluded_subjects),
      patients={'train': len(labels_of) - len(validation), 'validation': len(validation),
                'test': len(test_patients)})
