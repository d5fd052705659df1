"""Standard JSON only: non-finite numbers become null (placeholder; see the tfds branch)."""

import json
import math

import numpy as np


def clean(obj):
  if isinstance(obj, dict):
    return {k: clean(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [clean(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return clean(obj.tolist())
  if isinstance(obj, np.generic):
    obj = obj.item()
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def dumps(obj, **kwargs) -> str:
  return json.dumps(clean(obj), allow_nan=False, **kwargs)


def dump(obj, fp, **kwargs) -> None:
  fp.write(dumps(obj, **kwargs))
