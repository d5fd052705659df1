"""The runner and evaluator tables: every entry resolves and behaves; unknown names are refused.
(The model registry has its own loop in test_models.py.)"""

import inspect

import ml_collections
import numpy as np
import pytest

from mammo_jax import evaluators
from mammo_jax import runners
from tests.conftest import load_config


@pytest.mark.parametrize('name', sorted(runners.RUNNERS))
def test_every_runner_resolves_to_run_config_workdir(name):
  run = runners.get_runner(name)
  assert list(inspect.signature(run).parameters)[:2] == ['config', 'workdir']


CONFIGS = [  # one config file of each runner (and family)
    ('scratch2', 'smoke', 'train'), ('dual', 'smoke', 'train'),
    ('vgg16_2', 'pipeline,smoke', 'stages'), ('vgg16_2', 'fe,smoke', 'train'),
    ('mobilenet_2', 'fe,smoke', 'train'),
    ('ensemble4', 'smoke', 'ensemble'), ('composite4', 'smoke', 'ensemble'),
    ('lr_range', 'smoke', 'lr_range'), ('resnet50_2', 'fe,smoke', 'train'),
    ('cv', 'configs/scratch2.py:smoke', 'cv'), ('repeat', 'configs/benmal.py:smoke', 'repeat'),
    ('shen_patch', 'vgg16,smoke', 'stages'), ('shen_patch', 'vgg16,demo', 'stages'),
]


@pytest.mark.parametrize('config_file,arg,runner', CONFIGS)
def test_configs_name_their_runner(config_file, arg, runner):
  assert runners.runner_name(load_config(config_file, arg)) == runner


def test_unknown_runner_is_refused_with_the_known_ones(tmp_path):
  config = ml_collections.ConfigDict({'runner': 'kfold'})
  with pytest.raises(ValueError, match='unknown config.runner .kfold.; known: train, stages'):
    runners.run(config, str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='stages runner needs config.pipeline'):
    runners.run(ml_collections.ConfigDict({'runner': 'stages'}), str(tmp_path / 'w'))


@pytest.mark.parametrize('name', sorted(evaluators.EVALUATORS))
def test_every_evaluator_gives_its_headline_metrics(name):
  evaluator = evaluators.get_evaluator(name)
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
  labels = np.array([0, 1, 1, 1])
  result = evaluator.evaluate(probs, labels, ('MASS', 'CALCIFICATION'))
  for key in evaluator.headline:
    assert isinstance(result[key], float), key
  assert result['accuracy'] == 0.75 and result['auc'] == 1.0


def test_evaluator_of_config_and_hard_decisions():
  assert evaluators.of_config(ml_collections.ConfigDict({})).name == evaluators.DEFAULT
  with pytest.raises(ValueError, match='unknown evaluator .auc_only.; known: classification'):
    evaluators.of_config(ml_collections.ConfigDict({'evaluator': 'auc_only'}))
  evaluator = evaluators.get_evaluator()
  labels = np.array([0, 1, 2, 2])
  hard = evaluators.evaluate_decisions(evaluator, np.array([0, 1, 2, 0]), None, labels,
                                       ('a', 'b', 'c'))
  assert hard['accuracy'] == 0.75 and np.isnan(hard['auc'])  # no scores, no AUC
  scores = np.eye(3)[[0, 1, 2, 2]]
  scored = evaluators.evaluate_decisions(evaluator, np.array([0, 1, 2, 0]), scores, labels,
                                         ('a', 'b', 'c'))
  assert scored['accuracy'] == 0.75 and scored['auc'] == 1.0  # AUC from the scores
