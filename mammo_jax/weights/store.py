"""Ported params on disk: flax msgpack at OUT plus a JSON sidecar at OUT + '.json'.

The msgpack holds `{layer: {weight: float32 array}}` (any nesting of dicts); the sidecar
holds what the weights alone do not tell (the architecture's port decides: source format and
digests, the preprocessing the weights expect, ...) and `params_sha256`, which ties it to
its msgpack. Both are written atomically, and an existing file is replaced only when asked.
"""

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Mapping

import flax.serialization
import flax.traverse_util
import numpy as np


def file_digests(path: str) -> tuple[str, str]:
  """(SHA-256, MD5) hex digests of a file; MD5 because Keras publishes its files' MD5s."""
  sha256, md5 = hashlib.sha256(), hashlib.md5()
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      sha256.update(chunk)
      md5.update(chunk)
  return sha256.hexdigest(), md5.hexdigest()


def save_params(params: Mapping, out_path: str, metadata: Mapping,
                overwrite: bool = False) -> dict:
  """Writes OUT (flax msgpack) and OUT + '.json' (metadata + params_sha256); returns that.

  Both are written to temporary files and renamed into place, so a failure leaves any
  earlier OUT intact. Raises FileExistsError if OUT or its sidecar exists, unless overwrite.
  """
  sidecar = out_path + '.json'
  if not overwrite and (os.path.exists(out_path) or os.path.exists(sidecar)):
    raise FileExistsError(f'{out_path} or {sidecar} exists; pass overwrite=True to replace it')
  data = flax.serialization.msgpack_serialize(_float32(params))
  metadata = dict(metadata, params_sha256=hashlib.sha256(data).hexdigest())
  atomic_write(out_path, data)
  # allow_nan=False: standard JSON only (the sidecar holds no floats to clean).
  atomic_write(sidecar, (json.dumps(metadata, indent=2, allow_nan=False) + '\n').encode())
  return metadata


def load_params(path: str, require_metadata: bool = True, *, needs: str = 'preprocessing',
                port_command: str = '') -> tuple[dict, dict]:
  """Reads a ported file: (params as float32 numpy, its sidecar's metadata).

  Without the sidecar what the weights need (`needs`, e.g. 'preprocessing and top_pool')
  is unknown, so this raises, naming `port_command`, unless require_metadata=False (then a
  warning, and empty metadata). A sidecar written for other params raises too.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such file')
  with open(path, 'rb') as f:
    data = f.read()
  try:
    restored = flax.serialization.msgpack_restore(data)
  except Exception as e:  # msgpack raises several types for damaged data
    raise ValueError(f'{path}: not a flax msgpack params file ({type(e).__name__}: {e})') from e
  if not isinstance(restored, dict) or not all(isinstance(v, dict) for v in restored.values()):
    raise ValueError(f'{path}: expected a {{layer: {{weight: array}}}} dict')
  sidecar = path + '.json'
  metadata = {}
  if os.path.exists(sidecar):
    with open(sidecar) as f:
      metadata = json.load(f)
    want = metadata.get('params_sha256')
    if want and want != hashlib.sha256(data).hexdigest():
      raise ValueError(f'{path} does not match its sidecar {sidecar} (params_sha256 '
                       'differs); port the source again')
  elif require_metadata:
    raise FileNotFoundError(
        f'{path}: its sidecar {sidecar} is missing; it records the {needs} the weights '
        f'need. Port the source again{" with " + port_command if port_command else ""}')
  else:
    warnings.warn(f'{sidecar} is missing: {needs} unknown')
  return _float32(restored), metadata


def atomic_write(path: str, data: bytes) -> None:
  """Writes data to a temporary file beside path, then renames it onto path."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                             prefix=os.path.basename(path) + '.', suffix='.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def _float32(params: Mapping) -> dict:
  flat = flax.traverse_util.flatten_dict(dict(params))
  return flax.traverse_util.unflatten_dict(
      {k: np.asarray(v, np.float32) for k, v in flat.items()})
