"""Shared test helpers: loading config files as main.py does, and one synthetic-data cache.

With MAMMO_JAX_COMPILATION_CACHE=DIR the suite uses the persistent compilation cache there
(mammo_jax.compile_cache; off by default), and so do the runs it starts in subprocesses.
"""

import os

import pytest

from mammo_jax import compile_cache
from mammo_jax import input_pipeline
from mammo_jax.config_lib import loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

if compile_cache.wanted(False):
  os.environ[compile_cache.ENV] = compile_cache.enable(input_pipeline.cache_dir()) or '0'


def load_config(name: str, arg: str | None = None):
  """configs/NAME.py's get_config(arg), locked like `--config=configs/NAME.py:arg`."""
  config = loader.load_config(f'configs/{name}.py' + (f':{arg}' if arg else ''), ROOT)
  config.lock()
  return config


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One synthetic CBIS-DDSM cache per test process: each parameter set is built once."""
  return str(tmp_path_factory.mktemp('mammo_jax_cache'))
