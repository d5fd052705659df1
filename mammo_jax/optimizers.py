"""Optimisers that behave like the Keras ones the reference study used, as optax transforms.

Keras's `decay` argument (the study's "LR decay") is time-based decay per update,
lr_n = lr / (1 + decay * n), the same as keras.optimizers.schedules.InverseTimeDecay with
decay_steps=1. Epsilon placement follows Keras: inside the square root for RMSprop, outside
for Adam, with Adam's bias correction folded into the step size. Tests compare a few steps
with Keras itself.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def inverse_time_decay(learning_rate: float, decay: float = 0.0) -> optax.Schedule:
  return lambda step: learning_rate / (1.0 + decay * step)


def keras_rmsprop(learning_rate: float = 1e-3, decay: float = 0.0, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.RMSprop: v = rho v + (1 - rho) g^2; step = lr g / sqrt(v + eps)."""
  return optax.rmsprop(inverse_time_decay(learning_rate, decay), decay=rho, eps=epsilon,
                       eps_in_sqrt=True)


class _AdamState(NamedTuple):
  count: jnp.ndarray
  mu: optax.Updates
  nu: optax.Updates


def _scale_by_keras_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """m/(sqrt(v) + eps) scaled by sqrt(1 - b2^t) / (1 - b1^t), as Keras computes it."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _AdamState(jnp.zeros([], jnp.int32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
    nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, updates)
    count = state.count + 1
    t = count.astype(jnp.float32)
    alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    out = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
    return out, _AdamState(count, mu, nu)

  return optax.GradientTransformation(init, update)


def keras_adam(learning_rate: float = 1e-3, decay: float = 0.0, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.Adam (amsgrad=False)."""
  return optax.chain(_scale_by_keras_adam(beta_1, beta_2, epsilon),
                     optax.scale_by_learning_rate(inverse_time_decay(learning_rate, decay)))


class _NadamState(NamedTuple):
  count: jnp.ndarray
  u_product: jnp.ndarray
  mu: optax.Updates
  nu: optax.Updates


def _scale_by_keras_nadam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Keras's Nadam: momentum schedule u_t = b1 (1 - 0.5 * 0.96^t) and its running product."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _NadamState(jnp.zeros([], jnp.int32), jnp.ones([], jnp.float32), zeros, zeros)

  def update(updates, state, params=None):
    del params
    count = state.count + 1
    t = count.astype(jnp.float32)
    u_t = b1 * (1.0 - 0.5 * 0.96**t)
    u_next = b1 * (1.0 - 0.5 * 0.96**(t + 1))
    u_product = state.u_product * u_t
    u_product_next = u_product * u_next
    mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, updates)
    nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, updates)

    def step(m, v, g):
      m_hat = u_next * m / (1 - u_product_next) + (1 - u_t) * g / (1 - u_product)
      return m_hat / (jnp.sqrt(v / (1 - b2**t)) + eps)

    out = jax.tree.map(step, mu, nu, updates)
    return out, _NadamState(count, u_product, mu, nu)

  return optax.GradientTransformation(init, update)


def keras_nadam(learning_rate: float = 1e-3, decay: float = 0.0, beta_1: float = 0.9,
                beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.Nadam."""
  return optax.chain(_scale_by_keras_nadam(beta_1, beta_2, epsilon),
                     optax.scale_by_learning_rate(inverse_time_decay(learning_rate, decay)))


def keras_sgd(learning_rate: float = 1e-2, decay: float = 0.0,
              momentum: float = 0.0) -> optax.GradientTransformation:
  """keras.optimizers.SGD (not Nesterov): the velocity accumulates lr-scaled gradients,
  v = momentum v - lr_n g, which differs from optax.sgd once the rate decays."""
  scaled = optax.scale_by_learning_rate(inverse_time_decay(learning_rate, decay))
  return optax.chain(scaled, optax.trace(decay=momentum)) if momentum else scaled
