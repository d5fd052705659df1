"""mammo_jax.optimizers against Keras (TensorFlow backend), step by step."""

import os

os.environ.setdefault('KERAS_BACKEND', 'tensorflow')

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np
import optax
import pytest

from mammo_jax import optimizers


def _keras_run(make_optimizer, params, grads_per_step):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert keras.backend.backend() == 'tensorflow'
  variables = {k: tf.Variable(v) for k, v in params.items()}
  opt = make_optimizer(keras)
  for grads in grads_per_step:
    opt.apply_gradients([(tf.constant(grads[k]), variables[k]) for k in sorted(variables)])
  return {k: v.numpy() for k, v in variables.items()}


def _optax_run(tx, params, grads_per_step):
  params = {k: jnp.asarray(v) for k, v in params.items()}
  state = tx.init(params)
  for grads in grads_per_step:
    updates, state = tx.update({k: jnp.asarray(v) for k, v in grads.items()}, state, params)
    params = optax.apply_updates(params, updates)
  return params


# Gradients of 1e-6 make epsilon's placement (inside/outside the square root) visible.
@pytest.mark.parametrize('scale', [1.0, 1e-6])
@pytest.mark.parametrize('name', ['rmsprop', 'rmsprop_decay', 'adam', 'adam_decay', 'nadam',
                                  'nadam_decay', 'sgd', 'sgd_momentum_decay'])
def test_matches_keras_over_several_steps(name, scale):
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(5, 3)).astype(np.float32),
            'b': rng.normal(size=(3,)).astype(np.float32)}
  grads = [{k: (scale * rng.normal(size=v.shape)).astype(np.float32)
            for k, v in params.items()} for _ in range(6)]
  lr, decay = 1e-2, (0.5 if name.endswith('decay') else 0.0)

  def schedule(keras):
    return keras.optimizers.schedules.InverseTimeDecay(lr, decay_steps=1, decay_rate=decay)

  if name.startswith('rmsprop'):
    make = lambda keras: keras.optimizers.RMSprop(learning_rate=schedule(keras))
    tx = optimizers.keras_rmsprop(lr, decay)
  elif name.startswith('adam'):
    make = lambda keras: keras.optimizers.Adam(learning_rate=schedule(keras))
    tx = optimizers.keras_adam(lr, decay)
  elif name.startswith('nadam'):
    make = lambda keras: keras.optimizers.Nadam(learning_rate=schedule(keras))
    tx = optimizers.keras_nadam(lr, decay)
  else:
    momentum = 0.9 if 'momentum' in name else 0.0
    make = lambda keras: keras.optimizers.SGD(learning_rate=schedule(keras), momentum=momentum)
    tx = optimizers.keras_sgd(lr, decay, momentum)
    if scale != 1.0:
      pytest.skip('SGD has no epsilon')
  expected = _keras_run(make, params, grads)
  got = _optax_run(tx, params, grads)
  for k in params:
    np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[k], params[k])  # the steps did move the parameters
