"""MobileNet v1: the module's layers and shapes, frozen BatchNorm in inference mode, the
resize and MobileNet's 'tf' preprocessing (identical for training and evaluation), and the
configs. Equivalence with Keras is in tests/mammo_jax/weights/test_mobilenet.py."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import augment, checkpointing, freezing, models, parallel, preprocessing, tasks
from mammo_jax import train
from mammo_jax.models import mobilenet
from tests.conftest import load_config

KERAS_NOTOP_PARAMS = 829_536  # keras.applications.MobileNet(alpha=0.5, include_top=False)


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_layers_names_shapes_and_keras_parameter_count():
  model = mobilenet.MobileNet(alpha=0.5)
  out, variables = jax.eval_shape(
      lambda: model.init_with_output(jax.random.key(0), jnp.zeros((2, 160, 160, 3))))
  assert out.shape == (2, 5, 5, 512)
  params, stats = variables['params'], variables['batch_stats']
  assert set(params) == set(mobilenet.CONV_NAMES + mobilenet.BN_NAMES)
  assert set(stats) == set(mobilenet.BN_NAMES)
  assert n_params(params) + n_params(stats) == KERAS_NOTOP_PARAMS
  assert params['conv1']['kernel'].shape == (3, 3, 3, 16)
  assert params['conv_dw_2']['kernel'].shape == (3, 3, 1, 32)  # grouped: one input channel
  assert params['conv_pw_13']['kernel'].shape == (1, 1, 512, 512)
  assert 'bias' not in params['conv_pw_13'] and stats['conv_pw_13_bn']['var'].shape == (512,)
  # Odd sizes: 'same' stem (65 -> 33), then Keras's bottom/right zero pad before each strided
  # depthwise conv: 33 -> 16 -> 8 -> 4 -> 2.
  odd = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0),
                                                      jnp.zeros((1, 65, 65, 3)))[0])
  assert odd.shape == (1, 2, 2, 512)
  top = mobilenet.MobileNet(alpha=0.25, include_top=True, num_classes=7)
  logits = jax.eval_shape(lambda: top.init_with_output(jax.random.key(0),
                                                       jnp.zeros((2, 64, 64, 3)))[0])
  assert logits.shape == (2, 7)
  with pytest.raises(ValueError, match='NHWC RGB inputs of at least 32x32'):
    model.init(jax.random.key(0), jnp.zeros((1, 31, 64, 3)))


def _config(trainable: str, input_size: int = 0, fc: int = 0):
  config = load_config('mobilenet_2', 'fe,smoke')
  config.unlock()
  config.model.update(trainable=trainable, input_size=input_size, fc=fc)
  for field in ('rotation', 'shear', 'zoom', 'width_shift', 'height_shift'):
    config.augment[field] = 0.0  # the steps stay cheap; augmentation is tested elsewhere
  config.augment.horizontal_flip = config.augment.vertical_flip = False
  return config


def _batch(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 65536, (n, size, size, 1), dtype=np.uint16),
          'label': rng.integers(0, 2, (n,), dtype=np.int32)}


def _step(config, size=32):
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   (size, size, 1))
  batch = _batch(size=size)
  new, metrics = train.make_train_step(config, task)(state, parallel.shard(batch),
                                                     jax.random.key(1))
  return task, state, new, metrics, batch


def _moved(old, new) -> set[str]:
  flat_old, flat_new = (freezing.partition(t, 'all')[0] for t in (old, new))
  return {'/'.join(k) for k in flat_old if not np.array_equal(flat_old[k], flat_new[k])}


@pytest.mark.parametrize('trainable,stats_moved', [
    ('logits', set()),  # feature extraction: frozen BatchNorm neither uses nor moves batch stats
    ('logits,mobilenet/conv_pw_13_bn', {'mobilenet/conv_pw_13_bn/mean',
                                        'mobilenet/conv_pw_13_bn/var'}),
    ('all', {f'mobilenet/{bn}/{k}' for bn in mobilenet.BN_NAMES for k in ('mean', 'var')}),
])
def test_batch_stats_move_only_where_batch_norm_is_trainable(trainable, stats_moved):
  model = models.create_model(_config(trainable).model, 1, trainable=trainable)
  x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3), minval=-1.0, maxval=1.0)
  variables = model.init(jax.random.key(0), x)
  _, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert _moved(variables['batch_stats'], updates['batch_stats']) == stats_moved


def test_head_only_training_runs_the_base_in_inference_mode():
  """Through the real train step, with the base frozen: no base parameter or statistic moves,
  and the training loss before the update equals the evaluation loss of the same batch
  (BatchNorm used the moving statistics; train and test inputs, resized to input_size and
  'tf'-preprocessed, are the same tensor)."""
  config = _config('logits', input_size=40)
  task, state, new, metrics, batch = _step(config)
  assert _moved(state.batch_stats, new.batch_stats) == set()
  # (With random weights the base's features are tiny, so the logits kernel may not move.)
  assert 'logits/bias' in _moved(state.params, new.params) <= {'logits/kernel', 'logits/bias'}
  out = train.make_eval_step(task, 'tf')(state, parallel.shard(batch))
  np.testing.assert_allclose(float(metrics['loss']), parallel.unshard(out['loss']).mean(),
                             rtol=1e-5)


def test_input_size_resizes_inside_the_model():
  model = models.create_model(_config('logits', input_size=40).model, 1)
  assert model.input_size == 40 and model.alpha == 0.5
  assert models.create_model(_config('logits').model, 1).input_size is None
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = model.init(jax.random.key(0), x)
  resized = jax.image.resize(x, (2, 40, 40, 3), 'bilinear')
  # Training-mode BatchNorm (trainable 'all') keeps a random base's features at scale.
  run = lambda m, inputs: m.apply(variables, inputs, train=True, mutable=['batch_stats'])[0]
  np.testing.assert_allclose(run(model, x), run(model.clone(input_size=None), resized),
                             rtol=1e-5)
  assert not np.allclose(run(model, x), run(model.clone(input_size=None), x), rtol=1e-3)
  with pytest.raises(ValueError, match=r'model.input_size=16: MobileNet takes inputs of at '
                     r'least 32x32; set --config.model.input_size=160'):
    model.clone(input_size=16).init(jax.random.key(0), x)


def test_tf_preprocessing_is_keras_mobilenet_preprocess_input_for_training_and_test():
  images = _batch(3, 40)['image']
  off = augment.AugmentSpec()
  keys = jax.random.split(jax.random.key(0), 3)
  train_x = np.asarray(preprocessing.train_inputs(jnp.asarray(images), keys, off, 'tf'))
  eval_x = np.asarray(preprocessing.preprocess(jnp.asarray(images), 'tf'))
  np.testing.assert_array_equal(train_x, eval_x)
  # keras.applications.mobilenet.preprocess_input (mode 'tf') on 0..255 RGB.
  rgb255 = np.repeat(images.astype(np.float64) * 255.0 / 65535.0, 3, axis=-1)
  np.testing.assert_allclose(eval_x, rgb255 / 127.5 - 1.0, atol=1e-6)
  assert eval_x.shape == (3, 40, 40, 3) and eval_x.min() >= -1.0 and eval_x.max() <= 1.0
  keras_mobilenet = pytest.importorskip('keras.applications.mobilenet')
  np.testing.assert_allclose(eval_x, keras_mobilenet.preprocess_input(rgb255), atol=1e-6)


@pytest.mark.parametrize('variant,trainable_params', [
    ('fe', 512 + 1), ('fe_dropout', 512 + 1), ('fe_fc8', 512 * 8 + 8 + 8 + 1)])
def test_configs_build_the_study_variants(variant, trainable_params):
  config = load_config('mobilenet_2', variant)
  assert (config.model.alpha, config.model.input_size, config.model.preprocess) == (
      0.5, 160, 'tf')
  model = models.create_model(config.model, 1)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                                jnp.zeros((1, 150, 150, 3))))
  n_train, n_total = freezing.count(variables['params'], config.model.trainable)
  assert n_train == trainable_params
  assert n_total + n_params(variables['batch_stats']) == KERAS_NOTOP_PARAMS + trainable_params
  assert model.dropout == (0.5 if variant == 'fe_dropout' else 0.0)


def test_mobilenet_refuses_other_preprocessing():
  config = _config('logits').model
  config.preprocess = 'caffe'
  with pytest.raises(ValueError, match="model mobilenet needs model.preprocess='tf', not "
                     "'caffe'; set --config.model.preprocess=tf"):
    models.create_model(config, 1)


@pytest.mark.slow
def test_smoke_run_keeps_the_frozen_base_statistics(tmp_path, data_cache):
  """configs/mobilenet_2.py:fe_fc8,smoke end to end: the head trains, and the best
  checkpoint's base BatchNorm statistics are still their initial values (mean 0, var 1)."""
  config = load_config('mobilenet_2', 'fe_fc8,smoke')
  config.data.cache_dir = data_cache
  config.data.num_workers = 1
  workdir = str(tmp_path / 'mobilenet')
  train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['trainable_params'] == 512 * 8 + 8 + 8 + 1
  _, stats, _ = checkpointing.best_variables(workdir)
  for bn in mobilenet.BN_NAMES:
    np.testing.assert_array_equal(stats['mobilenet'][bn]['mean'], 0.0)
    np.testing.assert_array_equal(stats['mobilenet'][bn]['var'], 1.0)
