"""The model registry: every entry's Keras parameter count (docs/REFERENCE_STUDY.md §2), its
output shape, and how create_model builds it from config.model."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from mammo_jax import models

# Keras's model.count_params() for each experiment; BN moving statistics (Keras counts them
# as non-trainable params) are in Flax's batch_stats collection and are added separately.
KERAS_PARAMS = {
    'scratch2_exp0': 1_345_953, 'scratch2_exp1': 1_345_953, 'scratch2_exp2': 1_345_953,
    'scratch2_exp3': 1_276_481, 'scratch2_exp4': 1_868_385, 'scratch2_exp5': 1_868_385,
    'scratch2_exp6': 990_049, 'scratch2_exp7': 394_337, 'scratch2_exp8': 1_868_385,
    'scratch2_exp9': 990_049, 'scratch2_exp10': 439_521, 'scratch2_exp11': 439_521,
    'scratch4_m1': 990_196, 'scratch4_m2': 5_104_964, 'scratch4_m3': 3_155_780,
    'benmal': 5_104_769,
    # Pair models on (abnormality, baseline) stacked as two channels (§2.6, §2.7).
    'dual': 7_288_001, 'siamese': 3_644_097,
    # ImageNet VGG16 base (14,714,688) + Flatten(4x4x512) -> Dense(256) -> Dense(1) (§2.4).
    'vgg16': 14_714_688 + 8192 * 256 + 256 + 257,
    # keras.applications.ResNet50 without its top (23,587,712 with the BN moving statistics;
    # torchvision's v1.5 lacks the 26,560 conv biases) + pool -> Dense(256) -> Dense(1).
    'resnet50': 23_587_712 + 2048 * 256 + 256 + 257,
    'resnet50_torchvision': 23_587_712 - 26_560 + 2048 * 256 + 256 + 257,
    # keras.applications.MobileNet(alpha=0.5, include_top=False) (829,536, BN moving
    # statistics included) + global average pool -> Dense(1) (§2.5).
    'mobilenet': 829_536 + 512 + 1,
    # Whole-image models (Shen et al.): BN layers count 4 x width (scale, bias, mean, var).
    # ResNet50 base + two blocks of two bottleneck units [512-512-1024] (each block's first
    # with a 1x1 projection) + Dense(2).
    'whole_resnet50': 23_587_712 + sum(
        cin * cout + cout + 4 * cout for cin, cout in (
            (2048, 1024), (2048, 512), (9 * 512, 512), (512, 1024),  # block 1, unit 1
            (1024, 512), (9 * 512, 512), (512, 1024),  # block 1, unit 2
            (1024, 1024), (1024, 512), (9 * 512, 512), (512, 1024),  # block 2, unit 1
            (1024, 512), (9 * 512, 512), (512, 1024))) + 1024 * 2 + 2,  # block 2, unit 2
    # VGG16 base + two blocks of conv3x3(512) + BN + Dense(2).
    'whole_vgg16': 14_714_688 + 2 * (9 * 512 * 512 + 512 + 4 * 512) + 512 * 2 + 2,
    # Three bias-free conv3x3 + BN (16, 32, 64), one conv3x3(64) + BN, Dense(2).
    'whole_small': (9 * (3 * 16 + 16 * 32 + 32 * 64) + 4 * (16 + 32 + 64)
                    + 9 * 64 * 64 + 64 + 4 * 64 + 64 * 2 + 2),
    # The demo's patch classifier: the same three conv + BN blocks, then Dense(2) (the task's).
    'small': 9 * (3 * 16 + 16 * 32 + 32 * 64) + 4 * (16 + 32 + 64) + 64 * 2 + 2,
}
PREPROCESS = {'vgg16': 'caffe', 'resnet50': 'caffe', 'resnet50_torchvision': 'torch',
              'mobilenet': 'tf', 'whole_resnet50': 'shen', 'whole_vgg16': 'shen',
              'whole_small': 'shen', 'small': 'shen'}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _model_config(name: str, **fields) -> ml_collections.ConfigDict:
  base = dict(name=name, preprocess=PREPROCESS.get(name, 'unit'), fc=256, dropout=0.5,
              alpha=0.5, input_size=0)
  if name == 'mobilenet':
    base['fc'] = 0  # the study's vanilla MobileNet head: the output layer only
  return ml_collections.ConfigDict({**base, **fields})


@pytest.mark.parametrize('name', sorted(models.REGISTRY))
def test_every_registered_model_matches_keras(name):
  entry = models.get_entry(name)
  outputs = entry.template.num_outputs
  model = models.create_model(_model_config(name), outputs, bn_axis_name=None)
  channels = {'image': 1, 'image+baseline': 2}[entry.inputs]
  if 'unit' not in entry.preprocess and entry.inputs == 'image':
    channels = 3  # grey repeated to RGB by the caffe / torch / tf preprocessing
  x = jnp.zeros((2, 150, 150, channels))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  total = _count(variables['params']) + _count(variables.get('batch_stats', {}))
  assert total == KERAS_PARAMS[name]
  if getattr(model, 'batch_norm', False):
    assert _count(variables['batch_stats']) == 960  # mean and var of 32+64+128+256 channels
  out = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert out.shape == (2, model.num_outputs)


def test_registry_covers_the_study_and_rejects_unknown_names():
  assert set(KERAS_PARAMS) == set(models.REGISTRY)
  with pytest.raises(ValueError, match='unknown model'):
    models.get_model('scratch2_exp12')
  assert models.get_model('scratch4_m1', num_outputs=1).num_outputs == 1


def test_create_model_reads_config_model_and_refuses_mismatches():
  vgg = models.create_model(_model_config('vgg16', fc=128, dropout=0.0), 4, conv_impl='xla',
                            bn_axis_name='batch')  # VGG16 has no BN: the attribute is ignored
  assert (vgg.fc, vgg.dropout, vgg.num_outputs, vgg.conv_impl) == (128, 0.0, 4, 'xla')
  m = models.create_model(_model_config('scratch2_exp10'), 1, bn_axis_name='batch')
  assert m.bn_axis_name == 'batch'
  with pytest.raises(ValueError, match='has 4 outputs but task mass_vs_calc needs 1'):
    models.create_model(_model_config('scratch4_m2'), 1, task_name='mass_vs_calc')
  with pytest.raises(ValueError, match="model vgg16 needs model.preprocess 'caffe', 'torch', "
                     "'shen' or 'standardize'"):
    models.create_model(_model_config('vgg16', preprocess='unit'), 1)
  assert models.inputs_of('dual') == 'image+baseline' and models.inputs_of('vgg16') == 'image'
  assert models.family_of('scratch2_exp5') is None
  assert callable(models.family_of('vgg16').load)


def test_dropout_and_batch_norm_behave_differently_in_training():
  model = models.get_model('scratch2_exp10')
  x = jax.random.normal(jax.random.key(1), (4, 150, 150, 1))
  variables = model.init(jax.random.key(0), x, train=False)
  eval_a = model.apply(variables, x)
  eval_b = model.apply(variables, x)
  np.testing.assert_array_equal(eval_a, eval_b)
  train_out, updates = model.apply(variables, x, train=True, mutable=['batch_stats'],
                                   rngs={'dropout': jax.random.key(2)})
  assert not np.allclose(train_out, eval_a)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), updates['batch_stats'],
                       variables['batch_stats'])
  assert max(jax.tree.leaves(moved)) > 0
