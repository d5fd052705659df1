"""Runs a mammo_jax experiment: `python -m mammo_jax.main --config=configs/X.py --workdir=DIR`.

This file is intentionally thin: it parses flags and hands the config to the runner it
names (mammo_jax.runners: train, stages, ensemble, lr_range). Re-running the same command on
the same workdir resumes an interrupted run exactly.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from mammo_jax import runners

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for this run\'s checkpoints and outputs.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                'configs/scratch2.py:exp5', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _orbax_info_filter(record) -> bool:
  """Drops Orbax's INFO lines (about 20 per checkpoint save or restore); keeps warnings."""
  return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_orbax_info_filter)
  logging.info('JAX devices: %s', jax.local_devices())
  try:
    runners.run(FLAGS.config, FLAGS.workdir)
  except (FloatingPointError, ValueError, FileNotFoundError, ConnectionError,
          ImportError) as e:
    # Known failure modes (bad config or data, diverged training) end with one clear line;
    # the traceback stays in the log for bug reports.
    logging.exception('Run failed')
    print(f'mammo_jax: error: {e}', file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
