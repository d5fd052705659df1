"""layers.Conv and layers.max_pool equal nn.Conv and nn.max_pool, values and gradients."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mammo_jax import models
from mammo_jax.models import layers, winograd


def _normal(seed, shape, scale=1.0):
  # numpy, not jax.random: every new jax.random shape costs a compilation, which dominated.
  return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def _random_variables(module, x, seed=0):
  """Variables shaped like module.init's, drawn from numpy; kernels scaled by 1/sqrt(fan-in)."""
  shapes = jax.eval_shape(module.init, jax.random.key(0), x)
  leaves, tree = jax.tree.flatten(shapes)
  scale = lambda shape: 1 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.3
  return tree.unflatten([_normal(seed + i, leaf.shape, scale(leaf.shape))
                         for i, leaf in enumerate(leaves)])


def _close(actual, expected, rtol=2e-5):
  """float32 equality up to summation order: relative to each array's largest entry."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=rtol,
                             atol=rtol * max(1.0, float(np.abs(expected).max())))


# Every path of layers.conv2d: 1 to 3 input channels (broadcast products, unpadded and
# padded), a few (plain), 8 or more (padded fast path), SAME padding, strides (autodiff
# fallback), no bias.
@pytest.mark.parametrize('kernel,cin,cout,strides,padding,use_bias', [
    ((3, 3), 1, 8, 1, 'VALID', True), ((3, 3), 3, 4, 1, 'SAME', True),
    ((2, 3), 2, 3, 1, 'VALID', False), ((3, 3), 5, 3, 1, 'SAME', True),
    ((5, 5), 4, 6, 1, 'VALID', True), ((3, 3), 8, 4, 1, 'VALID', True),
    ((2, 3), 16, 2, 1, 'SAME', True), ((3, 3), 12, 5, 1, 'VALID', False),
    ((3, 3), 5, 3, 2, 'VALID', True), ((5, 5), 8, 6, 2, 'SAME', True)])
def test_conv_values_and_gradients_match_nn_conv(kernel, cin, cout, strides, padding, use_bias):
  x = _normal(1, (3, 17, 15, cin))
  kwargs = dict(features=cout, kernel_size=kernel, strides=strides, padding=padding,
                use_bias=use_bias)
  ref, fast = nn.Conv(**kwargs), layers.Conv(**kwargs)
  key = jax.random.key(0)
  assert jax.eval_shape(fast.init, key, x) == jax.eval_shape(ref.init, key, x)
  params = _random_variables(ref, x)
  weights = _normal(2, jax.eval_shape(ref.apply, params, x).shape)

  @jax.jit
  def outputs_and_grads(params, x):
    return [(m.apply(params, x), jax.value_and_grad(
        lambda p, x: jnp.sum(m.apply(p, x) * weights), argnums=(0, 1))(params, x))
            for m in (fast, ref)]

  fast_results, ref_results = outputs_and_grads(params, x)
  jax.tree.map(_close, fast_results, ref_results)  # output, loss, d/dparams, d/dx


def test_conv_filter_gradient_chunks_with_a_remainder(monkeypatch):
  x, w = _normal(1, (7, 9, 8, 4)), _normal(2, (3, 3, 4, 5))
  expected = jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
      x, w, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))))))(w)
  # One image per chunk; then chunks of 3 images (of 7x6 output pixels) and a remainder of 1.
  for rows in (1, 3 * 7 * 6):
    monkeypatch.setattr(layers, '_CHUNK_ROWS', rows)
    _close(jax.jit(jax.grad(lambda w: jnp.sum(jnp.sin(layers.conv2d(x, w)))))(w), expected)


def _registry_3x3_channels() -> list[tuple[int, int]]:
  """(cin, cout) of every 3x3 kernel of the registry's models that take a conv_impl."""
  found = set()
  for name, entry in models.REGISTRY.items():
    if 'conv_impl' not in {f.name for f in dataclasses.fields(entry.template)}:
      continue
    # RGB ImageNet backbones (VGG16, and the whole-image models built on VGG16 or ResNet50).
    rgb = name == 'vgg16' or getattr(entry.template, 'backbone', '') in ('vgg16', 'resnet50')
    channels = 2 if models.inputs_of(name) == 'image+baseline' else 3 if rgb else 1
    shapes = jax.eval_shape(entry.template.init, jax.random.key(0),
                            jnp.zeros((1, 128, 128, channels)))
    found |= {leaf.shape[2:] for leaf in jax.tree.leaves(shapes) if leaf.shape[:2] == (3, 3)}
  return sorted(found)


