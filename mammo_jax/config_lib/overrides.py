"""Setting config fields by dotted path: one rule and one error style for every override.

Two input syntaxes reach `set_field`: nested dicts (a pipeline stage's overrides,
{'model': {'fc': 128}}) through `apply_nested`, and shell words (an ensemble member's
'num_epochs=5 model.trainable=all') through `parse_words`. Every path must name an existing
field: a typo is an error, never a new field.
"""

import ast
import shlex
from collections.abc import Iterable, Mapping

import ml_collections


def flatten(tree: Mapping, prefix: str = '') -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1} (with `prefix.` before every path when given)."""
  out = {}
  for key, value in tree.items():
    path = f'{prefix}.{key}' if prefix else key
    out.update(flatten(value, path) if isinstance(value, Mapping) else {path: value})
  return out


def get_field(config: ml_collections.ConfigDict, path: str):
  for key in path.split('.'):
    config = config[key]
  return config


def set_field(config: ml_collections.ConfigDict, path: str, value, where: str) -> None:
  """config[path] = value for an existing field; `where` starts the error messages."""
  *parents, key = path.split('.')
  node = config
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ValueError(f'{where} {path} names no field of the config')
    node = node[part]
  if key not in node:
    raise ValueError(f'{where} {path} names no field of the config')
  try:
    node[key] = value
  except TypeError as e:
    raise ValueError(f'{where} {path}={value!r}: {e}') from None


def set_fields(config: ml_collections.ConfigDict, items: Iterable[tuple[str, object]],
               where: str) -> None:
  for path, value in items:
    set_field(config, path, value, where)


def apply_nested(config: ml_collections.ConfigDict, overrides: Mapping, where: str) -> None:
  """Sets nested `overrides` ({'model': {'fc': 128}}) on `config` in place."""
  set_fields(config, flatten(overrides).items(), where)


def parse_words(text: str) -> list[tuple[str, object]]:
  """'a.b=1 c=x d="two words"' -> [('a.b', 1), ('c', 'x'), ('d', 'two words')]."""
  out = []
  for word in shlex.split(text):
    path, sep, raw = word.partition('=')
    if not sep or not path:
      raise ValueError(f'override {word!r} is not FIELD=VALUE')
    if raw.lower() in ('true', 'false'):  # as ml_collections' flags accept them
      value = raw.lower() == 'true'
    else:
      try:
        value = ast.literal_eval(raw)
      except (ValueError, SyntaxError):
        value = raw  # a bare string: '@fe_fc128', 'fe_fc128,ft3', ''
    out.append((path, value))
  return out
