"""The strict merge (mammo_jax.weights.merge) into VGG16's initialised params."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax.models import vgg16 as vgg16_model
from mammo_jax.weights import merge
from mammo_jax.weights import vgg16 as vw
from tests.mammo_jax.weights.vgg16_sources import layers_to_params

NOTOP_PARAMS = 14_714_688  # docs/REFERENCE_STUDY.md §2.4


def _classifier_shapes():
  model = vgg16_model.VGG16Classifier(num_outputs=1)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 150, 150, 3))))


def test_merge_into_the_classifier_base(notop_h5):
  loaded = layers_to_params(notop_h5[1])
  target = _classifier_shapes()['params']['vgg16']
  merged = merge.merge_params(target, loaded)
  assert jax.tree.structure(merged) == jax.tree.structure(dict(target))
  assert np.array_equal(merged['block4_conv2']['kernel'], loaded['block4_conv2']['kernel'])
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(merged))
  assert sum(leaf.size for leaf in jax.tree.leaves(merged)) == NOTOP_PARAMS


def test_merge_into_a_whole_classifier_keeps_the_head():
  model = vgg16_model.VGG16Classifier(num_outputs=4, fc=8)
  x = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))['params']
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)  # "initialised"
  loaded = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), dict(shapes['vgg16']))
  merged = merge.merge_params(flax.core.freeze(params), {'vgg16': loaded},
                              keep='^(fc|logits)/')
  assert isinstance(merged, flax.core.FrozenDict)
  assert merged['logits']['kernel'] is params['logits']['kernel']
  assert float(merged['vgg16']['block1_conv1']['bias'][0]) == 0.5
  assert jax.eval_shape(lambda p: model.apply({'params': p}, x), merged).shape == (1, 4)
  with pytest.raises(ValueError, match=r'missing \(in the model, not in the weights\): '
                     r'fc/bias, fc/kernel, logits/bias, logits/kernel'):
    merge.merge_params(params, {'vgg16': loaded})


def test_merge_lists_missing_unexpected_and_misshaped_names(notop_h5):
  target = _classifier_shapes()['params']['vgg16']
  loaded = layers_to_params(notop_h5[1])
  del loaded['block3_conv2']
  loaded['block6_conv1'] = loaded['block5_conv1']
  loaded['block1_conv1'] = {'kernel': np.zeros((3, 3, 1, 64)), 'bias': np.zeros(64)}
  with pytest.raises(ValueError) as error:
    merge.merge_params(target, loaded)
  message = str(error.value)
  assert 'missing (in the model, not in the weights): block3_conv2/bias, block3_conv2/kernel' \
      in message
  assert ('unexpected (in the weights, not in the model): block6_conv1/bias, '
          'block6_conv1/kernel') in message
  assert 'shape mismatch: block1_conv1/kernel: model (3, 3, 3, 64), weights (3, 3, 1, 64)' \
      in message
  assert error.value.skip_hint is None  # skipping alone would not fix this one
  assert error.value.missing == ['block3_conv2/bias', 'block3_conv2/kernel']


def test_merge_skips_the_top_by_pattern(notop_h5):
  target = _classifier_shapes()['params']['vgg16']
  loaded = layers_to_params(notop_h5[1])
  loaded.update({name: {'kernel': np.zeros((4, 4)), 'bias': np.zeros(4)}
                 for name in vw.TOP_LAYERS})
  with pytest.raises(merge.MergeError, match=r"unexpected .*fc1/bias") as error:
    merge.merge_params(target, loaded)
  assert error.value.skip_hint == r'^(fc1|fc2|predictions)(/|$)'
  assert 'skip=' not in str(error.value)  # the hint is the loader's to phrase (its config field)
  merged = merge.merge_params(target, loaded, skip=vw.TOP_PATTERN)
  assert set(merged) == set(vw.CONV_LAYERS)


def test_merge_hint_is_a_skip_pattern_that_fixes_the_merge():
  target = {'a': {'kernel': np.zeros((2, 2))}}
  loaded = {'a': {'kernel': np.ones((2, 2))}, 'b_1': {'kernel': np.ones(1), 'bias': np.ones(1)},
            'c': {'w': np.ones(3)}}
  with pytest.raises(merge.MergeError) as error:
    merge.merge_params(target, loaded)
  hint = error.value.skip_hint
  assert hint == '^(b_1|c)(/|$)'
  merged = merge.merge_params(target, loaded, skip=hint)
  assert np.array_equal(merged['a']['kernel'], np.ones((2, 2)))
  # The hint names whole layers only: a layer named like a prefix is not swept along.
  loaded['b_10'] = {'kernel': np.ones(1)}
  with pytest.raises(merge.MergeError, match='b_10/kernel'):
    merge.merge_params(target, loaded, skip=hint)
