"""Official weights files: download, check against the publisher's digest, port once, cache.

An architecture lists its published files as `Official` records (e.g.
`mammo_jax.weights.vgg16.OFFICIAL`) and gives `load_official` its port and load functions;
the cached port is reused while its sidecar's source digests match the record.
"""

import dataclasses
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable

from absl import logging

from mammo_jax.weights import readers
from mammo_jax.weights import store


@dataclasses.dataclass(frozen=True)
class Official:
  """A published weights file: where it is and the digest its publisher checks."""
  url: str
  format: str  # the architecture's port format name, e.g. 'keras_h5'
  md5: str | None = None  # keras.utils.get_file's file_hash for Keras's files
  sha256_prefix: str | None = None  # torch.hub checks the name's hash suffix this way
  # Neither: the publisher gives no digest (Keras's MobileNet files); nothing is checked and
  # the port records the download's SHA-256.

  @property
  def filename(self) -> str:
    return self.url.rsplit('/', 1)[-1]

  def matches(self, sha256: str, md5: str) -> bool:
    """Whether a file with these digests is this one, by the publisher's own check."""
    if self.md5:
      return md5 == self.md5
    return sha256.startswith(self.sha256_prefix or '')


def default_cache_dir() -> str:
  """$MAMMO_JAX_CACHE/weights, else ~/.cache/mammo_jax/weights."""
  return os.path.join(os.path.expanduser(os.environ.get('MAMMO_JAX_CACHE')
                                         or '~/.cache/mammo_jax'), 'weights')


def load_spec(spec: str, *, official: dict, family: str, label: str, cache_dir: str | None,
              port: Callable, load: Callable, port_command: str,
              missing_message: Callable[[str], str]) -> tuple[dict, dict]:
  """config.model.pretrained -> (params or variables, metadata), for any family: an official
  name (downloaded, checked, ported and cached as CACHE/{family}_{spec}.msgpack), a ported
  .msgpack with its sidecar (`load`), or a source file converted in memory (`port`)."""
  if spec in official:
    out = os.path.join(cache_dir or default_cache_dir(), f'{family}_{spec}.msgpack')
    return load_official(official[spec], out, port=port, load=load,
                         label=f'{label} weights {spec}', port_command=port_command)
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise FileNotFoundError(missing_message(spec))
  return load(path) if readers.detect_format(path) == 'msgpack' else port(path)


def load_official(source: Official, out: str, *, port: Callable[[str, str], tuple],
                  load: Callable[[str], tuple], label: str, port_command: str
                  ) -> tuple[dict, dict]:
  """(params, metadata) of an official file: the cached port at `out`, else a fresh one.

  Args:
    source: the published file.
    out: where the port is cached (msgpack + sidecar, see store.save_params).
    port: (downloaded path, source.format) -> (params, metadata with source_sha256 and
      source_md5), the architecture's converter.
    load: path -> (params, metadata), reads and checks a cached port.
    label: names the weights in log lines, e.g. 'VGG16 weights keras_notop'.
    port_command: the CLI that ports a file downloaded by hand, for error messages.
  """
  if os.path.exists(out):
    try:
      params, metadata = load(out)
      if source.matches(metadata['source_sha256'], metadata['source_md5']):
        logging.info('%s: cached %s', label, out)
        return params, metadata
      logging.warning('%s was ported from another file than %s; downloading again', out,
                      source.url)
    except (OSError, ValueError, KeyError) as e:
      logging.warning('ignoring the cached %s (%s); downloading again', out, e)
  cache_dir = os.path.dirname(os.path.abspath(out))
  os.makedirs(cache_dir, exist_ok=True)
  downloaded = download(source.url, cache_dir, port_command)
  try:
    sha256, md5 = store.file_digests(downloaded)
    if not source.matches(sha256, md5):
      want = (f'MD5 {source.md5}' if source.md5 else f'SHA-256 {source.sha256_prefix}...')
      raise ValueError(f'{source.url}: the download does not match its published digest '
                       f'({want}; got MD5 {md5}, SHA-256 {sha256}); try again, or download '
                       f'it yourself and port it with {port_command}')
    params, metadata = port(downloaded, source.format)
  finally:
    os.remove(downloaded)
  metadata.update(source=source.filename, source_url=source.url)
  metadata = store.save_params(params, out, metadata, overwrite=True)
  logging.info('%s: ported to %s', label, out)
  return params, metadata


def download(url: str, directory: str, port_command: str = '') -> str:
  """Streams url into a temporary file in directory; returns its path."""
  fd, tmp = tempfile.mkstemp(dir=directory, suffix='.download')
  logging.info('downloading %s', url)
  try:
    with os.fdopen(fd, 'wb') as f, urllib.request.urlopen(url, timeout=60) as response:
      while chunk := response.read(1 << 22):
        f.write(chunk)
  except (urllib.error.URLError, OSError) as e:
    os.remove(tmp)
    reason = getattr(e, 'reason', e)
    port = f' (or port it first: {port_command})' if port_command else ''
    raise ConnectionError(
        f'could not download {url} ({reason}). Without internet access, download the file '
        'on another machine, copy it here and set config.model.pretrained to its path'
        f'{port}') from e
  except BaseException:
    os.remove(tmp)
    raise
  return tmp
