"""Ports ImageNet weights of any supported backbone to a Flax file, recognising the architecture.

  python -m mammo_jax.port_weights resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      weights/resnet50_keras_notop.msgpack

writes OUT (flax msgpack) and OUT.json (architecture, variant, source SHA-256, preprocessing,
...); train with --config.model.pretrained=OUT, or load the backbone alone with
mammo_jax.models.pretrained(OUT). Each family's weights module says whether it
`recognises(path)` a file and ports it (`port_file`); --model names the family when the file
alone cannot tell. Exit status 1 with a one-line error on bad input; an existing OUT is
replaced only with --overwrite, and never left half written.
"""

import argparse
import importlib
import os
import sys

from mammo_jax.weights import store

# Family -> its weights module, imported when needed (a family's module may be missing from
# a checkout that predates it; that family is then skipped).
FAMILIES = {
    'vgg16': 'mammo_jax.weights.vgg16',
    'resnet50': 'mammo_jax.weights.resnet50',
    'mobilenet': 'mammo_jax.weights.mobilenet',
}


def _module(name: str):
  """The family's weights module, or None when that module does not exist (yet)."""
  try:
    return importlib.import_module(FAMILIES[name])
  except ModuleNotFoundError as e:
    if e.name != FAMILIES[name]:
      raise  # a dependency of an existing module is missing: a real error
    return None


def recognise(path: str) -> str:
  """The family whose weights module recognises the file; ValueError if none or several."""
  found = [name for name in FAMILIES if (m := _module(name)) and m.recognises(path)]
  if len(found) != 1:
    what = 'several families' if found else 'no known architecture'
    raise ValueError(f'{path}: {what} ({", ".join(found) or "-"}) recognise this file; name '
                     f'it with --model ({", ".join(FAMILIES)})')
  return found[0]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mammo_jax.port_weights',
      description='Port ImageNet weights (VGG16, ResNet50, MobileNet) to a Flax file.')
  parser.add_argument('src', help='Keras .h5 / .weights.h5 / .keras, or torchvision .pth')
  parser.add_argument('out', help='the Flax file to write, e.g. resnet50_notop.msgpack')
  parser.add_argument('--model', choices=tuple(FAMILIES),
                      help='the architecture (default: recognised from the file)')
  parser.add_argument('--notop', action='store_true', help='leave out the ImageNet top')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing OUT')
  args = parser.parse_args(argv)
  sidecar = args.out + '.json'
  try:
    if not os.path.isfile(args.src):
      raise FileNotFoundError(f'{args.src}: no such file')
    if not args.overwrite and (os.path.exists(args.out) or os.path.exists(sidecar)):
      raise FileExistsError(f'{args.out} or {sidecar} exists; pass --overwrite to replace it')
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
      raise FileNotFoundError(f'{out_dir}: no such directory')
    family = args.model or recognise(args.src)
    module = _module(family)
    if module is None:
      raise ImportError(f'{FAMILIES[family]} is not in this version of mammo_jax')
    variables, metadata = module.port_file(args.src, include_top=False if args.notop else None)
    metadata = store.save_params(variables, args.out, metadata, overwrite=args.overwrite)
  except (OSError, ValueError, ImportError) as e:
    lines = str(e).splitlines() or [type(e).__name__]
    detail = '; '.join(line.strip() for line in lines[1:4])
    print(f'port_weights: error: {lines[0]}{" " + detail if detail else ""}', file=sys.stderr)
    return 1
  print(f'architecture {metadata.get("architecture", family)}'
        + (f' ({metadata["variant"]})' if metadata.get('variant') else ''))
  print(f'format       {metadata["format"]} ({metadata["source"]})')
  print(f'include_top  {metadata["include_top"]}')
  print(f'preprocess   {metadata["preprocess"]}')
  print(f'parameters   {metadata["num_params"]:,}')
  print(f'sha256       {metadata["source_sha256"]}')
  print(f'wrote        {args.out} and {sidecar}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
