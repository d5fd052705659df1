"""Ported params on disk (mammo_jax.weights.store): msgpack + sidecar, digests, no overwrite."""

import json
import os

import flax
import numpy as np
import pytest

from mammo_jax.weights import store
from mammo_jax.weights import vgg16 as vw
from tests.mammo_jax.weights.vgg16_sources import layers_to_params


def test_load_params_needs_a_matching_sidecar(notop_h5, tmp_path):
  params = layers_to_params(notop_h5[1])
  out = str(tmp_path / 'p.msgpack')
  store.save_params(params, out, {'format': 'keras_h5'})
  os.rename(out + '.json', out + '.json.bak')
  with pytest.raises(FileNotFoundError, match=r'p\.msgpack\.json is missing'):
    vw.load_params(out)
  with pytest.warns(UserWarning, match='preprocessing and top_pool unknown'):
    assert vw.load_params(out, require_metadata=False)[1] == {}
  os.rename(out + '.json.bak', out + '.json')
  params['block1_conv1']['bias'] = params['block1_conv1']['bias'] + 1
  with open(out, 'wb') as f:
    f.write(flax.serialization.msgpack_serialize(params))
  with pytest.raises(ValueError, match='does not match its sidecar'):
    vw.load_params(out)


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
  out = str(tmp_path / 'w.msgpack')
  first = {'conv': {'kernel': np.ones((2, 2), np.float64)}}
  metadata = store.save_params(first, out, {'preprocess': 'caffe'})
  assert json.load(open(out + '.json')) == metadata
  assert set(metadata) == {'preprocess', 'params_sha256'}
  with pytest.raises(FileExistsError, match='pass overwrite=True'):
    store.save_params({'conv': {'kernel': np.zeros((2, 2))}}, out, {})
  os.remove(out)  # a sidecar alone is protected too
  with pytest.raises(FileExistsError):
    store.save_params(first, out, {})
  store.save_params({'conv': {'kernel': np.zeros((2, 2))}}, out, {'x': 1}, overwrite=True)
  params, metadata = store.load_params(out)
  assert metadata['x'] == 1 and float(params['conv']['kernel'].sum()) == 0
  assert sorted(os.listdir(tmp_path)) == ['w.msgpack', 'w.msgpack.json']  # no temporaries


def test_load_params_is_architecture_neutral(tmp_path):
  """Any {layer: {weight: array}} nesting round-trips as float32; the messages are generic."""
  out = str(tmp_path / 'bn.msgpack')
  params = {'bn': {'gamma': np.ones(3), 'moving_mean': np.arange(3)},
            'block': {'conv': {'kernel': np.ones((1, 1, 3, 4), np.float16)}}}
  store.save_params(params, out, {'architecture': 'test'})
  loaded, metadata = store.load_params(out)
  assert metadata['architecture'] == 'test'
  assert loaded['block']['conv']['kernel'].dtype == np.float32
  np.testing.assert_array_equal(loaded['bn']['moving_mean'], [0, 1, 2])
  os.remove(out + '.json')
  with pytest.raises(FileNotFoundError, match=r'the preprocessing the weights need\. Port the '
                     r'source again with port_x$'):
    store.load_params(out, port_command='port_x')
  with pytest.raises(FileNotFoundError, match='no such file'):
    store.load_params(str(tmp_path / 'absent.msgpack'))


def test_file_digests(tmp_path):
  path = tmp_path / 'f'
  path.write_bytes(b'abc')
  assert store.file_digests(str(path)) == (
      'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad',
      '900150983cd24fb0d6963f7d28e17f72')
