"""Weight files shared by the weights tests: built once per test module."""

import shutil

import pytest

from tests.mammo_jax.weights import vgg16_sources


@pytest.fixture(scope='module')
def sources(tmp_path_factory):
  root = tmp_path_factory.mktemp('vgg16_sources')
  yield vgg16_sources.Sources(str(root))
  shutil.rmtree(root)  # several GB with the slow tests; pytest would keep three runs' worth


@pytest.fixture(scope='module')
def notop_h5(tmp_path_factory):
  """A legacy Keras no-top file from numpy (no Keras needed), and its layers."""
  layers = vgg16_sources.numpy_vgg16_layers(include_top=False)
  path = str(tmp_path_factory.mktemp('notop')
             / 'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5')
  vgg16_sources.write_keras_legacy_h5(path, layers, 'keras1')
  return path, layers