@pytest.mark.parametrize('padding', ['VALID', 'SAME'])
def test_conv_matches_autodiff_on_every_registry_3x3_shape(padding):
  """Winograd (forward, input gradient) and the chunked filter gradient against autodiff of
  the XLA convolution, on small odd-sized images with every channel pair the models use."""
  channels = _registry_3x3_channels()
  assert {(1, 32), (3, 64), (64, 128), (128, 256), (512, 512)} <= set(channels), channels
  dn = ('NHWC', 'HWIO', 'NHWC')
  reference = lambda x, w, b: jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=dn) + b
  cases = []
  for i, (cin, cout) in enumerate(channels):
    x = _normal(i, (2, 11, 9, cin))
    w, b = _normal(i + 1, (3, 3, cin, cout), 1 / np.sqrt(9 * cin)), _normal(i + 2, (cout,))
    cases.append((x, w, b, _normal(i + 3, jax.eval_shape(reference, x, w, b).shape)))

  @jax.jit
  def outputs_and_grads(cases):
    return [[(f(x, w, b), jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums=(0, 1, 2))(x, w, b))
             for f in (functools.partial(layers.conv2d, padding=padding), reference)]
            for x, w, b, g in cases]

  for fast, ref in outputs_and_grads(cases):
    jax.tree.map(_close, fast, ref)  # output, d/dx, d/dkernel, d/dbias


@pytest.mark.parametrize('side,cin,cout,convolutions', [
    (12, 16, 32, 0), (12, 8, 32, 2), (12, 32, 8, 2), (256, 16, 16, 0), (258, 16, 16, 2)])
def test_winograd_replaces_xla_convolutions_with_enough_channels(side, cin, cout, convolutions):
  """Forward and input gradient are matmuls from 16 input and output channels on, on images
  of up to winograd.MAX_TILES (16384) 2x2 output tiles (256x256: 16384; 258x258: 16641)."""
  assert winograd.MAX_TILES == 16384
  x, w = jnp.ones((1, side, side, cin)), jnp.ones((3, 3, cin, cout))
  loss = lambda x, w: jnp.sum(layers.conv2d(x, w, padding='SAME') ** 2)
  hlo = jax.jit(jax.grad(loss, (0, 1))).lower(x, w).compile().as_text()
  assert hlo.count(' convolution(') == convolutions
  assert hlo.count(' dot(') >= 1


@pytest.mark.parametrize('tiles', [1, 40, 10_000])
def test_winograd_image_chunks_and_remainders(monkeypatch, tiles):
  """One image per loop step (1), 3 of 5 and a remainder of 2 (40 >= 3 x 12 tiles), all."""
  x, w, b = _normal(1, (5, 7, 9, 4)), _normal(2, (3, 3, 4, 3)), _normal(3, (3,))
  monkeypatch.setattr(winograd, '_TILES', tiles)
  for pads in (((0, 0), (0, 0)), ((1, 1), (1, 1)), ((2, 2), (2, 2)), ((0, 2), (1, 0))):
    expected = jax.lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b
    _close(jax.jit(winograd.conv3x3, static_argnums=2)(x, w, pads, b), expected)
    # An HWOI kernel (an input gradient's), transposed after the transform.
    swapped = jax.jit(winograd.conv3x3, static_argnums=(2, 4))(x, w.swapaxes(2, 3), pads, b, True)
    _close(swapped, expected)


