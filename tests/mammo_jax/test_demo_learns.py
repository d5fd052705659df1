"""The demo (configs/ensemble4.py, variant `demo`): its data and members, and that they learn.

The slow test trains a scratch member exactly as `make demo` does (its resolved config, the
demo's synthetic data built once) and requires a test balanced-accuracy interval above chance
(0.25 for four classes) and predictions of more than two classes, which the demo's members
before its demo data and settings did not reach (every member predicted two classes). The
three take about 4.5 minutes on 2 cores, the data's build included.
"""

import pytest

from mammo_jax import augment
from mammo_jax import train
from mammo_jax.config_lib import ensembles
from tests.conftest import load_config

SCRATCH = ('m1', 'm2', 'm3')


def _member(name: str, arg: str = 'demo'):
  config = load_config('ensemble4', arg)
  return ensembles.member_config(name, config.ensemble.members[name], config.data,
                                 config.ensemble.root)


def test_demo_data_and_settings_stay_out_of_the_study_and_smoke_variants():
  for name in SCRATCH:
    demo, study = _member(name), _member(name, 'study')
    assert demo.data.synthetic.difficulty == 0.25 and not augment.AugmentSpec.from_config(
        demo.augment).enabled
    assert study.data.synthetic.difficulty == 0.5 and augment.AugmentSpec.from_config(
        study.augment).enabled
    assert (study.optimizer.name, study.batch_size, study.num_epochs) == ('rmsprop', 128, 500)
  assert _member('m1', 'smoke').data.synthetic.difficulty == 0.5  # the tests' shared smoke set


@pytest.mark.slow
@pytest.mark.parametrize('name', SCRATCH)
def test_demo_scratch_member_learns_four_classes(name, tmp_path, data_cache):
  config = _member(name)
  config.unlock()
  config.data.cache_dir = data_cache
  config.lock()
  _, summary = train.train_and_evaluate(config, str(tmp_path / name))
  test = summary['test']
  print(f'demo {name}: test accuracy {test["accuracy"]:.3f}, balanced accuracy '
        f'{test["balanced_accuracy"]:.3f} {test["ci95"]["balanced_accuracy"]}')
  assert test['count'] == summary['examples']['test'] > 50
  assert test['ci95']['balanced_accuracy'][0] > 0.25
  predicted = [sum(col) for col in zip(*test['confusion_matrix'])]
  assert sum(p > 0 for p in predicted) >= 3, test['confusion_matrix']
