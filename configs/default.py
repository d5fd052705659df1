"""Fields shared by every mammo_jax experiment; experiment configs import and extend them.

Command (until the training core lands, this builds the dataset and prints its statistics):
  python -m mammo_jax.main --config=configs/default.py --workdir=runs/default
  python -m mammo_jax.main --config=configs/default.py:smoke --workdir=/tmp/smoke
  python -m mammo_jax.main --config=configs/default.py --workdir=runs/real \
      --config.data.manual_dir=/data/tcia/CBIS-DDSM --config.data.data_dir=gs://bucket/tfds

With `data.manual_dir` empty the run uses the synthetic CBIS-DDSM of `tfds_cbis.synthetic`,
generated and built once into `data.cache_dir`, and says so loudly: such results say nothing
about real mammograms.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = data = ml_collections.ConfigDict()
  data.name = 'cbis_ddsm/roi150'  # TFDS name/config of the patch dataset
  data.manual_dir = ''  # a CBIS-DDSM download (either NBIA layout); '' = synthetic data
  data.data_dir = ''  # where real builds live: a path or gs:// bucket; '' = TFDS default
  data.cache_dir = ''  # synthetic trees and builds; '' = $MAMMO_JAX_CACHE or ~/.cache/mammo_jax
  data.num_workers = 0  # build processes; 0 = all cores

  data.synthetic = synthetic = ml_collections.ConfigDict()
  synthetic.patients = 160
  synthetic.seed = 0
  synthetic.difficulty = 0.5
  synthetic.layout = 'nbia'
  synthetic.height = 1024
  synthetic.width = 640

  if arg == 'smoke':  # tiny and fast, for tests
    synthetic.patients = 12
    synthetic.height, synthetic.width = 256, 160
  elif arg not in (None, ''):
    raise ValueError(f'configs/default.py takes no argument or "smoke", got {arg!r}')
  return config