@pytest.mark.parametrize('tiles', [1, 40, 10_000])
def test_winograd_kernel_gradient_chunks_remainders_and_paddings(monkeypatch, tiles):
  """The transposed forward pass (G^T sum(V . A dY A^T) G) against autodiff of XLA's
  convolution: one image per loop step, 3 of 5 and a remainder of 2, all at once; odd output
  sizes (partial tiles) and asymmetric padding."""
  x, w = _normal(1, (5, 7, 9, 4)), _normal(2, (3, 3, 4, 3))
  monkeypatch.setattr(winograd, '_TILES', tiles)
  for pads in (((0, 0), (0, 0)), ((1, 1), (1, 1)), ((2, 2), (2, 2)), ((0, 2), (1, 0))):
    conv = lambda w, b: jax.lax.conv_general_dilated(
        x, w, (1, 1), pads, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b
    g = _normal(3, jax.eval_shape(conv, w, jnp.zeros(3)).shape)
    want_dw, want_db = jax.grad(lambda w, b: jnp.sum(conv(w, b) * g), (0, 1))(w, jnp.zeros(3))
    dw, db = jax.jit(winograd.kernel_grad3x3, static_argnums=2)(x, g, pads)
    _close(dw, want_dw)
    _close(db, want_db)


def test_unused_input_gradient_is_not_computed_under_jit():
  x = jnp.ones((2, 12, 12, 5))  # 5 channels: XLA's convolution forward and backward
  w = jnp.ones((3, 3, 5, 4))
  loss = lambda x, w: jnp.sum(layers.conv2d(x, w) ** 2)

  def convolutions(argnums):
    hlo = jax.jit(jax.grad(loss, argnums)).lower(x, w).compile().as_text()
    return hlo.count(' convolution(')

  assert convolutions(1) == 1  # forward only; the filter gradient is matmuls
  assert convolutions((0, 1)) == 2  # + the input gradient


def _pool_outputs_and_grads(x, window, strides, padding):
  """layers.max_pool and nn.max_pool outputs and input gradients, from one jitted program."""

  @jax.jit
  def run(x):
    results = []
    for pool in (layers.max_pool, nn.max_pool):
      y, vjp = jax.vjp(lambda x: pool(x, window, strides, padding), x)
      results.append((y, vjp(jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape))))
    return results

  return run(x)


@pytest.mark.parametrize('window', [(2, 2), (3, 3), (2, 3)])
def test_max_pool_equals_nn_max_pool_with_ties(window):
  # Quantised, rectified values: many windows with tied maxima, as after a ReLU.
  x = np.maximum(np.round(2 * _normal(3, (2, 17, 15, 5))) / 2, 0)
  fast, ref = _pool_outputs_and_grads(x, window, window, 'VALID')
  jax.tree.map(np.testing.assert_array_equal, fast, ref)


@pytest.mark.parametrize('strides,padding', [((1, 1), 'VALID'), ((2, 2), 'SAME')])
def test_max_pool_falls_back_for_other_configurations(strides, padding):
  x = _normal(5, (2, 9, 7, 3))
  fast, ref = _pool_outputs_and_grads(x, (2, 2), strides, padding)
  jax.tree.map(np.testing.assert_array_equal, fast, ref)


