"""Trainable and frozen parameters: Keras's `layer.trainable` as parameter-path prefixes.

`config.model.trainable` is 'all' or a comma-separated list of layer paths, each matching the
parameters under it: 'fc,logits' trains the head of a VGG16Classifier (feature extraction);
'fc,logits,vgg16/block5_conv3' also fine-tunes the last convolution. The train step takes
gradients with respect to the trainable parameters only, so nothing is back-propagated into a
frozen base, and the optimizer (optax.multi_transform) keeps state for trainable parameters
only; frozen ones get set_to_zero, which has no state.
"""

from __future__ import annotations

from flax import traverse_util
import optax

TRAINABLE, FROZEN = 'trainable', 'frozen'


def _prefixes(spec: str) -> tuple[str, ...] | None:
  """None for 'all', else the layer paths of a comma-separated spec."""
  spec = spec.strip()
  if spec == 'all':
    return None
  if not spec:
    raise ValueError("model.trainable is empty; use 'all' or a comma-separated list of layers")
  return tuple(p.strip().strip('/') for p in spec.split(',') if p.strip())


def labels(params, spec: str) -> dict:
  """A tree like `params` with TRAINABLE or FROZEN leaves; rejects prefixes that match nothing."""
  flat = traverse_util.flatten_dict(params, sep='/')
  prefixes = _prefixes(spec)
  if prefixes is None:
    return traverse_util.unflatten_dict({k: TRAINABLE for k in flat}, sep='/')
  unmatched = [p for p in prefixes if not any(k == p or k.startswith(p + '/') for k in flat)]
  if unmatched:
    layers = sorted({k.rsplit('/', 1)[0] for k in flat})
    raise ValueError(f'model.trainable names {", ".join(unmatched)}, which match no '
                     f'parameter; the model\'s layers are: {", ".join(layers)}')
  out = {k: TRAINABLE if any(k == p or k.startswith(p + '/') for p in prefixes) else FROZEN
         for k in flat}
  return traverse_util.unflatten_dict(out, sep='/')


def is_trainable(path: str, spec: str) -> bool:
  """Whether the layer at '/'-joined `path` is trainable under spec; a BatchNorm that is not
  runs in inference mode, as Keras's frozen BatchNorm does."""
  prefixes = _prefixes(spec)
  path = path.strip('/')
  return prefixes is None or any(path == p or path.startswith(p + '/') for p in prefixes)


def is_all_trainable(spec: str) -> bool:
  return _prefixes(spec) is None


def masked_optimizer(tx: optax.GradientTransformation, params,
                     spec: str) -> optax.GradientTransformation:
  """`tx` on the trainable parameters; frozen ones get zero updates and no optimizer state."""
  if is_all_trainable(spec):
    return tx
  return optax.multi_transform({TRAINABLE: tx, FROZEN: optax.set_to_zero()},
                               labels(params, spec))


def partition(params, spec: str) -> tuple[dict, dict]:
  """(trainable, frozen) flat dicts keyed by path tuples."""
  flat = traverse_util.flatten_dict(params)
  if is_all_trainable(spec):
    return flat, {}
  label = traverse_util.flatten_dict(labels(params, spec))
  return ({k: v for k, v in flat.items() if label[k] == TRAINABLE},
          {k: v for k, v in flat.items() if label[k] == FROZEN})


def combine(trainable: dict, frozen: dict) -> dict:
  """The nested params tree from partition()'s two flat dicts."""
  return traverse_util.unflatten_dict({**trainable, **frozen})


def count(params, spec: str = 'all') -> tuple[int, int]:
  """(trainable, total) parameter counts."""
  trainable, frozen = partition(params, spec)
  n_train = sum(int(v.size) for v in trainable.values())
  return n_train, n_train + sum(int(v.size) for v in frozen.values())
