"""Strict merge of loaded weights into an initialised params tree.

Names and shapes must match exactly; one error lists every missing, unexpected and
mis-shaped path, so a wrong file or a wrong model is found in one run, not one name a run.
"""

import re

import flax.traverse_util
import numpy as np
from flax.core import frozen_dict


class MergeError(ValueError):
  """Loaded weights do not fit the target; the lists of '/'-joined paths that differ."""

  def __init__(self, missing: list[str], unexpected: list[str],
               mismatched: list[tuple[str, tuple, tuple]]):
    self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
    lines = ['pretrained params do not fit the model:']
    if missing:
      lines.append(f'  missing (in the model, not in the weights): {", ".join(missing)}')
    if unexpected:
      lines.append(f'  unexpected (in the weights, not in the model): {", ".join(unexpected)}')
    for k, want, got in mismatched:
      lines.append(f'  shape mismatch: {k}: model {want}, weights {got}')
    super().__init__('\n'.join(lines))

  @property
  def skip_hint(self) -> str | None:
    """A skip regex that fixes the merge when the weights only have extra whole layers (a
    family's loader offers it as its config field, e.g. VGG16's model.dont_load)."""
    if self.missing or self.mismatched or not self.unexpected:
      return None
    layers = sorted({k.split('/', 1)[0] for k in self.unexpected})
    return f'^({"|".join(re.escape(n) for n in layers)})(/|$)'


def merge_params(target, loaded, skip: str | None = None, keep: str | None = None):
  """Loaded values in target's structure; raises MergeError unless the names match exactly.

  Args:
    target: the initialised params (arrays, or jax.ShapeDtypeStructs from jax.eval_shape),
      e.g. VGG16's params or a VGG16Classifier's `params['vgg16']`.
    loaded: the pretrained params, e.g. from a ported file.
    skip: regex (re.search) over '/'-joined paths of `loaded`; matching entries are dropped,
      e.g. r'^(fc1|fc2|predictions)(/|$)' to leave out VGG16's ImageNet top.
    keep: regex over target's paths whose initial values are kept and not looked for in
      `loaded` (e.g. '^(fc|logits)/' to merge {'vgg16': loaded} into a whole classifier).

  Returns:
    A dict (FrozenDict if target is one) shaped like target: numpy arrays in target's dtypes
    (float32 for ShapeDtypeStructs), and target's own values where `keep` matched.
  """
  flat_target = flax.traverse_util.flatten_dict(frozen_dict.unfreeze(target), sep='/')
  flat_loaded = flax.traverse_util.flatten_dict(frozen_dict.unfreeze(loaded), sep='/')
  skipped = [k for k in flat_loaded if skip and re.search(skip, k)]
  for k in skipped:
    del flat_loaded[k]
  kept = {k for k in flat_target if keep and re.search(keep, k)}
  missing = sorted(k for k in flat_target if k not in flat_loaded and k not in kept)
  unexpected = sorted(k for k in flat_loaded if k not in flat_target)
  mismatched = [(k, tuple(np.shape(flat_target[k])), tuple(np.shape(v)))
                for k, v in flat_loaded.items()
                if k in flat_target and k not in kept
                and tuple(np.shape(flat_target[k])) != tuple(np.shape(v))]
  if missing or unexpected or mismatched:
    raise MergeError(missing, unexpected, mismatched)
  merged = {}
  for k, t in flat_target.items():
    if k in kept:
      merged[k] = t
    else:
      dtype = getattr(t, 'dtype', np.float32)
      merged[k] = np.asarray(flat_loaded[k]).astype(dtype, copy=False)
  out = flax.traverse_util.unflatten_dict(merged, sep='/')
  return frozen_dict.freeze(out) if isinstance(target, frozen_dict.FrozenDict) else out