@pytest.mark.parametrize('name', ['scratch4_m2', 'scratch2_exp7'])
def test_scratch_cnn_gradients_equal_across_conv_impls(name):
  """Same parameter tree; same loss and gradients (exp7: the 5x5/2 stem)."""
  x = _normal(6, (4, 46, 46, 1))
  ref = models.get_model(name)
  fast = models.get_model(name, conv_impl='cpu_fast')
  key = jax.random.key(0)
  assert jax.eval_shape(fast.init, key, x) == jax.eval_shape(ref.init, key, x)
  variables = _random_variables(ref, x)
  if 'batch_stats' in variables:
    variables['batch_stats'] = jax.tree.map(np.abs, variables['batch_stats'])  # variances
  labels = jnp.arange(4) % ref.num_outputs

  def loss(module, params):
    logits, _ = module.apply({**variables, 'params': params}, x, train=True,
                             mutable=['batch_stats'], rngs={'dropout': jax.random.key(8)})
    if module.num_outputs == 1:
      return optax.sigmoid_binary_cross_entropy(logits[:, 0], labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  fast_results, ref_results = jax.jit(lambda p: [
      jax.value_and_grad(functools.partial(loss, m))(p) for m in (fast, ref)])(variables['params'])
  jax.tree.map(lambda a, b: _close(a, b, rtol=1e-4), fast_results, ref_results)


def test_unknown_conv_impl_is_rejected():
  with pytest.raises(ValueError, match='conv_impl'):
    models.get_model('scratch4_m2', conv_impl='cudnn').init(jax.random.key(0),
                                                            jnp.zeros((1, 46, 46, 1)))


# conv2d(pool_2x2=True) against max_pool(conv): the broadcast (1 channel), plain XLA and
# Winograd (16 channels) paths, odd sizes (a last row or column no window covers), SAME and
# VALID, no bias; inputs of small integers make many exact ties in the pool windows, so the
# gradient's routing (each window's first maximum) is checked against select-and-scatter.
@pytest.mark.parametrize('cin,cout,side,padding,use_bias', [
    (1, 4, (12, 11), 'VALID', True), (5, 3, (11, 9), 'SAME', False),
    (16, 16, (14, 14), 'VALID', True), (16, 16, (11, 9), 'SAME', True),
    (16, 24, (13, 10), 'VALID', False)])
@pytest.mark.parametrize('images_per_chunk', [1, 2, 3])  # of 3: 2 leaves a remainder
def test_conv_with_fused_pool_matches_max_pool_of_conv(monkeypatch, cin, cout, side, padding,
                                                       use_bias, images_per_chunk):
  # The forward loop and the filter-gradient loops (reading the pool's gradient chunk by
  # chunk) with 1, 2 (and a remainder) or 3 images per chunk; the input gradient's Winograd
  # loop (more tiles per image) with 1 or 2.
  oh, ow = (side[0] - 2, side[1] - 2) if padding == 'VALID' else side
  monkeypatch.setattr(layers, '_POOL_CHUNK_ELEMENTS', images_per_chunk * oh * ow * cout)
  monkeypatch.setattr(layers, '_CHUNK_ROWS', images_per_chunk * oh * ow)
  monkeypatch.setattr(winograd, '_TILES', images_per_chunk * winograd.tiles_per_image(oh, ow))
  rng = np.random.default_rng(cin + cout)
  x = rng.integers(-2, 3, (3, *side, cin)).astype(np.float32)
  w = rng.integers(-1, 2, (3, 3, cin, cout)).astype(np.float32)
  b = rng.integers(-1, 2, (cout,)).astype(np.float32) if use_bias else None
  reference = lambda x, w, b: nn.max_pool(jax.lax.conv_general_dilated(
      x, w, (1, 1), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + (
          0 if b is None else b), (2, 2), (2, 2))
  fused = lambda x, w, b: layers.conv2d(x, w, b, padding=padding, pool_2x2=True)
  g = _normal(1, jax.eval_shape(reference, x, w, b).shape)
  argnums = (0, 1, 2) if use_bias else (0, 1)

  @jax.jit
  def outputs_and_grads(x, w, b):
    return [(f(x, w, b), jax.grad(lambda *a: jnp.sum(f(*a) * g), argnums)(x, w, b))
            for f in (fused, reference)]

  fast, ref = outputs_and_grads(x, w, b)
  jax.tree.map(_close, fast, ref)  # output, d/dx, d/dkernel[, d/dbias]
  # Without gradients (a frozen layer) no argmax is computed: no int8 array in the program.
  int8 = 'xi8>'  # StableHLO's spelling of an int8 tensor type
  assert int8 not in jax.jit(fused).lower(x, w, b).as_text()
  assert int8 in jax.jit(jax.grad(lambda *a: jnp.sum(fused(*a) * g), 1)).lower(x, w, b).as_text()


def test_pool_windows_actually_tie_in_the_fused_pool_test():
  """The integer inputs above make ties, so first-maximum routing is really exercised."""
  rng = np.random.default_rng(32)
  x = rng.integers(-2, 3, (3, 14, 14, 16)).astype(np.float32)
  w = rng.integers(-1, 2, (3, 3, 16, 16)).astype(np.float32)
  y = np.asarray(jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID',
                                              dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
  windows = y.reshape(3, 6, 2, 6, 2, 16).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 4)
  ties = np.sum(windows == windows.max(axis=1, keepdims=True), axis=1) > 1
  assert ties.mean() > 0.01
