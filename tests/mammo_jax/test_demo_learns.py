"""The demo (configs/ensemble4.py, variant `demo`): its data and members, and that they learn.

The slow test trains each member exactly as `make demo` does (its resolved config, the VGG16's
one stage; the demo's synthetic data built once) and requires a test balanced-accuracy
interval above chance (0.25 for four classes), which the demo's members before its demo data
and settings did not reach (every member predicted two classes; the VGG16, on its frozen random
base with the study's inputs and learning rate, only the most frequent one). The scratch
members must also predict more than two classes. The four, the data's build included, took
13 min 23 s on the 2-core machine at load 13 to 17 (4 min 50 s of CPU time).
"""

import pytest

from mammo_jax import augment
from mammo_jax import pipeline
from mammo_jax import train
from mammo_jax.config_lib import ensembles
from tests.conftest import load_config

SCRATCH = ('m1', 'm2', 'm3')


def _member(name: str, arg: str = 'demo'):
  config = load_config('ensemble4', arg)
  return ensembles.member_config(name, config.ensemble.members[name], config.data,
                                 config.ensemble.root)


def _trained(name: str):
  """What the demo trains for member `name`: its config, or its pipeline's one stage."""
  member = _member(name)
  if not member.get('pipeline'):
    return member
  (_, stage), = pipeline.stage_configs(member)
  return stage


def test_demo_data_and_settings_stay_out_of_the_study_and_smoke_variants():
  for name in (*SCRATCH, 'vgg'):
    demo, study = _trained(name), _member(name, 'study')
    assert (demo.data.synthetic.difficulty, demo.data.synthetic.patients,
            demo.data.image_size) == (0.25, 400, 64)
    assert (study.data.synthetic.difficulty, study.data.synthetic.patients,
            study.data.image_size) == (0.5, 160, 0)
    assert not augment.AugmentSpec.from_config(demo.augment).enabled
  for name in SCRATCH:
    study = _member(name, 'study')
    assert augment.AugmentSpec.from_config(study.augment).enabled
    assert (study.optimizer.name, study.batch_size, study.num_epochs) == ('rmsprop', 128, 500)
  vgg, study = _trained('vgg'), _member('vgg', 'study')
  assert (vgg.model.pretrained, vgg.model.trainable, vgg.optimizer.name) == ('', 'fc,logits',
                                                                             'adam')
  assert study.pipeline == 'fe_fc128,ft1,ft2,ft3' and study.model.pretrained
  assert _member('m1', 'smoke').data.synthetic.difficulty == 0.5  # the tests' shared smoke set


@pytest.mark.slow
@pytest.mark.parametrize('name', (*SCRATCH, 'vgg'))
def test_demo_member_learns_four_classes(name, tmp_path, data_cache):
  config = _trained(name)
  config.unlock()
  config.data.cache_dir = data_cache
  config.lock()
  _, summary = train.train_and_evaluate(config, str(tmp_path / name))
  test = summary['test']
  print(f'demo {name}: test accuracy {test["accuracy"]:.3f}, balanced accuracy '
        f'{test["balanced_accuracy"]:.3f} {test["ci95"]["balanced_accuracy"]}')
  assert test['count'] == summary['examples']['test'] > 150
  assert test['ci95']['balanced_accuracy'][0] > 0.25
  predicted = [sum(col) for col in zip(*test['confusion_matrix'])]
  if name in SCRATCH:
    assert sum(p > 0 for p in predicted) >= 3, test['confusion_matrix']
