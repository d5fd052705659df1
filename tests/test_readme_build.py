"""The README's 'Try it on the synthetic CBIS-DDSM' commands, run literally (slow: 4 builds)."""

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
      version_dir = tmp_path / f'tfds_{layout}' / 'cbis_ddsm' / config / '1.0.0'
      assert (version_dir / 'build_report.json').exists(), version_dir
      assert list(version_dir.glob('cbis_ddsm-train.tfrecord-*'))
