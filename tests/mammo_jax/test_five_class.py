"""Shen et al.'s five-class patch task on cbis_ddsm/s10_224: the task, its dataset pairing,
batch balancing, Shen's preprocessing, input resizing and the five-class metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mammo_jax import augment
from mammo_jax import config_checks
from mammo_jax import evaluators
from mammo_jax import input_pipeline
from mammo_jax import metrics
from mammo_jax import preprocessing
from mammo_jax import tasks
from tests.mammo_jax.test_config_checks import _with

FIVE = ('BACKGROUND', 'BENIGN_MASS', 'MALIGNANT_MASS', 'BENIGN_CALCIFICATION',
        'MALIGNANT_CALCIFICATION')


def test_five_class_reads_the_s10_labels_with_background_first():
  task = tasks.get_task('five_class')
  assert task.class_names == FIVE and task.num_outputs == 5
  assert task.dataset == 'cbis_ddsm/s10_224' and task.dataset_labels == FIVE
  assert task.target(jnp.arange(5)).tolist() == [0, 1, 2, 3, 4]
  logits = jnp.log(jnp.array([[0.6, 0.1, 0.1, 0.1, 0.1]] * 5))
  np.testing.assert_allclose(task.loss(logits, jnp.arange(5)), -np.log([0.6] + [0.1] * 4),
                             rtol=1e-6)


def test_the_wrong_dataset_is_refused_in_one_line_before_any_data():
  config = _with('scratch4', 'm1,smoke', task='five_class')
  with pytest.raises(config_checks.ConfigError,
                     match=r"^config.task='five_class' reads the labels of cbis_ddsm/s10_224, "
                           r"not of cbis_ddsm/roi150; set --config.data.name=cbis_ddsm/s10_224"):
    config_checks.check(config)
  with pytest.raises(config_checks.ConfigError, match=r"task='four_class' reads the labels of "
                     r'cbis_ddsm/roi150, not of cbis_ddsm/s10_224'):
    config_checks.check(_with('scratch4', 'm1,smoke', **{'data.name': 'cbis_ddsm/s10_224:1.0.0'}))
  # Another builder's name passes here; its label names are checked once it is prepared.
  config_checks.check(_with('scratch4', 'm1,smoke', **{'data.name': 'my_cbis/roi224'}))
  task = tasks.get_task('five_class')
  task.check_labels(FIVE, 'cbis_ddsm/s10_224')
  with pytest.raises(ValueError, match=r"task='five_class' reads the labels .*but my_cbis/roi224 "
                     r"has \('BENIGN_MASS'"):
    task.check_labels(FIVE[1:], 'my_cbis/roi224')


def test_batch_balance_weights_make_the_loss_a_sum_of_class_means():
  y = jnp.array([0, 0, 0, 3])
  np.testing.assert_allclose(tasks.balance_weights(y, 5), [4 / 3] * 3 + [4.0])
  losses = jnp.array([1.0, 2.0, 3.0, 10.0])
  weighted = float((losses * tasks.balance_weights(y, 5)).mean())
  np.testing.assert_allclose(weighted, 2.0 + 10.0, rtol=1e-6)  # class means 2 and 10
  # Split over two "devices", shares are those of the global batch.
  split = jax.vmap(lambda s: tasks.balance_weights(s, 5, 'batch'), axis_name='batch')
  np.testing.assert_allclose(split(y.reshape(2, 2)).ravel(), [4 / 3] * 3 + [4.0])
  with pytest.raises(config_checks.ConfigError, match="config.class_balance='bad' is not known"):
    config_checks.check(_with('scratch4', 'm1,smoke', class_balance='bad'))


def test_shen_preprocessing_is_the_recipe_and_the_same_for_training_and_evaluation():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 65536, (3, 8, 8, 1)).astype(np.uint16)
  expected = np.repeat(images * (255 / 65535), 3, axis=-1) - 52.18
  eval_x = np.asarray(preprocessing.preprocess(jnp.asarray(images), 'shen'))
  np.testing.assert_allclose(eval_x, expected, rtol=1e-5, atol=1e-4)
  keys = jax.random.split(jax.random.key(0), 3)
  train_x = preprocessing.train_inputs(jnp.asarray(images), keys, augment.AugmentSpec(), 'shen')
  np.testing.assert_array_equal(np.asarray(train_x), eval_x)
  # Augmentation works on the [0, 255] grey image; the mean comes after it, so a flip-symmetric
  # image is unchanged whatever the flips draw.
  sym = np.concatenate([images, images[:, ::-1]], axis=1)
  sym = np.concatenate([sym, sym[:, :, ::-1]], axis=2)
  flips = augment.AugmentSpec(horizontal_flip=True, vertical_flip=True, fill_mode='nearest')
  np.testing.assert_allclose(preprocessing.train_inputs(jnp.asarray(sym), keys, flips, 'shen'),
                             preprocessing.preprocess(jnp.asarray(sym), 'shen'), atol=1e-4)


def test_resize_is_exact_block_means_and_a_no_op_at_the_stored_size():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 65536, (2, 8, 8, 1)).astype(np.uint16)
  small = input_pipeline.resize(images, 4)
  assert small.shape == (2, 4, 4, 1) and small.dtype == np.uint16
  blocks = images.reshape(2, 4, 2, 4, 2, 1).astype(np.float64).mean(axis=(2, 4))
  np.testing.assert_allclose(small, np.round(blocks), atol=1)
  assert input_pipeline.resize(images, 8) is images
  with pytest.raises(config_checks.ConfigError, match=r'^config.data.image_size=-3: accepted'):
    config_checks.check(_with('scratch4', 'm1,smoke', **{'data.image_size': -3}))


def test_five_class_metrics_per_class_and_macro_auc():
  labels = np.array([0, 0, 1, 1, 2, 3, 4, 4])
  probs = np.full((8, 5), 0.1)
  probs[np.arange(8), labels] = 0.6  # every example right
  probs[7] = [0.6, 0.1, 0.1, 0.1, 0.1]  # one MALIGNANT_CALCIFICATION called BACKGROUND
  m = metrics.classification_metrics(probs, labels, class_names=FIVE)
  assert m['accuracy'] == 7 / 8
  f1 = [2 * (2 / 3) * 1 / (2 / 3 + 1), 1, 1, 1, 2 * 1 * 0.5 / 1.5]
  np.testing.assert_allclose(m['macro_f1'], np.mean(f1))
  # BACKGROUND: positives 0.6, 0.6 vs negatives (0.1 x5, 0.6): 11 of 12 pairs, the tie a half.
  assert m['auc_per_class']['BACKGROUND'] == pytest.approx(11 / 12)
  # MALIGNANT_CALCIFICATION: positives 0.6 (above the six negatives' 0.1) and 0.1 (tied): 9/12.
  assert m['auc_per_class']['MALIGNANT_CALCIFICATION'] == pytest.approx(9 / 12)
  np.testing.assert_allclose(m['auc'], np.mean(list(m['auc_per_class'].values())))
  # A class absent from the labels has no AUC and is left out of the macro mean.
  m = metrics.classification_metrics(probs[:6], labels[:6], class_names=FIVE)
  assert np.isnan(m['auc_per_class']['MALIGNANT_CALCIFICATION'])
  np.testing.assert_allclose(m['auc'], np.mean([m['auc_per_class'][n] for n in FIVE[:4]]))
  # Hard decisions (an ensemble vote) take both AUCs from the scores, or none without them.
  evaluator = evaluators.get_evaluator()
  hard = evaluators.evaluate_decisions(evaluator, probs.argmax(1), probs, labels, FIVE)
  assert hard['auc_per_class'] == pytest.approx(
      metrics.classification_metrics(probs, labels, class_names=FIVE)['auc_per_class'])
  none = evaluators.evaluate_decisions(evaluator, probs.argmax(1), None, labels, FIVE)
  assert all(np.isnan(v) for v in none['auc_per_class'].values()) and np.isnan(none['auc'])
