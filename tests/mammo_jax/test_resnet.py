"""ResNet50 (mammo_jax.models.resnet): layer names, variants, and BatchNorm under freezing.

Equivalence with Keras and torch is in tests/mammo_jax/weights/test_resnet50.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import models
from mammo_jax.models import resnet

X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))


def _init(model):
  return model.init(jax.random.key(0), X, train=False)


@pytest.fixture(scope='module')
def head_only():
  """A classifier whose base is frozen (feature extraction), with random BN statistics."""
  model = resnet.ResNet50Classifier(num_outputs=1, trainable='logits')
  variables = _init(model)
  stats = jax.tree.map(lambda a: a + jax.random.uniform(jax.random.key(2), a.shape),
                       variables['batch_stats'])
  return model, {**variables, 'batch_stats': stats}


def test_layer_names_are_keras_flat_names_in_both_variants():
  for variant in ('keras', 'torchvision'):
    shapes = jax.eval_shape(lambda v=variant: resnet.ResNet50(variant=v, include_top=True).init(
        jax.random.key(0), X))
    params, stats = shapes['params'], shapes['batch_stats']
    assert set(params) == set(resnet.CONV_NAMES + resnet.BN_NAMES + ('predictions',))
    assert set(stats) == set(resnet.BN_NAMES)
    assert len(resnet.CONV_NAMES) == 53  # 1 + 16 blocks x 3 + 4 projections
    assert ('bias' in params['conv2_block1_1_conv']) == (variant == 'keras')
    assert params['conv5_block3_3_bn']['scale'].shape == (2048,)


def test_variants_put_the_stride_where_their_frameworks_do():
  """v1 strides the first 1x1 conv; v1.5 the 3x3: same shapes, different maps."""
  outs = {}
  for variant in ('keras', 'torchvision'):
    model = resnet.ResNet50(variant=variant)
    variables = _init(model)
    outs[variant] = model.apply(variables, jnp.ones((1, 64, 64, 3)))
    assert outs[variant].shape == (1, 2, 2, 2048)
  bound = resnet.ResNet50(variant='keras').bind(_init(resnet.ResNet50(variant='keras')))
  assert bound.variables['params']['conv3_block1_1_conv']['kernel'].shape == (1, 1, 256, 128)
  with pytest.raises(ValueError, match="variant must be one of keras, torchvision, not 'v2'"):
    _init(resnet.ResNet50(variant='v2'))


def test_feature_extraction_neither_uses_nor_updates_batch_statistics(head_only):
  model, variables = head_only
  out, updates = model.apply(variables, X, train=True, mutable=['batch_stats'])
  jax.tree.map(np.testing.assert_array_equal, updates['batch_stats'], variables['batch_stats'])
  np.testing.assert_allclose(out, model.apply(variables, X, train=False), rtol=1e-6)


def test_all_trainable_updates_batch_statistics(head_only):
  _, variables = head_only
  model = resnet.ResNet50Classifier(num_outputs=1, trainable='all')
  out, updates = model.apply(variables, X, train=True, mutable=['batch_stats'])
  changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                                         updates['batch_stats'], variables['batch_stats']))
  assert all(changed)
  assert not np.allclose(out, model.apply(variables, X, train=False), rtol=1e-3)


def test_only_the_unfrozen_batch_norm_layers_update(head_only):
  _, variables = head_only
  model = resnet.ResNet50Classifier(num_outputs=1,
                                    trainable='logits,resnet50/conv5_block3_3_bn')
  _, updates = model.apply(variables, X, train=True, mutable=['batch_stats'])
  stats = updates['batch_stats']['resnet50']
  old = variables['batch_stats']['resnet50']
  changed = {n for n in stats if not np.array_equal(stats[n]['mean'], old[n]['mean'])}
  assert changed == {'conv5_block3_3_bn'}


def test_batch_norm_syncs_over_the_device_axis():
  """Two 'devices' of 2 examples with bn_axis_name give the 4-example batch's statistics."""
  model = resnet.ResNet50Classifier(num_outputs=1)
  variables = _init(model)
  synced = model.clone(bn_axis_name='devices')

  def step(model, x):
    return model.apply(variables, x, train=True, mutable=['batch_stats'])

  want_out, want = step(model, X)
  halves = X.reshape(2, 2, *X.shape[1:])
  got_out, got = jax.vmap(lambda x: step(synced, x), axis_name='devices')(halves)
  alone_out, _ = jax.vmap(lambda x: step(model, x))(halves)
  # 53 BatchNorms over 4 values at conv5's 1x1 maps amplify summation-order noise to ~1e-3;
  # per-device statistics are off by far more.
  np.testing.assert_allclose(got_out.reshape(want_out.shape), want_out, rtol=5e-3)
  assert np.max(np.abs(alone_out.reshape(want_out.shape) - want_out)) > 0.1
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g[0], w, rtol=5e-3, atol=1e-4),
               got['batch_stats'], want['batch_stats'])


