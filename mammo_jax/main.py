"""Runs one mammo_jax experiment: `python -m mammo_jax.main --config=configs/X.py --workdir=DIR`.

This file is intentionally thin: it parses flags and hands the config to library code.
The training core is not there yet; for now a run prepares the configured dataset (the
synthetic CBIS-DDSM when no manual_dir is given) and prints and saves its statistics.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from mammo_jax import input_pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for this run\'s outputs.')
config_flags.DEFINE_config_file('config', None, 'Experiment config file.', lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = FLAGS.config
  os.makedirs(FLAGS.workdir, exist_ok=True)
  with open(os.path.join(FLAGS.workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=1, sort_keys=True))
  builder = input_pipeline.prepare_builder(config.data)
  summary = input_pipeline.describe(builder)
  print(summary, flush=True)
  report = input_pipeline.build_report(builder)
  if report is not None:
    with open(os.path.join(FLAGS.workdir, 'dataset_report.json'), 'w') as f:
      json.dump(report, f, indent=1, sort_keys=True)
  logging.info('Training is not implemented yet; dataset statistics are in %s', FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
