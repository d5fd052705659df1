"""layers.Conv and layers.max_pool equal nn.Conv and nn.max_pool, values and gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mammo_jax import models
from mammo_jax.models import layers


def _close(actual, expected, rtol=2e-5):
  """float32 equality up to summation order: relative to each array's largest entry."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * max(1.0, float(np.abs(expected).max())))


@pytest.mark.parametrize('kernel,cin,cout,strides,padding', [
    ((3, 3), 1, 8, 1, 'VALID'), ((3, 3), 5, 3, 1, 'SAME'), ((5, 5), 4, 6, 1, 'VALID'),
    ((2, 3), 3, 2, 1, 'SAME'), ((3, 3), 5, 3, 2, 'VALID'), ((5, 5), 4, 6, 2, 'SAME')])
def test_conv_values_and_gradients_match_nn_conv(kernel, cin, cout, strides, padding):
  kx, kr, kp = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (3, 17, 15, cin))
  kwargs = dict(features=cout, kernel_size=kernel, strides=strides, padding=padding,
                bias_init=nn.initializers.normal(1.0))
  ref, fast = nn.Conv(**kwargs), layers.Conv(**kwargs)
  params = ref.init(kp, x)
  assert jax.tree.map(jnp.shape, fast.init(kp, x)) == jax.tree.map(jnp.shape, params)
  out_shape = jax.eval_shape(ref.apply, params, x).shape
  weights = jax.random.normal(kr, out_shape)

  def loss(module):
    return jax.jit(jax.value_and_grad(
        lambda p, x: jnp.sum(module.apply(p, x) * weights), argnums=(0, 1)))

  (value, (dparams, dx)), (value_ref, (dparams_ref, dx_ref)) = loss(fast)(params, x), loss(ref)(
      params, x)
  _close(fast.apply(params, x), ref.apply(params, x))
  _close(value, value_ref)
  _close(dx, dx_ref)
  _close(dparams['params']['kernel'], dparams_ref['params']['kernel'])
  _close(dparams['params']['bias'], dparams_ref['params']['bias'])


def test_conv_without_bias_matches_nn_conv():
  x = jax.random.normal(jax.random.key(9), (2, 11, 10, 8))
  ref, fast = (cls(4, (3, 3), padding='VALID', use_bias=False) for cls in (nn.Conv, layers.Conv))
  params = ref.init(jax.random.key(0), x)
  assert jax.tree.map(jnp.shape, fast.init(jax.random.key(0), x)) == jax.tree.map(
      jnp.shape, params)
  grads = [jax.grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1))(params, x)
           for m in (fast, ref)]
  jax.tree.map(_close, grads[0], grads[1])


def test_conv_filter_gradient_chunks_with_a_remainder(monkeypatch):
  x = jax.random.normal(jax.random.key(1), (7, 9, 8, 4))
  w = jax.random.normal(jax.random.key(2), (3, 3, 4, 5))
  expected = jax.grad(lambda w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))))(w)
  # One image per chunk; then chunks of 3 images (of 7x6 output pixels) and a remainder of 1.
  for rows in (1, 3 * 7 * 6):
    monkeypatch.setattr(layers, '_CHUNK_ROWS', rows)
    _close(jax.grad(lambda w: jnp.sum(jnp.sin(layers.conv2d(x, w))))(w), expected)


def test_unused_input_gradient_is_not_computed_under_jit():
  x = jnp.ones((2, 12, 12, 3))
  w = jnp.ones((3, 3, 3, 4))
  loss = lambda x, w: jnp.sum(layers.conv2d(x, w) ** 2)

  def convolutions(argnums):
    hlo = jax.jit(jax.grad(loss, argnums)).lower(x, w).compile().as_text()
    return hlo.count(' convolution(')

  assert convolutions(1) == 1  # forward only; the filter gradient is matmuls
  assert convolutions((0, 1)) == 2  # + the input gradient


@pytest.mark.parametrize('window', [(2, 2), (3, 3), (2, 3)])
def test_max_pool_equals_nn_max_pool_with_ties(window):
  # Quantised, rectified values: many windows with tied maxima, as after a ReLU.
  x = jax.nn.relu(jnp.round(2 * jax.random.normal(jax.random.key(3), (2, 17, 15, 5))) / 2)
  g = jax.random.normal(jax.random.key(4), jax.eval_shape(
      lambda x: nn.max_pool(x, window, window), x).shape)
  grad = lambda pool: jax.jit(jax.vjp(pool, x)[1])(g)[0]
  fast = lambda x: layers.max_pool(x, window, window)
  ref = lambda x: nn.max_pool(x, window, window)
  np.testing.assert_array_equal(fast(x), ref(x))
  np.testing.assert_array_equal(grad(fast), grad(ref))


@pytest.mark.parametrize('strides,padding', [((1, 1), 'VALID'), ((2, 2), 'SAME')])
def test_max_pool_falls_back_for_other_configurations(strides, padding):
  x = jax.random.normal(jax.random.key(5), (2, 9, 7, 3))
  ref = lambda x: nn.max_pool(x, (2, 2), strides, padding)
  fast = lambda x: layers.max_pool(x, (2, 2), strides, padding)
  np.testing.assert_array_equal(fast(x), ref(x))
  np.testing.assert_array_equal(jax.grad(lambda x: jnp.sum(fast(x) ** 2))(x),
                                jax.grad(lambda x: jnp.sum(ref(x) ** 2))(x))


@pytest.mark.parametrize('name', ['scratch4_m2', 'scratch2_exp7'])
def test_scratch_cnn_gradients_equal_across_conv_impls(name):
  """Same parameter tree; same loss and gradients (exp7: the 5x5/2 stem)."""
  x = jax.random.normal(jax.random.key(6), (4, 46, 46, 1))
  ref = models.get_model(name)
  fast = models.get_model(name, conv_impl='cpu_fast')
  variables = ref.init(jax.random.key(7), x)
  assert (jax.tree.map(jnp.shape, fast.init(jax.random.key(7), x))
          == jax.tree.map(jnp.shape, variables))
  labels = jnp.arange(4) % ref.num_outputs

  def loss_and_grad(module):
    def loss(params):
      logits, _ = module.apply({**variables, 'params': params}, x, train=True,
                               mutable=['batch_stats'], rngs={'dropout': jax.random.key(8)})
      if module.num_outputs == 1:
        return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels).mean()
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return jax.jit(jax.value_and_grad(loss))(variables['params'])

  (value, grads), (value_ref, grads_ref) = loss_and_grad(fast), loss_and_grad(ref)
  _close(value, value_ref)
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), grads, grads_ref)


def test_unknown_conv_impl_is_rejected():
  with pytest.raises(ValueError, match='conv_impl'):
    models.get_model('scratch4_m2', conv_impl='cudnn').init(jax.random.key(0),
                                                            jnp.zeros((1, 46, 46, 1)))
