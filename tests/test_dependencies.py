"""setup.cfg's requirements match what mammo_jax and tfds_cbis import, and every module of both
packages imports without the extras installed.

The module lists come from walking the packages, so modules that are added or moved are
checked without editing this file.
"""

import ast
import configparser
import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import packaging.requirements

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ('mammo_jax', 'tfds_cbis')

# Required at run time although no module of ours imports them, each pinned for compatibility.
RUNTIME_ONLY = {
    'importlib-resources': 'tensorflow_datasets imports it at run time (dataset_builder.py) '
                           'without requiring it',
    'jaxlib': 'the compiled half of jax, which imports it; pinned to the same version',
    'protobuf': 'imported by TensorFlow, TFDS and Orbax; pinned where apache-beam 2.77 and '
                'TensorFlow 2.21 overlap',
    'tensorboard': "clu's metric writers (workdir.py) import it, and neither clu nor "
                   'tensorflow-cpu 2.21 requires it',
}


def _canonical(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def _requirement_names(text: str) -> set[str]:
  """Distribution names in a setup.cfg requirement list (versions and markers dropped)."""
  lines = (line.split('#')[0].strip() for line in text.splitlines())
  return {_canonical(re.split(r'[\s\[;<>=!~(]', line, maxsplit=1)[0]) for line in lines if line}


def _setup_cfg() -> tuple[set[str], dict[str, set[str]]]:
  """install_requires and {extra: requirements} of setup.cfg."""
  cfg = configparser.ConfigParser()
  cfg.read(ROOT / 'setup.cfg')
  extras = {name: _requirement_names(value)
            for name, value in cfg['options.extras_require'].items()}
  return _requirement_names(cfg['options']['install_requires']), extras


def _runtime_closure(required: set[str]) -> set[str]:
  """The distributions a plain install of install_requires brings, from installed metadata."""
  seen, todo = set(), [(name, frozenset()) for name in required]
  while todo:
    name, extras = todo.pop()
    if (name, extras) in seen:
      continue
    seen.add((name, extras))
    try:
      lines = importlib.metadata.requires(name) or []
    except importlib.metadata.PackageNotFoundError:
      continue
    for line in lines:
      req = packaging.requirements.Requirement(line)
      envs = [{'extra': extra} for extra in extras] or [{'extra': ''}]
      if req.marker is None or any(req.marker.evaluate(env) for env in envs):
        todo.append((_canonical(req.name), frozenset(req.extras)))
  return {name for name, _ in seen}


def _extra_only_modules() -> set[str]:
  """Import names of the extras' distributions that a plain install lacks (keras is not one:
  tensorflow-cpu requires it, and tensorboard's hparams plugin, which clu imports, uses it)."""
  required, extras = _setup_cfg()
  runtime = _runtime_closure(required)
  extra_only = set().union(*extras.values()) - runtime
  modules = set()
  for name, dists in importlib.metadata.packages_distributions().items():
    dists = {_canonical(d) for d in dists}
    if dists & extra_only and not dists & runtime:
      modules.add(name)
  return modules


def _third_party_imports(source: str) -> tuple[set[str], set[str]]:
  """Top-level names of the absolute imports in `source`: (module level, inside functions)."""
  tree = ast.parse(source)
  in_function = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
      in_function.update(id(child) for child in ast.walk(node) if child is not node)
  module_level, lazy = set(), set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names = [node.module]
    else:
      continue
    for name in names:
      top = name.split('.')[0]
      if top not in sys.stdlib_module_names and top not in PACKAGES:
        (lazy if id(node) in in_function else module_level).add(top)
  return module_level, lazy


def _imports_by_distribution() -> tuple[dict[str, set[str]], dict[str, set[str]], list[str]]:
  """{distribution: modules importing it} at module level and lazily, and unmapped imports."""
  owners = {name: {_canonical(d) for d in dists}
            for name, dists in importlib.metadata.packages_distributions().items()}
  module_level, lazy, unknown = {}, {}, []
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      where = str(path.relative_to(ROOT))
      top_names, lazy_names = _third_party_imports(path.read_text())
      for names, table in ((top_names, module_level), (lazy_names, lazy)):
        for name in names:
          if name not in owners:
            unknown.append(f'{where}: {name}')
          for dist in owners.get(name, ()):
            table.setdefault(dist, set()).add(where)
  return module_level, lazy, unknown


def test_install_requires_matches_imports():
  """Module-level imports are all required; every requirement is imported or RUNTIME_ONLY;
  imports inside functions (optional features) are required or in a feature extra."""
  required, extras = _setup_cfg()
  module_level, lazy, unknown = _imports_by_distribution()
  assert not unknown, f'imports of no installed distribution: {unknown}'
  missing = {d: sorted(m) for d, m in module_level.items() if d not in required}
  assert not missing, f'imported at module level but not in install_requires: {missing}'
  features = set().union(*(names for extra, names in extras.items() if extra != 'test'))
  optional = {d: sorted(m) for d, m in lazy.items() if d not in required | features}
  assert not optional, (f'imported lazily but in neither install_requires nor a feature extra '
                        f'(the test extra does not count): {optional}')
  runtime_only = {_canonical(name) for name in RUNTIME_ONLY}
  assert runtime_only <= required, runtime_only - required
  unused = required - set(module_level) - set(lazy) - runtime_only
  assert not unused, (f'in install_requires but imported by no module (move it to an extra, '
                      f'or to RUNTIME_ONLY with the reason): {sorted(unused)}')


_IMPORT_ALL = textwrap.dedent("""
    import importlib, importlib.abc, json, pkgutil, sys, traceback

    BLOCKED = set(sys.argv[1].split(','))

    # Each finder is wrapped so that it finds none of BLOCKED, as if they were not installed:
    # None, not an exception, since libraries probe with importlib.util.find_spec.
    class Absent(importlib.abc.MetaPathFinder):

      def __init__(self, finder):
        self.finder = finder

      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED or not hasattr(self.finder, 'find_spec'):
          return None
        return self.finder.find_spec(name, path, target)

      def __getattr__(self, name):  # find_distributions, invalidate_caches, ...
        return getattr(self.finder, name)

    sys.meta_path[:] = [Absent(finder) for finder in sys.meta_path]
    sys.path.insert(0, sys.argv[2])
    imported, failed = [], {}

    def record(name, error=None):
      if error is None:
        imported.append(name)
      else:
        failed[name] = ''.join(traceback.format_exception_only(error)).strip()

    def walk_error(name):
      record(name, sys.exc_info()[1])

    for package in sys.argv[3:]:
      try:
        record(importlib.import_module(package).__name__)
      except Exception as e:
        record(package, e)
        continue
      module = sys.modules[package]
      for info in pkgutil.walk_packages(module.__path__, package + '.', onerror=walk_error):
        try:
          importlib.import_module(info.name)
          record(info.name)
        except Exception as e:
          record(info.name, e)
    files = {name: getattr(sys.modules.get(name), '__file__', None) for name in sys.argv[3:]}
    print(json.dumps({'imported': imported, 'failed': failed, 'files': files}))
    """)


def test_every_module_imports_without_the_extras():
  """Imports every module of both packages in a fresh interpreter where the extras' packages
  are unimportable, so a module that needs an extra at import time fails here."""
  blocked = _extra_only_modules()
  assert {'torch', 'apache_beam', 'pytest'} <= blocked, blocked
  env = dict(os.environ, JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3')
  result = subprocess.run(
      [sys.executable, '-c', _IMPORT_ALL, ','.join(sorted(blocked)), str(ROOT), *PACKAGES],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert not report['failed'], json.dumps(report['failed'], indent=1)
  for package, path in report['files'].items():  # this checkout's, not another install's
    assert path and pathlib.Path(path).is_relative_to(ROOT), (package, path)
  for package in PACKAGES:  # the walk found more than the package itself
    assert sum(name.startswith(package + '.') for name in report['imported']) >= 3, report
