"""Runs the command line of tfds_cbis.splits (see cli.py)."""

import sys

from tfds_cbis.splits import cli

if __name__ == '__main__':
  sys.exit(cli.main())
