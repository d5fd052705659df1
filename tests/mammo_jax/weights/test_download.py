"""Official files (mammo_jax.weights.download): download, digest check, port once, cache."""

import hashlib
import os

import numpy as np
import pytest

from mammo_jax.weights import download
from mammo_jax.weights import vgg16 as vw

NOTOP_PARAMS = 14_714_688  # docs/REFERENCE_STUDY.md §2.4


@pytest.fixture
def fake_official(notop_h5, tmp_path, monkeypatch):
  """keras_notop served from a local file:// URL with that file's MD5."""
  src, _ = notop_h5
  md5 = hashlib.md5(open(src, 'rb').read()).hexdigest()
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      download.Official(f'file://{src}', 'keras_h5', md5=md5))
  return src, md5


def test_pretrained_keras_downloads_verifies_and_caches(fake_official, tmp_path, monkeypatch):
  src, md5 = fake_official
  monkeypatch.setenv('MAMMO_JAX_CACHE', str(tmp_path / 'cache'))
  params, metadata = vw.load_pretrained('keras_notop')
  cached = tmp_path / 'cache' / 'weights' / 'vgg16_keras_notop.msgpack'
  assert sorted(os.listdir(cached.parent)) == [cached.name, cached.name + '.json']
  assert metadata['source_url'] == f'file://{src}' and metadata['source_md5'] == md5
  assert metadata['num_params'] == NOTOP_PARAMS
  # Next time the cache is used: the URL is gone.
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      download.Official(f'file://{tmp_path}/gone.h5', 'keras_h5', md5=md5))
  again, _ = vw.load_pretrained('keras_notop')
  assert np.array_equal(again['block3_conv1']['kernel'], params['block3_conv1']['kernel'])


def test_pretrained_keras_rejects_a_wrong_digest_and_a_failed_download(fake_official,
                                                                      tmp_path, monkeypatch):
  src, _ = fake_official
  cache = tmp_path / 'cache'
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      download.Official(f'file://{src}', 'keras_h5', md5='0' * 32))
  with pytest.raises(ValueError, match='does not match its published digest'):
    vw.load_pretrained('keras_notop', cache_dir=str(cache))
  assert os.listdir(cache) == []  # neither the download nor a port is left behind
  monkeypatch.setitem(vw.OFFICIAL, 'keras_notop',
                      download.Official(f'file://{tmp_path}/gone.h5', 'keras_h5', md5='0' * 32))
  with pytest.raises(ConnectionError, match=r'could not download file://.*gone\.h5'):
    vw.load_pretrained('keras_notop', cache_dir=str(cache))
  assert os.listdir(cache) == []


def test_a_stale_cache_is_ported_again(fake_official, tmp_path, monkeypatch):
  """A cached port from another file (or damaged) is replaced, not trusted."""
  src, md5 = fake_official
  out = str(tmp_path / 'c' / 'x.msgpack')
  ports = []

  def port(path, fmt):
    ports.append(fmt)
    return vw.port_file(path, fmt)

  source = download.Official(f'file://{src}', 'keras_h5', md5=md5)
  kwargs = dict(port=port, load=vw.load_params, label='x', port_command='port_x')
  download.load_official(source, out, **kwargs)
  download.load_official(source, out, **kwargs)
  assert ports == ['keras_h5']  # the second call used the cache
  other = download.Official(f'file://{src}', 'keras_h5', md5='f' * 32)
  with pytest.raises(ValueError, match='port it with port_x'):
    download.load_official(other, out, **kwargs)  # the cache is not that file's port
  with open(out, 'wb') as f:
    f.write(b'damaged')
  download.load_official(source, out, **kwargs)
  assert ports == ['keras_h5', 'keras_h5']


def test_official_digest_checks():
  by_md5 = download.Official('https://x/a.h5', 'keras_h5', md5='ab' * 16)
  assert by_md5.matches('0' * 64, 'ab' * 16) and not by_md5.matches('0' * 64, 'cd' * 16)
  by_prefix = download.Official('https://x/vgg16-397923af.pth', 'torchvision',
                                sha256_prefix='397923af')
  assert by_prefix.matches('397923af' + '0' * 56, '') and not by_prefix.matches('0' * 64, '')
  assert by_prefix.filename == 'vgg16-397923af.pth'
