"""Standard JSON only: non-finite floats are written as null, never NaN or Infinity.

Python's json module writes NaN/Infinity by default, which JSON.parse, jq and JSON-schema tools
reject. `clean` turns them (and numpy values) into plain Python; `dumps`/`dump` clean and then
pass allow_nan=False, so a non-finite value that bypasses `clean` fails loudly instead of
slipping into a file. Only numpy and the standard library are imported, so mammo_jax can use
this module as well.
"""

from __future__ import annotations

import json
import math
from typing import Any, IO

import numpy as np


def clean(obj: Any) -> Any:
  """A copy of obj for JSON: NaN and +-inf -> None, numpy scalars and arrays -> Python.

  Dicts keep their key order, tuples become lists (as json writes them anyway).
  """
  if isinstance(obj, float):  # also np.float64, a float subclass
    return float(obj) if math.isfinite(obj) else None
  if isinstance(obj, np.ndarray):
    return clean(obj.tolist())
  if isinstance(obj, np.generic):
    return clean(obj.item())
  if isinstance(obj, dict):
    return {(k.item() if isinstance(k, np.generic) else k): clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean(v) for v in obj]
  return obj


def dumps(obj: Any, **kwargs: Any) -> str:
  """json.dumps of clean(obj) with allow_nan=False; kwargs as for json.dumps."""
  return json.dumps(clean(obj), allow_nan=False, **kwargs)


def dump(obj: Any, fp: IO[str], **kwargs: Any) -> None:
  """json.dump of clean(obj) with allow_nan=False; kwargs as for json.dump."""
  json.dump(clean(obj), fp, allow_nan=False, **kwargs)
