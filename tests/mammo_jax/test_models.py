"""The scratch CNN family: Keras parameter counts (REFERENCE_STUDY.md §2) and output shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import models

# Keras's model.count_params() for each experiment; BN moving statistics (Keras counts them
# as non-trainable params) are in Flax's batch_stats collection and are added separately.
KERAS_PARAMS = {
    'scratch2_exp0': 1_345_953, 'scratch2_exp1': 1_345_953, 'scratch2_exp2': 1_345_953,
    'scratch2_exp3': 1_276_481, 'scratch2_exp4': 1_868_385, 'scratch2_exp5': 1_868_385,
    'scratch2_exp6': 990_049, 'scratch2_exp7': 394_337, 'scratch2_exp8': 1_868_385,
    'scratch2_exp9': 990_049, 'scratch2_exp10': 439_521, 'scratch2_exp11': 439_521,
    'scratch4_m1': 990_196, 'scratch4_m2': 5_104_964, 'scratch4_m3': 3_155_780,
    'benmal': 5_104_769,
}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('name', sorted(models.MODELS))
def test_every_registered_model_matches_keras(name):
  model = models.get_model(name)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((2, 150, 150, 1)), train=False))
  total = _count(variables['params']) + _count(variables.get('batch_stats', {}))
  assert total == KERAS_PARAMS[name]
  if model.batch_norm:
    assert _count(variables['batch_stats']) == 960  # mean and var of 32+64+128+256 channels
  out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 150, 150, 1))), variables)
  assert out.shape == (2, model.num_outputs)


def test_registry_covers_the_study_and_rejects_unknown_names():
  assert set(KERAS_PARAMS) == set(models.MODELS)
  with pytest.raises(ValueError, match='unknown model'):
    models.get_model('scratch2_exp12')
  assert models.get_model('scratch4_m1', num_outputs=1).num_outputs == 1


def test_dropout_and_batch_norm_behave_differently_in_training():
  model = models.get_model('scratch2_exp10')
  x = jax.random.normal(jax.random.key(1), (4, 150, 150, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  eval_a = model.apply(variables, x)
  eval_b = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                   rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_out, eval_a)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), updates['batch_stats'],
                       variables['batch_stats'])
  assert max(jax.tree.leaves(moved)) > 0
