"""Ports VGG16 ImageNet weights (Keras .h5 / .weights.h5, torchvision .pth) to a Flax file.

  python -m mammo_jax.port_vgg16 vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 \
      vgg16_notop.msgpack

writes OUT (flax msgpack of {layer: {kernel, bias}}, Keras's layer names) and OUT.json (format,
source SHA-256, preprocessing, top_pool, ...); train with --config.model.pretrained=OUT. The
official files are listed in mammo_jax.weights.vgg16.OFFICIAL. Exit status 1 with a one-line
error on bad input; an existing OUT is replaced only with --overwrite, and never left half
written.
"""

import argparse
import sys

from mammo_jax import port_weights
from mammo_jax.weights import store
from mammo_jax.weights import vgg16 as vgg16_weights


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m mammo_jax.port_vgg16',
      description='Port VGG16 ImageNet weights to a Flax params file (OUT + OUT.json).')
  parser.add_argument('src', help='Keras .h5 / .weights.h5 / .keras, or torchvision .pth')
  parser.add_argument('out', help='the Flax params file to write, e.g. vgg16_notop.msgpack')
  parser.add_argument('--format', default='auto', choices=('auto',) + vgg16_weights.FORMATS,
                      help='source format (default: from the file content)')
  parser.add_argument('--notop', action='store_true',
                      help='leave out fc1, fc2 and predictions')
  parser.add_argument('--overwrite', action='store_true', help='replace an existing OUT')
  args = parser.parse_args(argv)
  try:
    urls = ', '.join(s.url for s in vgg16_weights.OFFICIAL.values())
    port_weights.check_paths(args.src, args.out, args.overwrite,
                             f' (the official files: {urls})')
    params, metadata = vgg16_weights.port_file(args.src, args.format,
                                               include_top=False if args.notop else None)
    metadata = store.save_params(params, args.out, metadata, overwrite=args.overwrite)
  except (OSError, ValueError, ImportError) as e:
    port_weights.print_error('port_vgg16', e)
    return 1
  port_weights.print_summary(
      metadata, args.out, f' (top_pool {metadata["top_pool"]})' if metadata['top_pool'] else '')
  return 0


if __name__ == '__main__':
  sys.exit(main())
