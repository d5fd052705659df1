"""Generic readers (mammo_jax.weights.readers): format detection, Keras HDF5 naming, errors."""

import sys
import zipfile

import h5py
import numpy as np
import pytest

from mammo_jax.weights import readers
from mammo_jax.weights import vgg16 as vw
from tests.mammo_jax.weights import vgg16_sources


def test_unrecognised_damaged_and_foreign_files_are_named(notop_h5, tmp_path):
  path, _ = notop_h5
  with open(path, 'rb') as f:
    head = f.read(4096)
  cases = {
      'truncated.h5': (head, r'truncated\.h5: cannot be read as HDF5'),
      'noise.pth': (b'not a weights file' * 8, r'noise\.pth: unrecognised file'),
      'broken.pth': (b'PK\x03\x04' + b'\x00' * 64, r'broken\.pth: a damaged zip file'),
  }
  for name, (data, message) in cases.items():
    bad = tmp_path / name
    bad.write_bytes(data)
    for read in (readers.detect_format, vw.port_file):
      with pytest.raises(ValueError, match=message):
        read(str(bad))
  with h5py.File(tmp_path / 'other.h5', 'w') as f:
    f['x'] = np.zeros(3)
  with pytest.raises(ValueError, match='an HDF5 file but not Keras weights'):
    readers.detect_format(str(tmp_path / 'other.h5'))
  with zipfile.ZipFile(tmp_path / 'other.zip', 'w') as z:
    z.writestr('readme.txt', 'hi')
  with pytest.raises(ValueError, match='neither a torch.save file'):
    readers.detect_format(str(tmp_path / 'other.zip'))


def test_format_is_detected_by_content_not_extension(notop_h5, tmp_path):
  path, _ = notop_h5
  renamed = tmp_path / 'weights.pth'
  renamed.write_bytes(open(path, 'rb').read())
  assert readers.detect_format(str(renamed)) == 'keras_h5'
  params, metadata = vw.port_file(str(renamed))
  assert metadata['format'] == 'keras_h5' and len(params) == 13


def test_unknown_keras_weight_names_are_reported(notop_h5, tmp_path):
  path = str(tmp_path / 'odd.h5')
  vgg16_sources.write_keras_legacy_h5(path, notop_h5[1], 'keras2')
  with h5py.File(path, 'r+') as f:
    f['block2_conv1'].attrs['weight_names'] = np.array([b'block2_conv1/gamma:0',
                                                        b'block2_conv1/bias:0'])
  # VGG16 reads kernels and biases only; a batch-norm weight is not one of them.
  with pytest.raises(ValueError, match=r"odd\.h5: layer block2_conv1 has weight "
                     r"'block2_conv1/gamma:0', neither a kernel"):
    vw.port_file(path)
  with pytest.raises(ValueError, match=r"neither a kernel \(kernel/W\) nor a bias \(bias/b\)"):
    readers.read_keras_h5(path, {k: readers.KERAS_WEIGHT_NAMES[k] for k in ('kernel', 'bias')})
  # The generic table knows Keras's batch-norm weights (this file lacks the dataset).
  with pytest.raises(ValueError, match=r"lists weight 'block2_conv1/gamma:0' but has no such"):
    readers.read_keras_h5(path)


def _write_split_full_model(path, layers, naming):
  """A full-model save: weights under model_weights, layer_names split in two attributes."""
  with h5py.File(path, 'w') as f:
    root = f.create_group('model_weights')
    names = np.array([name.encode() for name, _ in layers])
    root.attrs['layer_names0'], root.attrs['layer_names1'] = names[:1], names[1:]
    for name, weights in layers:
      group = root.create_group(name)
      sep = '_' if naming == 'keras1' else '/'
      weight_names = [f'{name}{sep}{w}{"_1" if naming == "keras1" else ""}:0' for w in weights]
      group.attrs['weight_names'] = np.array([n.encode() for n in weight_names], dtype='S')
      for weight_name, value in zip(weight_names, weights.values()):
        group.create_dataset(weight_name, data=value)


@pytest.mark.parametrize('naming', ['keras1', 'keras2'])
def test_keras_h5_reads_batch_norm_and_depthwise_layers_in_both_namings(tmp_path, naming):
  rng = np.random.default_rng(0)
  keras1 = naming == 'keras1'
  layers = [
      ('input_1', {}),
      ('conv_dw_1', {'depthwise_kernel': rng.standard_normal((3, 3, 4, 1))}),
      ('conv_dw_1_bn', {'gamma': rng.standard_normal(4), 'beta': rng.standard_normal(4),
                        'running_mean' if keras1 else 'moving_mean': rng.standard_normal(4),
                        'moving_variance': rng.standard_normal(4)}),
      ('conv1', {'W' if keras1 else 'kernel': rng.standard_normal((1, 1, 4, 2)),
                 'b' if keras1 else 'bias': rng.standard_normal(2)}),
  ]
  path = str(tmp_path / f'{naming}.h5')
  _write_split_full_model(path, layers, naming)
  assert readers.detect_format(path) == 'keras_h5'
  weights = readers.read_keras_h5(path)
  assert list(weights) == ['conv_dw_1', 'conv_dw_1_bn', 'conv1']
  assert set(weights['conv_dw_1_bn']) == {'gamma', 'beta', 'moving_mean', 'moving_variance'}
  assert set(weights['conv1']) == {'kernel', 'bias'}
  np.testing.assert_array_equal(weights['conv_dw_1']['depthwise_kernel'],
                                layers[1][1]['depthwise_kernel'])
  np.testing.assert_array_equal(weights['conv1']['kernel'],
                                layers[3][1]['W' if keras1 else 'kernel'])


def test_torch_missing_gives_the_install_command(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, 'torch', None)  # makes `import torch` raise ImportError
  with pytest.raises(ImportError, match=r'pip install torch==2\.13\.0'):
    readers.read_torch(str(tmp_path / 'vgg16-397923af.pth'))
