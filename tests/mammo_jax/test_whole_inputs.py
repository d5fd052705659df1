"""input_pipeline.load_splits on a whole-image build (cbis_ddsm/whole_288x224): the official
splits and the load-time protocols work on whole examples as on patches; masks load for
evaluation."""

import ml_collections
import numpy as np
import pytest

from mammo_jax import input_pipeline
from tfds_cbis import splits
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib
from tests.tfds_cbis.test_cbis_ddsm_builder import build


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  dummy = builder_lib.__file__.replace('cbis_ddsm_dataset_builder.py', 'dummy_data')
  return build(dummy, tmp_path_factory.mktemp('tfds'), 'whole_288x224')


@pytest.mark.parametrize('protocol, fold', [('official', 0), ('tfds', 0)])
def test_load_splits_assigns_whole_views_by_patient(builder, protocol, fold):
  data = ml_collections.ConfigDict(dict(protocol=protocol, fold=fold, inputs='image',
                                        image_size=0))
  loaded, without = input_pipeline.load_splits(builder, data)
  assert without == {'train': 0, 'validation': 0, 'test': 0}
  patient_split = splits.assign_patients(protocol, input_pipeline.build_cases(builder),
                                          fold)
  everything = {}
  for s in builder.info.splits:
    arrays = input_pipeline.load_split(builder, s, ('id', 'patient_id', 'mask', 'label'))
    everything.update({i: (p.decode(), m, l) for i, p, m, l in zip(
        arrays['id'], arrays['patient_id'], arrays['mask'], arrays['label'])})
  assert sum(len(d['id']) for d in loaded.values()) == len(everything) == 20
  for s, d in loaded.items():
    assert d['image'].shape[1:] == (288, 224, 1) and d['image'].dtype == np.uint16
    for i, label in zip(d['id'], d['label']):
      patient, mask, want = everything[i]
      assert patient_split[patient] == s and label == want
      assert mask.shape == (288, 224, 1) and mask.max() == 1
