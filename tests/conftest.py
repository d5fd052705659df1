"""Shared test helpers: loading config files as main.py does, and one synthetic-data cache."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """configs/NAME.py's get_config(arg), locked like `--config=configs/NAME.py:arg`."""
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  spec = importlib.util.spec_from_file_location(f'test_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg)
  config.lock()
  return config


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One synthetic CBIS-DDSM cache per test process: each parameter set is built once."""
  return str(tmp_path_factory.mktemp('mammo_jax_cache'))
