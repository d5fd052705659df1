"""Optimisers that behave like the Keras ones the reference study used, as optax transforms.

Keras's `decay` argument (the study's "LR decay") is time-based decay per update,
lr_n = lr / (1 + decay * n), the same as keras.optimizers.schedules.InverseTimeDecay with
decay_steps=1. Epsilon placement follows Keras: inside the square root for RMSprop, outside
for Adam, with Adam's bias correction folded into the step size. Tests compare a few steps
with Keras itself.

Every maker also takes an optax schedule (a function of the update count, the first update
being count 0) as `learning_rate`, e.g. the LR range test's per-epoch growth. The update-n
rate enters update n where Keras applies it (the final scale; SGD with momentum: inside the
velocity), so a schedule changes nothing else.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


LearningRate = float | optax.Schedule


def inverse_time_decay(learning_rate: float, decay: float = 0.0) -> optax.Schedule:
  return lambda step: learning_rate / (1.0 + decay * step)


def _rate(learning_rate: LearningRate, decay: float) -> optax.Schedule:
  """A constant rate with Keras's time-based decay, or a schedule used as given."""
  if callable(learning_rate):
    if decay:
      raise ValueError('decay applies to a constant learning_rate; fold it into the schedule')
    return learning_rate
  return inverse_time_decay(learning_rate, decay)


def keras_rmsprop(learning_rate: LearningRate = 1e-3, decay: float = 0.0, rho: float = 0.9,
                  epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.RMSprop: v = rho v + (1 - rho) g^2; step = lr g / sqrt(v + eps)."""
  return optax.rmsprop(_rate(learning_rate, decay), decay=rho, eps=epsilon,
                       eps_in_sqrt=True)


class _MomentState(NamedTuple):
  count: jnp.ndarray
  u_product: jnp.ndarray  # Nadam's running product of momentum factors (unused by Adam)
  mu: optax.Updates
  nu: optax.Updates


def _init_moments(params) -> _MomentState:
  zeros = jax.tree.map(jnp.zeros_like, params)
  return _MomentState(jnp.zeros([], jnp.int32), jnp.ones([], jnp.float32), zeros, zeros)


def _update_moments(state: _MomentState, grads, b1: float, b2: float):
  """Keras's first/second moment updates; returns (step t as float, mu, nu)."""
  mu = jax.tree.map(lambda m, g: m + (g - m) * (1 - b1), state.mu, grads)
  nu = jax.tree.map(lambda v, g: v + (g * g - v) * (1 - b2), state.nu, grads)
  return (state.count + 1).astype(jnp.float32), mu, nu


def _scale_by_keras_adam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """m/(sqrt(v) + eps) scaled by sqrt(1 - b2^t) / (1 - b1^t), as Keras computes it."""

  def update(updates, state, params=None):
    del params
    t, mu, nu = _update_moments(state, updates, b1, b2)
    alpha = jnp.sqrt(1 - b2**t) / (1 - b1**t)
    out = jax.tree.map(lambda m, v: alpha * m / (jnp.sqrt(v) + eps), mu, nu)
    return out, state._replace(count=state.count + 1, mu=mu, nu=nu)

  return optax.GradientTransformation(_init_moments, update)


def keras_adam(learning_rate: LearningRate = 1e-3, decay: float = 0.0, beta_1: float = 0.9,
               beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.Adam (amsgrad=False)."""
  return optax.chain(_scale_by_keras_adam(beta_1, beta_2, epsilon),
                     optax.scale_by_learning_rate(_rate(learning_rate, decay)))


def _scale_by_keras_nadam(b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Keras's Nadam: momentum schedule u_t = b1 (1 - 0.5 * 0.96^t) and its running product."""

  def update(updates, state, params=None):
    del params
    t, mu, nu = _update_moments(state, updates, b1, b2)
    u_t = b1 * (1.0 - 0.5 * 0.96**t)
    u_next = b1 * (1.0 - 0.5 * 0.96**(t + 1))
    u_product = state.u_product * u_t
    u_product_next = u_product * u_next

    def step(m, v, g):
      m_hat = u_next * m / (1 - u_product_next) + (1 - u_t) * g / (1 - u_product)
      return m_hat / (jnp.sqrt(v / (1 - b2**t)) + eps)

    out = jax.tree.map(step, mu, nu, updates)
    return out, _MomentState(state.count + 1, u_product, mu, nu)

  return optax.GradientTransformation(_init_moments, update)


def keras_nadam(learning_rate: LearningRate = 1e-3, decay: float = 0.0, beta_1: float = 0.9,
                beta_2: float = 0.999, epsilon: float = 1e-7) -> optax.GradientTransformation:
  """keras.optimizers.Nadam."""
  return optax.chain(_scale_by_keras_nadam(beta_1, beta_2, epsilon),
                     optax.scale_by_learning_rate(_rate(learning_rate, decay)))


def keras_sgd(learning_rate: LearningRate = 1e-2, decay: float = 0.0,
              momentum: float = 0.0) -> optax.GradientTransformation:
  """keras.optimizers.SGD (not Nesterov): the velocity accumulates lr-scaled gradients,
  v = momentum v - lr_n g, which differs from optax.sgd once the rate decays."""
  scaled = optax.scale_by_learning_rate(_rate(learning_rate, decay))
  return optax.chain(scaled, optax.trace(decay=momentum)) if momentum else scaled


MAKERS = {'sgd': keras_sgd, 'rmsprop': keras_rmsprop, 'adam': keras_adam, 'nadam': keras_nadam}


def keras_optimizer(name: str, learning_rate: LearningRate, decay: float = 0.0,
                    momentum: float = 0.0) -> optax.GradientTransformation:
  """The Keras-equivalent optimizer `name` (sgd | rmsprop | adam | nadam) at a constant rate
  (with Keras's `decay`) or on an optax schedule of the update count."""
  if name not in MAKERS:
    raise ValueError(f'unknown optimizer.name {name!r}; known: {", ".join(sorted(MAKERS))}')
  if name == 'sgd':
    return keras_sgd(learning_rate, decay, momentum)
  if momentum:
    raise ValueError(f'optimizer.momentum applies to sgd only, not {name!r}')
  return MAKERS[name](learning_rate, decay)


def create_optimizer(optimizer_config) -> optax.GradientTransformation:
  """The optimizer config.optimizer describes (name, learning_rate, decay, momentum)."""
  opt = optimizer_config
  return keras_optimizer(opt.name, opt.learning_rate, opt.decay, opt.momentum)
