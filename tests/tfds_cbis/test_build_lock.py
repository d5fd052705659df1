"""tfds_cbis.build_lock: one build per dataset folder; killed builds' incomplete folders go."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import file_utils

from tfds_cbis import build_lock
from tfds_cbis import synthetic
from tfds_cbis.cbis_ddsm import cbis_ddsm_dataset_builder as builder_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _incomplete(data_dir) -> str:
  """A folder named as TFDS names a build's (so a change of TFDS's naming fails here)."""
  path = file_utils._get_incomplete_dir(os.fspath(data_dir))  # pylint: disable=protected-access
  os.makedirs(path)
  with open(os.path.join(path, 'shard.tfrecord'), 'w') as f:
    f.write('partial')
  return path.rstrip('/')


def test_hold_removes_only_this_versions_incomplete_folders(tmp_path):
  data_dir = tmp_path / 'cbis_ddsm' / 'roi150' / '1.0.0'
  left = [_incomplete(data_dir), _incomplete(data_dir)]
  kept = [_incomplete(tmp_path / 'cbis_ddsm' / 'roi150' / '0.9.0'),
          _incomplete(tmp_path / 'cbis_ddsm' / 's10_224' / '1.0.0')]
  with build_lock.hold(str(data_dir)):
    assert not any(os.path.exists(p) for p in left)
    assert all(os.path.exists(p) for p in kept)
  assert all(os.path.exists(p) for p in kept)


def test_a_second_build_is_refused_with_one_line_naming_the_holder(tmp_path):
  data_dir = str(tmp_path / 'cbis_ddsm' / 'roi150' / '1.0.0')
  with build_lock.hold(data_dir):
    record = open(build_lock.lock_path(data_dir)).read()
    assert json.loads(record)['pid'] == os.getpid()
    with pytest.raises(build_lock.BuildInUseError) as e:
      with build_lock.hold(data_dir):
        pass
    message = str(e.value)
    assert '\n' not in message and data_dir in message and f'process {os.getpid()}' in message
    assert open(build_lock.lock_path(data_dir)).read() == record  # the refused one wrote nothing
  with build_lock.hold(data_dir):  # released at the end of the block
    pass


def test_a_killed_holders_lock_is_not_stale(tmp_path):
  data_dir = str(tmp_path / 'cbis_ddsm' / 'roi150' / '1.0.0')
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time\n'
       'from tfds_cbis import build_lock\n'
       f'with build_lock.hold({data_dir!r}):\n'
       '  print("held", flush=True); time.sleep(600)\n'],
      cwd=ROOT, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(build_lock.BuildInUseError, match=f'process {holder.pid}'):
      with build_lock.hold(data_dir):
        pass
  finally:
    holder.kill()
    holder.wait()
  with build_lock.hold(data_dir):
    pass


def test_remote_data_dirs_are_neither_locked_nor_cleaned(tmp_path, monkeypatch):
  monkeypatch.setattr(build_lock, 'remove_incomplete', lambda _: pytest.fail('cleaned'))
  with build_lock.hold('gs://bucket/cbis_ddsm/roi150/1.0.0'):
    pass


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  path = tmp_path_factory.mktemp('cbis') / 'tree'
  synthetic.generate(path, patients=6, seed=1, image_shape=(256, 160), workers=1)
  return str(path)


def test_the_next_build_removes_a_killed_builds_incomplete_folder(tree, tmp_path):
  builder = builder_lib.Builder(config='roi150', data_dir=str(tmp_path), num_workers=1)
  left = _incomplete(builder.data_dir)
  other_config = _incomplete(tmp_path / 'cbis_ddsm' / 's10_224' / '1.0.0')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=tree, try_download_gcs=False))
  assert not os.path.exists(left) and os.path.exists(other_config)
  assert builder.info.splits['train'].num_examples > 0
  version = str(builder_lib.Builder.VERSION)
  assert sorted(os.listdir(tmp_path / 'cbis_ddsm' / 'roi150')) == [version, f'{version}.lock']


def test_a_build_while_another_builds_is_refused_and_writes_nothing(tree, tmp_path):
  builder = builder_lib.Builder(config='roi150', data_dir=str(tmp_path), num_workers=1)
  config = tfds.download.DownloadConfig(manual_dir=tree, try_download_gcs=False)
  with build_lock.hold(builder.data_dir):  # as another build would
    before = sorted(os.listdir(tmp_path / 'cbis_ddsm' / 'roi150'))
    with pytest.raises(build_lock.BuildInUseError, match='being built by process'):
      builder.download_and_prepare(download_config=config)
    assert sorted(os.listdir(tmp_path / 'cbis_ddsm' / 'roi150')) == before
  builder.download_and_prepare(download_config=config)
  with build_lock.hold(builder.data_dir):  # a finished dataset is reused without the lock
    builder_lib.Builder(config='roi150', data_dir=str(tmp_path)).download_and_prepare(
        download_config=config)
