"""Pair models (Dual, Siamese; docs/REFERENCE_STUDY.md §2.6-2.7) and their (abnormality, baseline)
inputs: Keras parameter counts, shared vs unshared encoders, one augmentation per pair,
examples without a baseline left out and counted, and input/model mismatches refused."""

import json
import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import augment, input_pipeline, models, preprocessing, tasks, train
from mammo_jax.models import pairs
from tests.conftest import load_config

# Keras's model.count_params() of the study's notebooks.
KERAS_PARAMS = {'dual': 7_288_001, 'siamese': 3_644_097}
ENCODER_PARAMS = 320 + 18_496 + 73_856  # C32-C64-C128 on one grey channel
SMALL = (2, 38, 38, 2)  # 38 -> 36 -> 18 -> 16 -> 8 -> 6 -> 3: quick forward passes


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _random_params(model, shape=SMALL, seed=0):
  """Random parameters of init's shapes, biases included (no path is trivially zero); drawn
  with numpy, as compiling init's random number generators would take seconds."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))['params']
  rng = np.random.default_rng(seed)
  scale = lambda x: 0.1 if x.ndim == 1 else 1 / np.sqrt(np.prod(x.shape[:-1]))  # noqa: E731
  return jax.tree.map(lambda x: jnp.asarray(scale(x) * rng.standard_normal(x.shape),
                                            jnp.float32), shapes)


@pytest.mark.parametrize('name,subtrees', [
    ('dual', {'abnormality_branch', 'baseline_branch', 'fc', 'logits'}),
    ('siamese', {'encoder', 'fc', 'logits'}),
])
def test_parameter_counts_and_encoder_subtrees(name, subtrees):
  model = models.get_model(name)
  params = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((2, 150, 150, 2)), train=False))['params']
  assert _count(params) == KERAS_PARAMS[name]
  assert set(params) == subtrees  # siamese: ONE encoder subtree; dual: one per member
  for branch in subtrees - {'fc', 'logits'}:
    assert _count(params[branch]) == ENCODER_PARAMS
  assert params['fc']['kernel'].shape == ((2 if name == 'dual' else 1) * 17 * 17 * 128, 96)
  out = jax.eval_shape(lambda p: model.apply({'params': p}, jnp.zeros((2, 150, 150, 2))), params)
  assert out.shape == (2, 1)
  assert models.inputs_of(name) == 'image+baseline'
  assert models.inputs_of('scratch2_exp5') == models.inputs_of('vgg16') == 'image'
  assert set(input_pipeline.INPUTS) == {'image', 'image+baseline'}


def test_siamese_head_sees_the_signed_difference_of_one_shared_encoder():
  model = models.get_model('siamese')
  params = _random_params(model)
  x = jax.random.uniform(jax.random.key(2), SMALL)
  same = x.at[..., 1].set(x[..., 0])  # identical members: the difference is exactly zero
  y = jax.random.uniform(jax.random.key(3), SMALL[:3] + (1,))
  other = jnp.concatenate([y, y], -1)
  apply = jax.jit(lambda v: model.apply({'params': params}, v))
  np.testing.assert_allclose(apply(same), apply(other), atol=1e-6)  # both give the head zeros

  @jax.jit
  def by_hand(x):  # the encoder run on each member separately, then the head
    encoder = pairs.ConvEncoder((32, 64, 128))
    features = [encoder.apply({'params': params['encoder']}, x[..., i:i + 1]) for i in (0, 1)]
    diff = (features[0] - features[1]).reshape(2, -1)
    hidden = jax.nn.relu(diff @ params['fc']['kernel'] + params['fc']['bias'])
    return hidden @ params['logits']['kernel'] + params['logits']['bias']

  np.testing.assert_allclose(apply(x), by_hand(x), rtol=1e-4, atol=1e-5)


def test_dual_concatenates_abnormality_channels_first():
  model = models.get_model('dual')
  params = _random_params(model)
  kernel = params['fc']['kernel'].reshape(3, 3, 256, 96)  # Keras's H*W*C flatten order
  abnormality_only = {**params, 'fc': {**params['fc'], 'kernel':
                                       kernel.at[:, :, 128:].set(0).reshape(-1, 96)}}
  x = jax.random.uniform(jax.random.key(2), SMALL)
  new_baseline = x.at[..., 1].set(jax.random.uniform(jax.random.key(4), SMALL[:3]))
  new_abnormality = x.at[..., 0].set(jax.random.uniform(jax.random.key(4), SMALL[:3]))
  apply = jax.jit(lambda p, v: model.apply({'params': p}, v))
  # With the baseline half of the fc kernel zeroed, only channel 0 can reach the output.
  np.testing.assert_allclose(apply(abnormality_only, x), apply(abnormality_only, new_baseline),
                             rtol=1e-6)
  assert not np.allclose(apply(abnormality_only, x), apply(abnormality_only, new_abnormality))
  assert not np.allclose(apply(params, x), apply(params, new_baseline))


@pytest.mark.parametrize('name', ['dual', 'siamese'])
def test_conv_impls_agree_and_single_images_are_refused(name):
  x = jax.random.uniform(jax.random.key(5), SMALL)
  params = _random_params(models.get_model(name))
  outs = [jax.jit(models.get_model(name, conv_impl=impl).apply)({'params': params}, x)
          for impl in ('xla', 'cpu_fast')]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='set --config.data.inputs=image\\+baseline'):
    models.get_model(name).apply({'params': params}, x[..., :1])


def test_one_random_transform_per_pair():
  spec = augment.STUDY_SETTINGS['D']
  keys = jax.random.split(jax.random.key(6), 4)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 65535, (4, 40, 40, 1), dtype=np.uint16)
  baseline = rng.integers(0, 65535, (4, 40, 40, 1), dtype=np.uint16)
  step_inputs = jax.jit(preprocessing.train_inputs, static_argnums=(2, 3))  # what train_step feeds
  # Identical members stay identical after augmentation.
  twin = np.asarray(step_inputs(np.concatenate([image, image], -1), keys, spec, 'unit'))
  np.testing.assert_array_equal(twin[..., 0], twin[..., 1])
  # Different members get the transform each would get alone with the same key.
  pair = np.asarray(step_inputs(np.concatenate([image, baseline], -1), keys, spec, 'unit'))
  alone = [np.asarray(step_inputs(member, keys, spec, 'unit')) for member in (image, baseline)]
  # Equal up to float32 rounding (XLA may fuse the one- and two-channel resampling apart).
  np.testing.assert_allclose(pair, np.concatenate(alone, -1), atol=1e-5)
  assert not np.allclose(pair[..., :1], image / 65535, atol=1e-2)  # the transform did something
  assert not np.allclose(pair[0], pair[1])  # and differs between pairs


def test_stack_pairs_leaves_out_and_counts_examples_without_baseline(monkeypatch):
  n = 5
  data = {'image': np.arange(n * 4, dtype=np.uint16).reshape(n, 2, 2, 1),
          'baseline': 100 + np.arange(n * 4, dtype=np.uint16).reshape(n, 2, 2, 1),
          'has_baseline': np.array([True, False, True, True, False]),
          'label': np.arange(n, dtype=np.int32), 'id': np.array([b'a', b'b', b'c', b'd', b'e'])}
  out, without = input_pipeline.stack_pairs(data)
  assert without == 2 and set(out) == {'image', 'label', 'id'}
  assert out['id'].tolist() == [b'a', b'c', b'd'] and out['label'].tolist() == [0, 2, 3]
  np.testing.assert_array_equal(out['image'][..., 0], data['image'][[0, 2, 3], ..., 0])
  np.testing.assert_array_equal(out['image'][..., 1], data['baseline'][[0, 2, 3], ..., 0])
  # A split with no baseline at all is an error, not an empty evaluation.
  data['has_baseline'][:] = False
  monkeypatch.setattr(input_pipeline, 'load_split', lambda *_: data)
  builder = types.SimpleNamespace(info=types.SimpleNamespace(full_name='cbis_ddsm/roi150/1.0.0'))
  with pytest.raises(ValueError, match="no example of split 'validation' .* has a baseline"):
    input_pipeline.load_inputs(builder, 'validation', 'image+baseline')


def test_wrong_input_and_model_combinations_are_refused(tmp_path):
  task = tasks.get_task('mass_vs_calc')
  config = load_config('dual', 'smoke')
  for name in ('dual', 'siamese'):
    assert load_config(name).model.name == name
    assert train.create_model(load_config(name), task).num_outputs == 1
  config.data.inputs = 'image'
  with pytest.raises(ValueError, match=r"model dual takes data.inputs='image\+baseline', not "
                     r"'image'; set --config.data.inputs=image\+baseline"):
    train.create_model(config, task)
  # Refused before any data preparation (this cache dir is never created).
  config.data.cache_dir = str(tmp_path / 'never')
  with pytest.raises(ValueError, match='set --config.data.inputs=image'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'never')
  config = load_config('scratch2', 'smoke')
  config.data.inputs = 'image+baseline'
  with pytest.raises(ValueError, match=r"set --config.data.inputs=image$"):
    train.create_model(config, task)
  config.data.inputs = 'baseline'
  with pytest.raises(ValueError, match='unknown data.inputs'):
    train.create_model(config, task)
  config = load_config('siamese', 'smoke')
  config.model.preprocess = 'caffe'
  with pytest.raises(ValueError, match="needs model.preprocess='unit'"):
    train.create_model(config, task)
  config.data.cache_dir = str(tmp_path / 'never')  # refused before any data preparation
  with pytest.raises(ValueError, match="needs model.preprocess='unit'"):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'never')
  with pytest.raises(ValueError, match='takes no argument or "smoke"'):
    load_config('siamese', 'exp5')


def test_pair_configs_use_the_study_settings():
  for name in ('dual', 'siamese'):
    config = load_config(name)
    assert config.data.inputs == 'image+baseline' and config.task == 'mass_vs_calc'
    assert config.model.preprocess == 'unit'
    assert (config.optimizer.name, config.optimizer.learning_rate, config.optimizer.decay) == (
        'rmsprop', 1e-3, 1e-3)
    assert (config.batch_size, config.num_epochs, config.patience) == (128, 500, 80)
    assert augment.AugmentSpec.from_config(config.augment) == augment.STUDY_SETTINGS['D']
    assert load_config(name, 'smoke').batch_size == 4


def _smoke_config(name, cache):
  config = load_config(name, 'smoke')
  config.data.cache_dir = cache
  config.data.num_workers = 1
  return config


@pytest.mark.parametrize('name,dropped', [
    ('dual', {'train': 2, 'validation': 0, 'test': 1}),
    ('siamese', {'train': 0, 'validation': 0, 'test': 0}),
])
def test_smoke_run_leaves_out_and_counts_examples_without_baseline(
    tmp_path, data_cache, monkeypatch, capsys, name, dropped):
  """The synthetic smoke data has a baseline for every abnormality; a wrapped load_split
  takes it away from the first (by id) examples of some splits."""
  real_load_split = input_pipeline.load_split
  full = {}

  def load_split(builder, split, features=('image', 'label')):
    data = real_load_split(builder, split, features)
    if 'has_baseline' in data:
      full[split] = data['id'].copy()
      data['has_baseline'][:dropped[split]] = False
      data['baseline'][:dropped[split]] = 0  # as the builder stores a missing baseline
    return data

  monkeypatch.setattr(input_pipeline, 'load_split', load_split)
  workdir = str(tmp_path / 'run')
  config = _smoke_config(name, data_cache)
  config.num_epochs = epochs = 2 if name == 'dual' else 1  # siamese: less time, same paths
  state, summary = train.train_and_evaluate(config, workdir)
  results = json.load(open(os.path.join(workdir, 'results.json')))
  assert results['examples_without_baseline'] == dropped
  assert results['total_params'] == KERAS_PARAMS[name] and results['model'] == name
  assert f'Left out for lacking a baseline patch (data.inputs=image+baseline): train ' \
         f'{dropped["train"]}, validation 0, test {dropped["test"]}' in capsys.readouterr().out
  for split in ('train', 'validation', 'test'):
    assert results['examples'][split] == len(full[split]) - dropped[split] > 0
  # Steps per epoch come from the kept training pairs only (smoke batch 4).
  assert summary['steps_run'] == int(state.step) == epochs * (results['examples']['train'] // 4)
  assert results['test']['count'] == results['examples']['test']
  predictions = np.load(os.path.join(workdir, 'predictions.npz'))
  for split in ('validation', 'test'):  # ids of the kept examples, in the evaluated order
    kept = [i.decode() for i in full[split][dropped[split]:]]
    assert predictions[f'{split}_ids'].tolist() == kept
    assert len(predictions[f'{split}_probs']) == len(predictions[f'{split}_label4']) == len(kept)