def test_registry_builds_the_report_head_from_config():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'name': 'resnet50_torchvision', 'preprocess': 'torch',
                                      'dropout': 0.5, 'trainable': 'logits'})
  model = models.create_model(config, 1, bn_axis_name='batch', trainable='logits',
                              conv_impl='xla')
  assert (model.variant, model.fc, model.dropout, model.trainable, model.bn_axis_name) == (
      'torchvision', 0, 0.5, 'logits', 'batch')
  with pytest.raises(ValueError,
                     match="model resnet50 needs model.preprocess 'caffe', 'shen' or "
                     "'standardize', not 'torch'"):
    models.create_model(ml_collections.ConfigDict({'name': 'resnet50', 'preprocess': 'torch'}),
                        1)


def test_zero_init_residual_zeroes_each_branchs_last_batch_norm_scale_only():
  shapes = lambda **kw: jax.eval_shape(lambda: resnet.ResNet50(**kw).init(jax.random.key(0), X))
  plain = _init(resnet.ResNet50())['params']
  zeroed = _init(resnet.ResNet50(zero_init_residual=True))['params']
  last = {f'{resnet.block_names(stage, b)[-1]}_bn' for stage, _, n in resnet.STAGES
          for b in range(1, n + 1)}
  assert len(last) == 16
  for name in resnet.BN_NAMES:
    want = 0.0 if name in last else 1.0
    np.testing.assert_array_equal(zeroed[name]['scale'], want)
    np.testing.assert_array_equal(plain[name]['scale'], 1.0)
  # Every block starts as its shortcut: the output is the same with the branches' other
  # layers scrambled.
  model = resnet.ResNet50(zero_init_residual=True)
  variables = _init(model)
  scrambled = {**variables, 'params': {
      k: (v if k in last or not k.endswith('_2_conv') else
          jax.tree.map(lambda a: a + 1.0, v)) for k, v in variables['params'].items()}}
  np.testing.assert_allclose(model.apply(scrambled, X), model.apply(variables, X), atol=1e-5)
  assert shapes(zero_init_residual=True) == shapes()


@pytest.mark.parametrize('momentum,variant,want', [(0.0, 'keras', 0.99),
                                                   (0.0, 'torchvision', 0.9), (0.5, 'keras', 0.5)])
def test_bn_momentum_overrides_the_variants(momentum, variant, want):
  model = resnet.ResNet50(variant=variant, bn_momentum=momentum)
  variables = _init(model)
  _, updates = model.apply(variables, X, train=True, mutable=['batch_stats'])
  before = variables['batch_stats']['conv1_bn']['mean']
  after = updates['batch_stats']['conv1_bn']['mean']
  # The batch mean behind the update, recovered from a momentum-0 model's running mean.
  batch_mean = resnet.ResNet50(variant=variant, bn_momentum=1e-12).apply(
      variables, X, train=True, mutable=['batch_stats'])[1]['batch_stats']['conv1_bn']['mean']
  np.testing.assert_allclose(after, want * before + (1 - want) * batch_mean, rtol=1e-4,
                             atol=1e-6)


def test_shen_demo_config_reaches_the_classifier():
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict({'name': 'resnet50', 'preprocess': 'shen', 'fc': 0,
                                      'dropout': 0.0, 'bn_momentum': 0.9,
                                      'zero_init_residual': True})
  model = models.create_model(config, 5)
  assert (model.bn_momentum, model.zero_init_residual) == (0.9, True)


@pytest.mark.parametrize('trainable', ['logits', 'all'])
def test_train_step_of_the_fe_config_moves_only_what_trains(trainable):
  """resnet50_2's feature extraction through the trainer: the head moves, the base and its
  batch statistics do not; with everything trainable both move."""
  from mammo_jax import parallel, tasks, train  # pylint: disable=g-import-not-at-top
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config('resnet50_2', 'fe,smoke')
  config.model.trainable = trainable
  config.augment.rotation = 0.0  # keep the step cheap; augmentation is tested elsewhere
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   (32, 32, 1))
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 65536, (4, 32, 32, 1), dtype=np.uint16),
           'label': rng.integers(0, 4, (4,), dtype=np.int32)}
  new, _ = train.make_train_step(config, task)(state, parallel.shard(batch), jax.random.key(1))
  base_moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params['resnet50']), jax.tree.leaves(new.params['resnet50']))]
  stats_moved = [not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.batch_stats), jax.tree.leaves(new.batch_stats))]
  assert not np.array_equal(state.params['logits']['kernel'], new.params['logits']['kernel'])
  if trainable == 'logits':
    assert not any(base_moved) and not any(stats_moved)
  else:
    assert all(stats_moved) and sum(base_moved) > len(base_moved) // 2
