"""Split protocols when loading (input_pipeline.load_splits): one build serves every protocol and
fold; the official protocol is the build's own splits; protocol and fold are a run's identity."""

import json
import os
import types

import numpy as np
import pytest

from mammo_jax import config_checks
from mammo_jax import input_pipeline
from mammo_jax import workdir
from tests.conftest import load_config
from tfds_cbis import build_report
from tfds_cbis import cases
from tfds_cbis import csv_check
from tfds_cbis import splits


@pytest.fixture(scope='module')
def built(data_cache):
  config = load_config('scratch2', 'smoke')
  config.unlock()
  config.data.cache_dir = data_cache
  config.data.num_workers = 1
  builder = input_pipeline.prepare_builder(config.data)
  patient_of = {}
  for s in builder.info.splits:
    arrays = input_pipeline.load_split(builder, s, ('id', 'patient_id'))
    patient_of.update({i.decode(): p.decode() for i, p in zip(arrays['id'], arrays['patient_id'])})
  return config, builder, patient_of


def _files(directory):
  return {os.path.join(d, n): os.path.getmtime(os.path.join(d, n))
          for d, _, names in os.walk(directory) for n in names}


def _ids(loaded):
  return {s: [i.decode() for i in d['id']] for s, d in loaded.items()}


def test_official_protocol_is_the_build_and_its_patient_list(built):
  config, builder, patient_of = built
  loaded, without = input_pipeline.load_splits(builder, config.data)
  assert without == {'train': 0, 'validation': 0, 'test': 0}
  official = splits.assign_patients('official', input_pipeline.build_cases(builder))
  for s, ids in _ids(loaded).items():
    built_split = input_pipeline.load_inputs(builder, s)[0]
    assert ids == [i.decode() for i in built_split['id']]
    np.testing.assert_array_equal(loaded[s]['image'], built_split['image'])
    assert {official[patient_of[i]] for i in ids} == {s}


def test_kfold_and_tfds_repartition_every_example_by_patient_without_rebuilding(built):
  config, builder, patient_of = built
  before = _files(builder.data_dir)
  all_cases = input_pipeline.build_cases(builder)
  config.data.protocol = 'kfold2'
  tests = []
  for fold in (0, 1):
    config.data.fold = fold
    loaded, _ = input_pipeline.load_splits(builder, config.data)
    split_of = splits.assign_patients('kfold2', all_cases, fold)
    ids = _ids(loaded)
    assert sorted(sum(ids.values(), [])) == sorted(patient_of)  # each example exactly once
    for s, split_ids in ids.items():
      assert split_ids == sorted(split_ids)
      assert {split_of[patient_of[i]] for i in split_ids} == {s}
      assert len(loaded[s]['label']) == len(split_ids) == len(loaded[s]['image'])
    tests.append(set(ids['test']))
  assert not tests[0] & tests[1] and tests[0] | tests[1] == set(patient_of)
  config.data.protocol, config.data.fold = 'tfds', 0
  loaded, _ = input_pipeline.load_splits(builder, config.data)
  tfds_split = splits.tfds_patients(all_cases)
  for s, split_ids in _ids(loaded).items():
    assert {tfds_split[patient_of[i]] for i in split_ids} == {s}
  assert _files(builder.data_dir) == before  # nothing was rebuilt or rewritten


def test_protocol_and_fold_are_part_of_a_runs_identity_unless_default():
  config = load_config('scratch2', 'smoke')
  default = workdir.config_fingerprint(workdir.config_dict(config))
  assert not any(k.startswith('data.protocol') or k == 'data.fold' for k in default)
  old_run = workdir.config_dict(config)  # a config.json from before the fields existed
  del old_run['data']['protocol'], old_run['data']['fold']
  assert workdir.config_fingerprint(old_run) == default
  config.data.protocol = 'kfold5'
  hashes = set()
  for fold in (0, 1):
    config.data.fold = fold
    hashes.add(workdir.config_hash(config))
  assert len(hashes) == 2 and workdir.config_hash(load_config('scratch2', 'smoke')) not in hashes


@pytest.mark.parametrize('protocol,fold,message', [
    ('kfold', 0, r"^config.data.protocol: unknown split protocol 'kfold'; known: official, "),
    ('kfold5', 5, r'^config.data.fold=5: accepted values are integers 0..4 \(the test fold\)'),
    ('official', 1, r'^config.data.fold=1: accepted values are 0 \(protocol official has no '),
])
def test_config_check_names_a_bad_protocol_or_fold(protocol, fold, message):
  config = load_config('scratch2', 'smoke')
  config.data.protocol, config.data.fold = protocol, fold
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config)


def _builder_with_report(tmp_path, report):
  (tmp_path / build_report.REPORT_NAME).write_text(json.dumps(report))
  return types.SimpleNamespace(data_dir=str(tmp_path))


def test_build_cases_are_the_csvs_the_build_read(tmp_path):
  with pytest.raises(ValueError, match='the build records no description CSVs .it predates '
                                       'csv_check.; delete it to build it again'):
    input_pipeline.build_cases(_builder_with_report(tmp_path, {}))
  packaged = cases.find_csvs(None)[0]
  check = csv_check.check_csvs(packaged, 'packaged')
  moved = {name: dict(f, path=str(tmp_path / 'gone' / name)) for name, f in check['files'].items()}
  builder = _builder_with_report(tmp_path, {'csv_check': {'files': moved}})
  assert input_pipeline.build_cases(builder) == cases.load_cases(packaged)  # official: packaged
  own = tmp_path / 'own.csv'  # a CSV of the user's own, edited since the build
  own.write_text('edited')
  name = 'mass_case_description_test_set.csv'
  moved[name] = dict(moved[name], path=str(own), sha256='0' * 64)
  builder = _builder_with_report(tmp_path, {'csv_check': {'files': moved}})
  with pytest.raises(ValueError, match=f'^{own}, the CSV {tmp_path} was built from, is missing '
                                       'or changed'):
    input_pipeline.build_cases(builder)


def test_leaking_patients_official_train_images_are_placed_by_patient_except_under_official(
    built):
  config, builder, patient_of = built
  leaking = {i.decode() for i in input_pipeline.load_split(builder, 'leaking', ('id',))['id']}
  all_cases = input_pipeline.build_cases(builder)
  official = splits.plan_splits(all_cases)
  assert leaking and {patient_of[i] for i in leaking} <= set(official.excluded_patients)
  assert {i.split('/')[0] for i in leaking} <= set(official.excluded_subjects)
  config.data.protocol, config.data.fold = 'official', 0
  loaded, _ = input_pipeline.load_splits(builder, config.data)
  assert not leaking & set(sum(_ids(loaded).values(), []))  # official: in no split
  for protocol in ('tfds', 'kfold5'):
    config.data.protocol = protocol
    ids = _ids(input_pipeline.load_splits(builder, config.data)[0])
    split_of = splits.assign_patients(protocol, all_cases)
    for i in leaking:  # exactly once, in the split of their patient
      assert [s for s, split_ids in ids.items() if i in split_ids] == [split_of[patient_of[i]]]
