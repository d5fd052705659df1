"""Shared test helpers: loading config files as main.py does, and one synthetic-data cache.

The suite compiles far more than it runs, so it uses the project's persistent compilation
cache (mammo_jax.compile_cache; MAMMO_JAX_COMPILATION_CACHE=0 turns it off), and the runs it
starts in subprocesses, whose MAMMO_JAX_CACHE is a temporary folder, share it.
"""

import os

import pytest

from mammo_jax import compile_cache
from mammo_jax import input_pipeline
from mammo_jax.config_lib import loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_COMPILED = compile_cache.enable(input_pipeline.cache_dir())
if _COMPILED:
  os.environ[compile_cache.ENV] = _COMPILED


@pytest.fixture(autouse=True)
def release_crowded_programs():
  """After each test, drops the compiled programs if they crowd the process's memory mappings:
  one test process runs hundreds of compilations, and past vm.max_map_count XLA:CPU segfaults
  (mammo_jax.compile_cache.release_if_crowded)."""
  yield
  compile_cache.release_if_crowded()


def load_config(name: str, arg: str | None = None):
  """configs/NAME.py's get_config(arg), locked like `--config=configs/NAME.py:arg`."""
  config = loader.load_config(f'configs/{name}.py' + (f':{arg}' if arg else ''), ROOT)
  config.lock()
  return config


@pytest.fixture(scope='session')
def data_cache(tmp_path_factory):
  """One synthetic CBIS-DDSM cache per test process: each parameter set is built once."""
  return str(tmp_path_factory.mktemp('mammo_jax_cache'))
