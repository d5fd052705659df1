"""VGG16 transfer learning: the module, freezing, identical train/test preprocessing (defect
D1), warm starts, the stage pipeline and half precision."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import augment, checkpointing, freezing, optimizers, parallel, pipeline
from mammo_jax import preprocessing, tasks, train, warm_start
from mammo_jax.config_lib import stages as stages_lib
from tfds_cbis import strict_json
from mammo_jax.models import vgg16
from tests.conftest import ROOT, load_config


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_params(model, shape=(150, 150, 3)):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *shape))))['params']


def test_vgg16_layers_names_and_parameter_counts():
  base = abstract_params(vgg16.VGG16(include_top=False))
  assert tuple(base) == vgg16.CONV_NAMES and n_params(base) == 14_714_688  # study §2.4 table
  assert base['block4_conv1']['kernel'].shape == (3, 3, 256, 512)
  top = abstract_params(vgg16.VGG16(include_top=True), (224, 224, 3))
  assert n_params(top) == 138_357_544 and top['fc1']['kernel'].shape == (25088, 4096)
  # fc1's width follows the input (Keras: 8192 at 150x150), or torchvision's 7x7 pooling.
  assert abstract_params(vgg16.VGG16(include_top=True))['fc1']['kernel'].shape == (8192, 4096)
  pooled = abstract_params(vgg16.VGG16(include_top=True, top_pool=(7, 7)))
  assert pooled['fc1']['kernel'].shape == (25088, 4096)


@pytest.mark.parametrize('shape,out', [((32, 32, 3), (1, 1)), ((150, 150, 3), (4, 4)),
                                       ((224, 224, 3), (7, 7)), ((97, 61, 3), (3, 1))])
def test_vgg16_features_shape_for_any_input_down_to_32(shape, out):
  y = jax.eval_shape(lambda: vgg16.VGG16(include_top=False).init_with_output(
      jax.random.key(0), jnp.zeros((2, *shape)))[0])
  assert y.shape == (2, *out, 512)
  with pytest.raises(ValueError, match='at least 32x32'):
    vgg16.VGG16(include_top=False).init(jax.random.key(0), jnp.zeros((1, 31, 64, 3)))


def test_adaptive_avg_pool_matches_torch_bins():
  x = jnp.arange(2 * 5 * 4 * 3, dtype=jnp.float32).reshape(2, 5, 4, 3)
  y = vgg16.adaptive_avg_pool(x, (3, 2))
  # torch bins for 5 -> 3: [0, 2), [1, 4), [3, 5); for 4 -> 2: [0, 2), [2, 4).
  for i, (r0, r1) in enumerate([(0, 2), (1, 4), (3, 5)]):
    for j, (c0, c1) in enumerate([(0, 2), (2, 4)]):
      np.testing.assert_allclose(y[:, i, j], x[:, r0:r1, c0:c1].mean(axis=(1, 2)))


@pytest.mark.slow
def test_cpu_fast_and_xla_vgg16_agree():
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3)) * 50
  xla = vgg16.VGG16Classifier(num_outputs=4, fc=8, conv_impl='xla')
  fast = xla.clone(conv_impl='cpu_fast')
  params = xla.init(jax.random.key(0), x)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
  np.testing.assert_allclose(fast.apply(params, x), xla.apply(params, x), rtol=1e-5, atol=1e-5)
  # Jitted, as training runs it (eagerly, every primitive of the Winograd loop would be
  # compiled on its own).
  g_fast, g_xla = jax.jit(jax.grad(loss(fast)))(params), jax.jit(jax.grad(loss(xla)))(params)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


# The study's trainable-parameter counts (docs/REFERENCE_STUDY.md §2.4).
STUDY_TRAINABLE = {
    ('vgg16_2', 'fe'): 2_097_665, ('vgg16_2', 'fe_dropout'): 2_097_665,
    ('vgg16_2', 'fe_fc128'): 1_048_833, ('vgg16_2', 'fe_hardaug'): 2_097_665,
    ('vgg16_2', 'ft1'): 4_457_473, ('vgg16_2', 'ft2'): 6_817_281,
    ('vgg16_4', 'fe_fc128'): 1_049_220, ('vgg16_4', 'fe_fc256'): 2_098_436,
    ('vgg16_4', 'ft1'): 3_409_028, ('vgg16_4', 'ft2'): 5_768_836, ('vgg16_4', 'ft3'): 8_128_644,
}


@pytest.mark.parametrize('name,stage', sorted(STUDY_TRAINABLE))
def test_stage_trainable_parameters_equal_the_study(name, stage):
  config = load_config(name, stage)
  model = train.create_model(config, tasks.get_task(config.task))
  params = abstract_params(model)
  trainable, total = freezing.count(params, config.model.trainable)
  assert trainable == STUDY_TRAINABLE[name, stage]
  assert total - n_params(params['fc']) - n_params(params['logits']) == 14_714_688
  # The optimizer keeps state (RMSprop's second moments) for trainable parameters only.
  tx = freezing.masked_optimizer(optimizers.create_optimizer(config.optimizer), params,
                                 config.model.trainable)
  opt_state = jax.eval_shape(tx.init, params)
  assert n_params(opt_state) == trainable + 1  # + the step count of the LR schedule


def test_freezing_labels_and_errors():
  params = {'vgg16': {'block5_conv3': {'kernel': np.ones(2)},
                      'block5_conv2': {'kernel': np.ones(1)}},
            'fc': {'kernel': np.ones(3), 'bias': np.ones(1)}}
  labels = freezing.labels(params, 'fc, vgg16/block5_conv3')
  assert labels == {'vgg16': {'block5_conv3': {'kernel': 'trainable'},
                              'block5_conv2': {'kernel': 'frozen'}},
                    'fc': {'kernel': 'trainable', 'bias': 'trainable'}}
  assert freezing.count(params, 'fc') == (4, 7)
  # A prefix matches whole path components only, and must match something.
  with pytest.raises(ValueError, match=r'vgg16/block5_conv.*match no param.*vgg16/block5_conv2'):
    freezing.labels(params, 'vgg16/block5_conv')
  with pytest.raises(ValueError, match="model.trainable is empty; use 'all'"):
    freezing.labels(params, ' ')


def test_is_trainable_matches_whole_path_components():
  spec = 'fc, resnet50/conv5_block3'
  assert freezing.is_trainable('fc', spec) and freezing.is_trainable('fc/kernel', spec)
  assert freezing.is_trainable('resnet50/conv5_block3/1_bn', spec)
  assert not freezing.is_trainable('resnet50/conv5_block2/1_bn', spec)
  assert not freezing.is_trainable('fc2', spec)  # a prefix of the name is not a match
  assert freezing.is_trainable('anything', 'all')


def test_freezing_a_model_with_batch_norm_is_refused():
  config = load_config('scratch2', 'exp11,smoke')
  config.model.trainable = 'fc,logits'
  model = train.create_model(config, tasks.get_task(config.task))
  with pytest.raises(ValueError, match='freezing layers of a model with batch norm'):
    train.create_train_state(jax.random.key(0), config, model, (150, 150, 1))


def small_vgg_config(trainable='fc,logits', half=False):
  config = load_config('vgg16_2', 'fe_hardaug,smoke')
  config.model.fc = 8
  config.model.dropout = 0.0
  config.model.trainable = trainable
  config.half_precision = half
  return config


def batch_of(n=4, size=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 65536, (n, size, size, 1), dtype=np.uint16),
          'label': rng.integers(0, 4, (n,), dtype=np.int32)}


def test_frozen_parameters_do_not_move_and_trainable_ones_do():
  config = small_vgg_config('fc,logits,vgg16/block5_conv3')
  config.augment.rotation = 0.0  # keep the step cheap; augmentation is tested elsewhere
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   (32, 32, 1))
  new, _ = train.make_train_step(config, task)(state, parallel.shard(batch_of()),
                                               jax.random.key(1))
  flat_old, flat_new = (freezing.partition(s.params, 'all')[0] for s in (state, new))
  moved = {'/'.join(k) for k in flat_old if not np.array_equal(flat_old[k], flat_new[k])}
  assert moved == {'fc/kernel', 'fc/bias', 'logits/kernel', 'logits/bias',
                   'vgg16/block5_conv3/kernel', 'vgg16/block5_conv3/bias'}


def test_train_and_eval_inputs_are_identical_and_equal_keras_caffe_preprocessing():
  """Defect D1 of the study must not recur: one preprocessing for training and test."""
  keras_vgg16 = pytest.importorskip('keras.applications.vgg16')
  images = batch_of(3, 40)['image']
  off = augment.AugmentSpec()  # augmentation disabled
  assert not off.enabled
  keys = jax.random.split(jax.random.key(0), 3)
  train_x = np.asarray(preprocessing.train_inputs(jnp.asarray(images), keys, off, 'caffe'))
  eval_x = np.asarray(preprocessing.preprocess(jnp.asarray(images), 'caffe'))
  np.testing.assert_array_equal(train_x, eval_x)
  reference = keras_vgg16.preprocess_input(np.repeat(images / 256.0, 3, axis=-1))
  np.testing.assert_allclose(eval_x, reference, rtol=1e-6, atol=1e-4)
  # With augmentation on, the preprocessing still follows it: flips of an image symmetric
  # under both flips change nothing, so the training input equals the evaluation input.
  symmetric = np.concatenate([images, images[:, ::-1]], axis=1)
  symmetric = np.concatenate([symmetric, symmetric[:, :, ::-1]], axis=2)
  flips = augment.AugmentSpec(horizontal_flip=True, vertical_flip=True)
  assert flips.enabled
  for seed in range(3):
    keys = jax.random.split(jax.random.key(seed), 3)
    np.testing.assert_allclose(
        preprocessing.train_inputs(jnp.asarray(symmetric), keys, flips, 'caffe'),
        preprocessing.preprocess(jnp.asarray(symmetric), 'caffe'), atol=1e-4)
  # Channel 0 is blue minus the blue mean (Keras reverses RGB); grey makes B = G = R.
  np.testing.assert_allclose(eval_x[..., 0] - eval_x[..., 2], 123.68 - 103.939, atol=1e-4)


def test_train_step_and_eval_step_see_the_same_tensor():
  """End to end through the pmapped steps: without augmentation or dropout, the training loss
  of a batch (computed before the update) equals the evaluation loss of the same batch."""
  config = small_vgg_config()
  for f in ('rotation', 'shear', 'zoom', 'width_shift', 'height_shift'):
    config.augment[f] = 0.0
  config.augment.horizontal_flip = config.augment.vertical_flip = False
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   (32, 32, 1))
  batch = batch_of()
  _, metrics = train.make_train_step(config, task)(state, parallel.shard(batch),
                                                   jax.random.key(1))
  out = train.make_eval_step(task, 'caffe')(state, parallel.shard(batch))
  np.testing.assert_allclose(float(metrics['loss']), parallel.unshard(out['loss']).mean(),
                             rtol=1e-5)


def test_half_precision_runs_the_convolutions_in_bfloat16_and_trains():
  config = small_vgg_config('all', half=True)
  config.optimizer.learning_rate = 1e-4
  task = tasks.get_task(config.task)
  model = train.create_model(config, task)
  state = train.create_train_state(jax.random.key(0), config, model, (32, 32, 1))
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))
  x = preprocessing.preprocess(jnp.asarray(batch_of()['image']), 'caffe')
  _, inter = model.apply({'params': state.params}, x, capture_intermediates=True)
  assert inter['intermediates']['vgg16']['block1_conv1']['__call__'][0].dtype == jnp.bfloat16
  assert inter['intermediates']['__call__'][0].dtype == jnp.float32  # logits
  # A learnable problem: bright calcifications vs dark masses.
  rng = np.random.default_rng(0)
  labels = np.array([0, 2] * 4, np.int32)
  images = (rng.integers(0, 20000, (8, 32, 32, 1)) + 40000 * (labels >= 2)[:, None, None, None])
  batch = parallel.shard({'image': images.astype(np.uint16), 'label': labels})
  step = train.make_train_step(config, task)
  losses = []
  # 16 steps: the loss settles near 0.346 from step 11 on; at 12 steps the bar (0.355) fell on
  # step 10, where bfloat16 rounding order alone decided the result.
  for i in range(16):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses)) and max(losses[-3:]) < 0.5 * losses[0], losses


def test_stage_overrides_and_config_errors():
  config = load_config('vgg16_4', 'pipeline')
  names = [n for n, _ in pipeline.stage_configs(config)]
  assert names == ['fe_fc128', 'ft1', 'ft2', 'ft3']
  stages = dict(pipeline.stage_configs(config))
  assert stages['ft3'].optimizer.learning_rate == 1e-5 and stages['ft3'].init_from == '@ft2'
  assert stages['fe_fc128'].num_epochs == 150 and stages['ft1'].num_epochs == 200
  # A single-stage config equals the pipeline's stage.
  assert load_config('vgg16_4', 'ft2').to_dict() == stages['ft2'].to_dict()
  # A command-line change of a field that stages set would not reach them: refused.
  changed = load_config('vgg16_4', 'pipeline')
  changed.optimizer.learning_rate = 5e-5
  with pytest.raises(ValueError, match=r'--config.optimizer.learning_rate does not reach stage '
                                       r'ft1.*--config.stages.ft1.optimizer'):
    pipeline.stage_configs(changed)
  changed = load_config('vgg16_4', 'pipeline')
  changed.model.pretrained = '/elsewhere/vgg16.msgpack'  # no stage sets it: reaches all
  assert {c.model.pretrained for _, c in pipeline.stage_configs(changed)} == {
      '/elsewhere/vgg16.msgpack'}
  changed.pipeline = 'ft2,ft1'
  with pytest.raises(ValueError, match='stage ft2 starts from ft1, which config.pipeline'):
    pipeline.stage_configs(changed)
  with pytest.raises(ValueError, match='stage override model.fcc names no field'):
    stages_lib.stage_config(config, {'model': {'fcc': 3}})
  with pytest.raises(ValueError, match='takes one of fe_fc128'):
    load_config('vgg16_4', 'ft9')
  with pytest.raises(ValueError, match='model vgg16 needs model.preprocess'):
    c = load_config('vgg16_2', 'fe')
    c.model.preprocess = 'unit'
    train.create_model(c, tasks.get_task(c.task))


def test_a_fine_tuning_stage_without_its_feature_extraction_run_says_what_to_do(tmp_path,
                                                                               data_cache):
  config = load_config('vgg16_2', 'ft1,smoke')
  config.data.cache_dir = data_cache
  with pytest.raises(FileNotFoundError, match=r'fe_hardaug holds no finished run.*:pipeline'):
    train.train_and_evaluate(config, str(tmp_path / 'vgg' / 'ft1'))


def test_pipeline_chains_stages_and_reuses_finished_ones(tmp_path, data_cache, capsys):
  config = load_config('vgg16_2', 'pipeline,smoke')
  config.data.cache_dir = data_cache
  config.data.num_workers = 1
  config.pipeline = 'fe_hardaug,ft1'  # ft2 is the same code path once more
  config.unlock()
  config.stages.fe_hardaug.seed = 7  # so that ft1's own random init differs from fe's
  config.lock()
  workdir = str(tmp_path / 'vgg')
  summary = pipeline.run(config, workdir)
  assert [summary[s]['trainable_params'] for s in ('fe_hardaug', 'ft1')] == [2_097_665,
                                                                             4_457_473]
  # Strict JSON: the undefined validation AUC (1 validation example) is null in the file.
  with open(os.path.join(workdir, 'pipeline.json')) as f:
    assert json.load(f) == strict_json.clean(summary)
  assert summary['fe_hardaug']['validation_auc'] != summary['fe_hardaug']['validation_auc']
  # ft1 started from fe_hardaug's best checkpoint (another seed): its frozen layers hold
  # fe_hardaug's values.
  fe_params, _, _ = checkpointing.best_variables(os.path.join(workdir, 'fe_hardaug'))
  ft_params, _, _ = checkpointing.best_variables(os.path.join(workdir, 'ft1'))
  np.testing.assert_array_equal(ft_params['vgg16']['block5_conv2']['kernel'],
                                fe_params['vgg16']['block5_conv2']['kernel'])
  first = json.load(open(os.path.join(workdir, 'ft1', 'results.json')))
  mtime = os.path.getmtime(os.path.join(workdir, 'ft1', 'results.json'))
  capsys.readouterr()
  assert strict_json.clean(pipeline.run(config, workdir)) == strict_json.clean(summary)
  assert 'stage ft1: finished' in capsys.readouterr().out
  assert os.path.getmtime(os.path.join(workdir, 'ft1', 'results.json')) == mtime
  assert first['trainable_params'] == 4_457_473
  # A finished stage whose starting run changed since is refused, not silently reused.
  fe_results = os.path.join(workdir, 'fe_hardaug', 'results.json')
  results = json.load(open(fe_results))
  results['best_step'] += 1  # as if fe_hardaug had been run again, with another outcome
  json.dump(results, open(fe_results, 'w'))
  with pytest.raises(ValueError, match=r'ft1 started from a run of .*fe_hardaug that has since'):
    pipeline.run(config, workdir)


def test_warm_start_merges_pretrained_weights_into_the_base_only(tmp_path):
  from mammo_jax.weights import store  # pylint: disable=g-import-not-at-top
  config = small_vgg_config()
  task = tasks.get_task(config.task)
  state = train.create_train_state(jax.random.key(0), config, train.create_model(config, task),
                                   (32, 32, 1))
  # "ImageNet" weights: another random VGG16, with its top (which the classifier skips).
  top = vgg16.VGG16(include_top=True, num_classes=5, fc_units=16)
  source = jax.tree.map(np.asarray, top.init(jax.random.key(9), jnp.zeros((1, 32, 32, 3)))
                        ['params'])
  path = str(tmp_path / 'vgg16.msgpack')
  store.save_params(source, path, {'format': 'keras_h5', 'preprocess': 'caffe'})
  config.model.pretrained = path
  warm = warm_start.warm_start(config, str(tmp_path / 'run'), state)
  for layer in vgg16.CONV_NAMES:
    np.testing.assert_array_equal(warm.params['vgg16'][layer]['kernel'], source[layer]['kernel'])
  for head in ('fc', 'logits'):
    np.testing.assert_array_equal(warm.params[head]['kernel'], state.params[head]['kernel'])
  # Weights made for torchvision's preprocessing do not silently meet caffe inputs.
  store.save_params(source, path, {'format': 'torchvision', 'preprocess': 'torch'},
                    overwrite=True)
  with pytest.raises(ValueError, match="'torch'-preprocessed inputs.*model.preprocess=torch"):
    warm_start.warm_start(config, str(tmp_path / 'run'), state)
  config.model.pretrained = str(tmp_path / 'absent.msgpack')
  with pytest.raises(FileNotFoundError, match=r'(?s)absent.msgpack.*notop.h5.*port_vgg16'):
    warm_start.warm_start(config, str(tmp_path / 'run'), state)


def test_cli_without_the_weights_file_says_where_to_get_it_before_building_data(tmp_path):
  # The configs point at where the README's port command writes the weights.
  assert load_config('vgg16_2').model.pretrained == 'weights/vgg16_keras_notop.msgpack'
  weights = tmp_path / 'weights' / 'vgg16_keras_notop.msgpack'  # never there
  env = dict(os.environ, MAMMO_JAX_CACHE=str(tmp_path / 'cache'), TF_CPP_MIN_LOG_LEVEL='3')
  out = subprocess.run(
      [sys.executable, '-m', 'mammo_jax.main', '--config=configs/vgg16_2.py:pipeline',
       f'--workdir={tmp_path / "run"}', f'--config.model.pretrained={weights}'], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  err = out.stderr
  assert f'VGG16 weights not found: {weights}' in err
  assert 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5' in err
  assert 'python -m mammo_jax.port_vgg16 SRC OUT.msgpack' in err
  assert not os.path.exists(tmp_path / 'cache' / 'synthetic')  # no data was built
