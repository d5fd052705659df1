"""Runs the command line of tfds_cbis.synthetic (see cli.py)."""

import sys

from tfds_cbis.synthetic import cli

if __name__ == '__main__':  # spawned workers import this module as __mp_main__
  sys.exit(cli.main())
