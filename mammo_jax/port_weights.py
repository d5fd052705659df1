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
  try:
    check_paths(args.src, args.out, args.overwrite)
    family = args.model or recognise(args.src)
    module = _module(family)
    if module is None:
      raise ImportError(f'{FAMILIES[family]} is not in this version of mammo_jax')
    variables, metadata = module.port_file(args.src, include_top=False if args.notop else None)
    metadata = store.save_params(variables, args.out, metadata, overwrite=args.overwrite)
  except (OSError, ValueError, ImportError) as e:
    print_error('port_weights', e)
    return 1
  print(f'architecture {metadata.get("architecture", family)}'
        + (f' ({metadata["variant"]})' if metadata.get('variant') else ''))
  print_summary(metadata, args.out)
  return 0


def check_paths(src: str, out: str, overwrite: bool, missing_hint: str = '') -> None:
  """Fails before any reading when SRC is missing, OUT exists (without overwrite) or OUT's
  folder does not."""
  if not os.path.isfile(src):
    raise FileNotFoundError(f'{src}: no such file{missing_hint}')
  sidecar = out + '.json'
  if not overwrite and (os.path.exists(out) or os.path.exists(sidecar)):
    raise FileExistsError(f'{out} or {sidecar} exists; pass --overwrite to replace it')
  out_dir = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(out_dir):
    raise FileNotFoundError(f'{out_dir}: no such directory')


def print_error(prog: str, error: Exception) -> None:
  """One line on stderr: the message's first line (ValueErrors list details on later lines,
  up to three of which follow it)."""
  lines = str(error).splitlines() or [type(error).__name__]
  detail = '; '.join(line.strip() for line in lines[1:4])
  print(f'{prog}: error: {lines[0]}{" " + detail if detail else ""}', file=sys.stderr)


def print_summary(metadata: dict, out: str, top_note: str = '') -> None:
  print(f'format       {metadata["format"]} ({metadata["source"]})')
  print(f'include_top  {metadata["include_top"]}{top_note}')
  print(f'preprocess   {metadata["preprocess"]}')
  print(f'parameters   {metadata["num_params"]:,}')
  print(f'sha256       {metadata["source_sha256"]}')
  print(f'wrote        {out} and {out}.json')


if __name__ == '__main__':
  sys.exit(main())
