"""Slow end-to-end builds through the `tfds build` CLI: the README's commands, run literally,
and a Beam (DirectRunner, multi-processing) build against the local one."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib


def _readme_loop() -> str:
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  section = text[text.index('### Try it on the synthetic CBIS-DDSM'):]
  return re.search(r'```bash\n(.*?)```', section, re.S).group(1)


@pytest.mark.slow
def test_readme_builds_both_configs_from_both_layouts(tmp_path):
  script = _readme_loop().replace('/tmp/', f'{tmp_path}/').replace('--patients 40',
                                                                     '--patients 8')
  assert script.count('tfds build') == 1 and 'for layout in nbia classic' in script
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  done = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=1800, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  for layout in ('nbia', 'classic'):
    for config in ('roi150', 's10_224'):
      version_dir = (tmp_path / f'tfds_{layout}' / 'cbis_ddsm' / config
                     / str(builder_lib.Builder.VERSION))
      assert (version_dir / 'build_report.json').exists(), version_dir
      assert list(version_dir.glob('cbis_ddsm-train.tfrecord-*'))


@pytest.mark.slow
def test_beam_multiprocessing_cli_build_equals_the_local_build(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tfds_cbis import synthetic  # pylint: disable=g-import-not-at-top

  tree = tmp_path / 'tree'
  synthetic.generate(tree, patients=10, seed=5, image_shape=(384, 256), workers=1)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', NO_GCE_CHECK='true')
  tfds_cli = os.path.join(os.path.dirname(sys.executable), 'tfds')
  datasets = {}
  for name, extra in (('beam', ['--beam_pipeline_options=runner=DirectRunner,'
                                'direct_num_workers=2,direct_running_mode=multi_processing']),
                      ('local', [])):
    done = subprocess.run(
        [tfds_cli, 'build', 'cbis_ddsm', '--imports', 'tfds_cbis', '--config', 's10_224',
         '--manual_dir', str(tree), '--data_dir', str(tmp_path / name), *extra],
        env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    builder = tfds.builder('cbis_ddsm/s10_224', data_dir=str(tmp_path / name))
    datasets[name] = {
        ex['id']: ex['image'].tobytes()
        for split in builder.info.splits
        for ex in tfds.as_numpy(builder.as_dataset(split=split))}
  assert datasets['beam'] == datasets['local'] and len(datasets['local']) > 100
