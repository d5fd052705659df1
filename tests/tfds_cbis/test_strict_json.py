"""tfds_cbis.strict_json, and the JSON files tfds_cbis writes: standard JSON, no NaN/Infinity."""

from __future__ import annotations

import collections
import io
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from tfds_cbis import build_report
from tfds_cbis import strict_json


def _strict_loads(text: str):
  """json.loads that refuses NaN, Infinity and -Infinity, as JSON.parse and jq do."""
  def refuse(name):
    raise ValueError(f'non-standard JSON constant {name}')
  return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize('value', [float('nan'), float('inf'), float('-inf'), np.float32('nan'),
                                   np.float64('inf'), np.float16('-inf')])
def test_non_finite_floats_become_null(value):
  assert strict_json.clean(value) is None
  assert strict_json.dumps({'x': value}) == '{"x": null}'


def test_finite_values_and_numpy_types_become_python():
  cleaned = strict_json.clean({'f32': np.float32(0.5), 'f64': np.float64(1.25),
                               'i': np.int64(7), 'b': np.bool_(True), 's': np.str_('a'),
                               np.int32(3): 'numpy key', 'plain': [1, 2.5, 'x', None, False]})
  assert cleaned == {'f32': 0.5, 'f64': 1.25, 'i': 7, 'b': True, 's': 'a', 3: 'numpy key',
                     'plain': [1, 2.5, 'x', None, False]}
  assert [type(cleaned[k]) for k in ('f32', 'f64', 'i', 'b', 's')] == [float, float, int, bool,
                                                                        str]
  assert list(cleaned) == ['f32', 'f64', 'i', 'b', 's', 3, 'plain']  # key order kept


def test_nested_containers_and_arrays():
  obj = {'a': [1.0, (float('nan'), {'b': np.array([[1.5, np.nan], [np.inf, 2.0]])})],
         'c': np.arange(3, dtype=np.int16), 'd': np.float32(np.nan)}
  assert strict_json.clean(obj) == {'a': [1.0, [None, {'b': [[1.5, None], [None, 2.0]]}]],
                                    'c': [0, 1, 2], 'd': None}
  text = strict_json.dumps(obj, sort_keys=True)
  assert _strict_loads(text) == strict_json.clean(obj)
  assert 'NaN' not in text and 'Infinity' not in text


def test_clean_leaves_its_input_alone():
  obj = {'x': [float('nan')]}
  strict_json.clean(obj)
  assert math.isnan(obj['x'][0])


def test_dump_and_kwargs():
  out = io.StringIO()
  strict_json.dump({'b': float('-inf'), 'a': 1}, out, indent=1, sort_keys=True)
  assert out.getvalue() == '{\n "a": 1,\n "b": null\n}'
  assert strict_json.dumps({'a': (1, 2)}, separators=(',', ':')) == '{"a":[1,2]}'


def test_allow_nan_is_off(monkeypatch):
  """A non-finite float that clean missed is refused rather than written as NaN."""
  monkeypatch.setattr(strict_json, 'clean', lambda obj: obj)
  with pytest.raises(ValueError, match='not JSON compliant'):
    strict_json.dumps({'x': float('nan')})
  with pytest.raises(ValueError, match='not JSON compliant'):
    strict_json.dump([float('inf')], io.StringIO())


def test_no_tensorflow_or_jax_import():
  """mammo_jax imports this module too: loading it alone must stay light."""
  path = os.path.join(os.path.dirname(__file__), '..', '..', 'tfds_cbis', 'strict_json.py')
  code = ('import importlib.util, sys\n'
          f'spec = importlib.util.spec_from_file_location("strict_json", {path!r})\n'
          'spec.loader.exec_module(importlib.util.module_from_spec(spec))\n'
          'print(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow", "tensorflow_datasets", "jax", "flax")))\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  assert done.stdout.strip() == '[]'


def test_build_report_is_strict_json(tmp_path):
  report = {'counts': {'train': collections.Counter({'BENIGN_MASS': np.int64(2)})},
            'skips': [{'split': 'train', 'subject': 'S', 'abnormality_id': None,
                       'reason': 'r', 'detail': 'd'}],
            'excluded_patients': [], 'mean_pixel': float('nan'), 'ratio': np.float32(np.inf)}
  build_report.write_report(report, tmp_path, tmp_path)
  written = _strict_loads((tmp_path / build_report.REPORT_NAME).read_text())
  assert written['mean_pixel'] is None and written['ratio'] is None
  assert written['counts'] == {'train': {'BENIGN_MASS': 2}}
  assert written['examples'] == {'train': 2} and written['skip_counts'] == {'r': 1}
