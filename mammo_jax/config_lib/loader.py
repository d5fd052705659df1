"""Loading config files: 'path/to/x.py:arg' -> that file's get_config(arg).

The one loader for config files named inside the project (ensemble members, the tests): as
`--config=path/to/x.py:arg` does, without ml_collections' flags. A relative path resolves
against a project root given by the caller, never against the current directory.
"""

import hashlib
import importlib.util
import os

import ml_collections


def project_root(config_file: str) -> str:
  """The project root of a file in its configs/ folder: the folder above configs/."""
  return os.path.dirname(os.path.dirname(os.path.abspath(config_file)))


def resolve(path: str, root: str) -> str:
  return path if os.path.isabs(path) else os.path.join(root, path)


def load_config(spec: str, root: str) -> ml_collections.ConfigDict:
  """'configs/x.py:arg' (relative to root, or absolute) -> get_config(arg), unlocked."""
  path, _, arg = spec.partition(':')
  path = resolve(path, root)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config {spec!r}: no file {path}')
  name = 'mammo_jax_config_' + hashlib.sha256(path.encode()).hexdigest()[:8]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
