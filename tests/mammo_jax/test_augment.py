"""mammo_jax.augment against Keras's own legacy ImageDataGenerator code and scipy.ndimage."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.ndimage

from mammo_jax import augment

# (theta, tx, ty, shear, zx, zy). Exact right angles are left out: with 'constant' or 'wrap'
# they put samples exactly on the discontinuous image edge, where float32 and float64
# coordinates may legitimately land on different sides.
PARAMS = [
    (30.0, 2.0, -3.0, 10.0, 0.9, 1.15),
    (0.0, 3.0, 0.0, 0.0, 1.0, 1.0),
    (-170.0, 0.0, 0.0, -15.0, 1.2, 0.8),
    (45.0, 1.5, 2.5, 5.0, 1.1, 1.1),
    (123.0, -4.2, 1.7, -12.0, 0.85, 1.19),
]
SHAPES = [(16, 16), (12, 20), (20, 12)]
MODES = ['reflect', 'nearest', 'constant', 'wrap']
TOL = 1e-4

# Jitted once here: op-by-op dispatch of the gathers is what would make these tests slow.
_apply_jit = jax.jit(augment.apply_transforms, static_argnums=2)
_augment_jit = jax.jit(augment.augment_batch, static_argnums=2)


@pytest.fixture(scope='module')
def keras_image():
  # Imported lazily: it pulls in the Keras backend, and the backend is left to whatever the
  # other tests choose.
  from keras.src.legacy.preprocessing import image  # pylint: disable=g-import-not-at-top
  return image


def _image(height, width, channels=2, seed=0):
  return np.random.default_rng(seed).uniform(size=(height, width, channels)).astype(np.float32)


def _apply(x, matrix, mode):
  return np.asarray(_apply_jit(jnp.asarray(x)[None], jnp.asarray(matrix)[None], mode))[0]


def _keras(keras_image, x, params, mode):
  return keras_image.apply_affine_transform(
      x.astype(np.float64), *params, row_axis=0, col_axis=1, channel_axis=2, fill_mode=mode,
      order=1)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mode', MODES)
def test_keras3_axes_variant_matches_keras(keras_image, shape, mode):
  x = _image(*shape)
  errors = [np.abs(_apply(x, augment.affine_matrix(*p, *shape, keras3_axes=True), mode)
                   - _keras(keras_image, x, p, mode)).max() for p in PARAMS]
  assert max(errors) < TOL, errors


@pytest.mark.parametrize('mode', MODES)
def test_study_axes_match_keras_on_transposed_square_images(keras_image, mode):
  # The study's keras-preprocessing (<= 1.1.2) has no x/y swap; on a square image that is
  # Keras 3's transform of the transposed image, transposed back.
  x = _image(16, 16)
  for p in PARAMS:
    expected = _keras(keras_image, x.transpose(1, 0, 2), p, mode).transpose(1, 0, 2)
    out = _apply(x, augment.affine_matrix(*p, 16, 16), mode)
    np.testing.assert_allclose(out, expected, atol=TOL)


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mode', MODES)
def test_apply_transforms_matches_scipy(shape, mode):
  x = _image(*shape)
  for p in PARAMS:
    matrix = np.asarray(augment.affine_matrix(*p, *shape), np.float64)
    expected = np.stack([scipy.ndimage.affine_transform(
        x[..., k].astype(np.float64), matrix[:2, :2], matrix[:2, 2], order=1, mode=mode)
                         for k in range(x.shape[-1])], -1)
    np.testing.assert_allclose(_apply(x, jnp.asarray(matrix), mode), expected, atol=TOL)


@pytest.mark.parametrize('flip_h, flip_v', [(True, False), (False, True), (True, True)])
def test_flips_match_image_data_generator(keras_image, flip_h, flip_v):
  x, p = _image(12, 20), PARAMS[0]
  gen = keras_image.ImageDataGenerator(fill_mode='reflect', data_format='channels_last')
  params = dict(zip(('theta', 'tx', 'ty', 'shear', 'zx', 'zy'), p))
  # Keras 3 variant on the image itself; flips come after the affine map.
  expected = gen.apply_transform(x.astype(np.float64), dict(
      params, flip_horizontal=flip_h, flip_vertical=flip_v))
  matrix = augment.affine_matrix(*p, 12, 20, flip_h, flip_v, keras3_axes=True)
  np.testing.assert_allclose(_apply(x, matrix, 'reflect'), expected, atol=TOL)
  # Study variant via the transposed square image, where the two flips trade places.
  x = _image(16, 16)
  expected = gen.apply_transform(x.transpose(1, 0, 2).astype(np.float64), dict(
      params, flip_horizontal=flip_v, flip_vertical=flip_h)).transpose(1, 0, 2)
  matrix = augment.affine_matrix(*p, 16, 16, flip_h, flip_v)
  np.testing.assert_allclose(_apply(x, matrix, 'reflect'), expected, atol=TOL)


def test_study_axes_on_non_square_images():
  x = _image(12, 20)
  # Centre is ((H - 1) / 2, (W - 1) / 2): half a turn is both flips.
  np.testing.assert_allclose(_apply(x, augment.affine_matrix(180, 0, 0, 0, 1, 1, 12, 20),
                                    'reflect'), x[::-1, ::-1], atol=1e-5)
  # tx (from height_shift_range) moves rows, ty columns.
  out = _apply(x, augment.affine_matrix(0, 2, 3, 0, 1, 1, 12, 20), 'nearest')
  np.testing.assert_array_equal(out[:-2, :-3], x[2:, 3:])
  # Plain flips.
  np.testing.assert_array_equal(
      _apply(x, augment.affine_matrix(0, 0, 0, 0, 1, 1, 12, 20, True, False), 'reflect'),
      x[:, ::-1])
  np.testing.assert_array_equal(
      _apply(x, augment.affine_matrix(0, 0, 0, 0, 1, 1, 12, 20, False, True), 'reflect'),
      x[::-1])


def test_parameter_distributions():
  spec = augment.AugmentSpec(rotation=30, shear=10, zoom=0.2, width_shift=0.1,
                             height_shift=0.2, horizontal_flip=True, vertical_flip=True)
  keys = jax.random.split(jax.random.key(0), 4000)
  p = {k: np.asarray(v) for k, v in augment.sample_parameters(keys, 50, 100, spec).items()}
  for name, bound in [('theta', 30), ('shear', 10), ('tx', 0.2 * 50), ('ty', 0.1 * 100)]:
    assert np.abs(p[name]).max() <= bound
    assert np.abs(p[name]).max() > 0.99 * bound  # spread over the whole range
    assert abs(p[name].mean()) < 0.05 * bound
    assert abs(p[name].std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform
  for name in ('zx', 'zy'):
    assert 0.8 <= p[name].min() < 0.81 and 1.19 < p[name].max() <= 1.2
  assert abs(np.corrcoef(p['zx'], p['zy'])[0, 1]) < 0.05  # drawn independently
  for name in ('flip_horizontal', 'flip_vertical'):
    assert p[name].dtype == bool and abs(p[name].mean() - 0.5) < 0.03
  np.testing.assert_allclose(
      augment.random_transforms(keys, 50, 100, spec),
      augment.affine_matrix(height=50, width=100, **p), atol=1e-5)

  off = {k: np.asarray(v) for k, v in
         augment.sample_parameters(keys, 50, 100, augment.AugmentSpec(rotation=5)).items()}
  assert not off['flip_horizontal'].any() and not off['flip_vertical'].any()
  assert (off['tx'] == 0).all() and (off['shear'] == 0).all() and (off['zx'] == 1).all()


def test_same_keys_same_transform_and_batch_split_invariance():
  spec = augment.STUDY_SETTINGS['C']
  keys = jax.random.split(jax.random.PRNGKey(3), 8)  # raw uint32 keys work too
  images = jnp.asarray(np.random.default_rng(1).uniform(size=(8, 24, 24, 1)), jnp.float32)
  out = _augment_jit(keys, images, spec)
  assert out.shape == images.shape and out.dtype == images.dtype
  assert not np.allclose(out, images)
  # Resampling is linear in the pixel values, so a scaled partner batch with the same keys
  # comes out scaled exactly when the transforms are the same.
  np.testing.assert_allclose(_augment_jit(keys, 2 * images, spec), 2 * out, atol=1e-6)
  halves = jnp.concatenate([_augment_jit(keys[:4], images[:4], spec),
                            _augment_jit(keys[4:], images[4:], spec)])
  np.testing.assert_allclose(halves, out, atol=1e-6)


def test_identity_spec_and_validation():
  images = jnp.ones((2, 8, 8, 1))
  spec = augment.AugmentSpec()
  assert not spec.enabled and augment.STUDY_SETTINGS['E'].enabled
  assert augment.augment_batch(jax.random.split(jax.random.key(0), 2), images, spec) is images
  with pytest.raises(ValueError, match='fill_mode'):
    augment.AugmentSpec(fill_mode='mirror')
  with pytest.raises(ValueError, match='fill_mode'):
    augment.apply_transforms(images, jnp.eye(3)[None].repeat(2, 0), 'grid-wrap')
  with pytest.raises(ValueError, match='zoom'):
    augment.AugmentSpec(zoom=1.5)
  with pytest.raises(ValueError, match='bogus, rotation_range'):
    augment.AugmentSpec.from_config({'rotation_range': 10, 'bogus': 1, 'shear': 2})
  cfg = ml_collections.ConfigDict({'rotation': 180, 'shear': 15, 'zoom': 0.2,
                                   'horizontal_flip': True, 'vertical_flip': True})
  assert augment.AugmentSpec.from_config(cfg) == augment.STUDY_SETTINGS['D']
  assert augment.STUDY_SETTINGS['A'] == augment.STUDY_SETTINGS['B']
  assert augment.STUDY_SETTINGS['C'].width_shift == augment.STUDY_SETTINGS['C'].height_shift == 0.2
  assert augment.STUDY_SETTINGS['E'].shear == 0


def test_jit_and_pmap():
  spec = augment.STUDY_SETTINGS['A']
  keys = jax.random.split(jax.random.key(7), 4)
  images = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 20, 20, 1)), jnp.float32)
  jitted = _augment_jit(keys, images, spec)
  matrices = augment.random_transforms(keys, 20, 20, spec)  # eager
  np.testing.assert_allclose(_apply_jit(images, matrices, 'reflect'), jitted, atol=1e-5)
  pmapped = jax.pmap(lambda k, x: augment.augment_batch(k, x, spec))(keys[None], images[None])
  np.testing.assert_allclose(pmapped[0], jitted, atol=1e-5)
  # Bilinear weights are convex, so values stay in the input range.
  assert float(jitted.min()) >= float(images.min()) - 1e-6
  assert float(jitted.max()) <= float(images.max()) + 1e-6
