"""Configs are checked before any data is prepared, one line per error; main's one-line errors."""

import errno
import os

from absl import flags
import pytest

from mammo_jax import config_checks
from mammo_jax import input_pipeline
from mammo_jax import main
from mammo_jax import parallel
from mammo_jax import runners
from mammo_jax import train
from tests.conftest import load_config
from tests.mammo_jax.test_main import run_main
from tests.mammo_jax.test_registries import CONFIGS


def _with(name: str, arg: str, **fields):
  config = load_config(name, arg)
  config.unlock()
  for path, value in fields.items():
    *parents, last = path.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[last] = value
  return config


@pytest.mark.parametrize('config_file,arg,runner', CONFIGS)
def test_every_study_config_passes(config_file, arg, runner):
  del runner
  config_checks.check(load_config(config_file, arg))


@pytest.mark.parametrize('field,value,accepted', [
    ('batch_size', 0, 'positive multiples of the 1 local devices'),
    ('batch_size', -4, 'positive multiples of the 1 local devices'),
    ('eval_batch_size', 0, 'positive multiples of the 1 local devices'),
    ('optimizer.learning_rate', -1e-3, 'numbers > 0'),
    ('optimizer.learning_rate', 0.0, 'numbers > 0'),
    ('optimizer.decay', -1.0, 'numbers >= 0'),
    ('num_epochs', 0, 'integers > 0'),
    ('num_train_steps', 0, '-1 .no cap. or integers > 0'),
    ('num_train_steps', -2, '-1 .no cap. or integers > 0'),
    ('patience', -1, 'integers >= 0'),
    ('log_every_steps', 0, 'integers > 0'),
    ('checkpoint_every_steps', -1, 'integers >= 0'),
    ('evaluation.ci_resamples', 1000, 'integers >= 2000'),
])
def test_bad_numbers_name_the_field_and_the_accepted_values(field, value, accepted):
  with pytest.raises(config_checks.ConfigError,
                     match=rf'^config\.{field}={value!r}: accepted values are {accepted}'):
    config_checks.check(_with('scratch2', 'smoke', **{field: value}))


def test_ensembles_check_their_resample_count():
  with pytest.raises(config_checks.ConfigError,
                     match=r'^config\.evaluation\.ci_resamples=100: accepted values are integers'):
    config_checks.check(_with('ensemble2', 'smoke', **{'evaluation.ci_resamples': 100}))


@pytest.mark.parametrize('field', sorted(config_checks.enum_fields()))
def test_unknown_enum_values_list_the_known_ones(field):
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check(_with('scratch2', 'smoke', **{field: 'nonsense'}))
  message = str(e.value)
  assert message.startswith(f"config.{field}='nonsense' is not known; accepted values: ")
  assert all(v in message for v in config_checks.enum_fields()[field]) and '\n' not in message


def test_batch_sizes_must_split_over_the_devices(monkeypatch):
  monkeypatch.setattr(parallel, 'device_count', lambda: 8)
  with pytest.raises(config_checks.ConfigError,
                     match='eval_batch_size=12 does not split evenly over the 8 local devices; '
                           'use a multiple of 8, e.g. --config.eval_batch_size=16'):
    config_checks.check(_with('scratch2', 'smoke', batch_size=16, eval_batch_size=12))


@pytest.mark.parametrize('batch_size', [0, -4])
def test_runners_run_refuses_a_bad_batch_size_before_any_data(tmp_path, monkeypatch,
                                                              batch_size):
  """Once a ZeroDivisionError (0) or "no best checkpoint for step None" (-4) after the build."""
  def no_data(*_):
    raise AssertionError('data was prepared')
  monkeypatch.setattr(input_pipeline, 'prepare_builder', no_data)
  with pytest.raises(config_checks.ConfigError, match=f'config.batch_size={batch_size}:'):
    runners.run(_with('scratch2', 'smoke', batch_size=batch_size), str(tmp_path / 'w'))
  assert sorted(os.listdir(tmp_path / 'w')) == ['.lock']


def test_stages_are_checked_each_before_any_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', lambda *_: pytest.fail('a stage trained'))
  config = _with('vgg16_2', 'pipeline,smoke')
  config.stages.ft1.optimizer = {'learning_rate': -1.0}
  with pytest.raises(config_checks.ConfigError,
                     match=r'^stage ft1: config.optimizer.learning_rate=-1.0: accepted'):
    runners.run(config, str(tmp_path / 'p'))


def test_ensemble_members_are_checked_before_any_trains(tmp_path, monkeypatch):
  monkeypatch.setattr(train, 'train_and_evaluate', lambda *_: pytest.fail('a member trained'))
  config = _with('ensemble4', 'smoke')
  last = list(config.ensemble.members.keys())[-1]
  config.ensemble.members[last].overrides += ' patience=-3'
  member = rf'^ensemble member {last} \(.*\): (stage \w+: )?'  # a pipeline names its stage
  with pytest.raises(config_checks.ConfigError, match=member + 'config.patience=-3: accepted'):
    runners.run(config, str(tmp_path / 'e'))


def test_lr_range_checks_its_own_fields():
  config_checks.check(_with('lr_range', 'smoke', **{'optimizer.learning_rate': -1.0}))
  with pytest.raises(config_checks.ConfigError, match=r'config.lr_range.factor=0.5: accepted '
                                                      r'values are numbers > 1'):
    config_checks.check(_with('lr_range', 'smoke', **{'lr_range.factor': 0.5}))
  with pytest.raises(config_checks.ConfigError, match='lr_range.start_lrs.adam=0.0'):
    config_checks.check(_with('lr_range', 'adam,smoke', **{'lr_range.start_lrs.adam': 0.0}))


def test_cli_bad_field_is_one_line_with_the_traceback_in_the_log(tmp_path):
  workdir = tmp_path / 'w'
  done = run_main(tmp_path, '--config=configs/default.py:smoke',
                  '--config.optimizer.learning_rate=-0.001', f'--workdir={workdir}')
  assert done.returncode == 1, done.stderr[-3000:]
  log = workdir / 'error.log'
  line = (f'mammo_jax: error: config.optimizer.learning_rate=-0.001: accepted values are '
          f'numbers > 0; set --config.optimizer.learning_rate=... (traceback in {log})')
  assert [l for l in done.stderr.splitlines() if l.startswith('mammo_jax:')] == [line]
  assert done.stderr.rstrip().endswith(line) and 'Traceback' not in done.stderr
  assert 'Traceback' in log.read_text() and 'ConfigError' in log.read_text()
  assert sorted(os.listdir(workdir)) == ['.lock', 'error.log']  # nothing prepared or written


@pytest.mark.parametrize('error,line', [
    (KeyError('model'), "KeyError: 'model'"),
    (AssertionError('Manual directory /m does not exist or is empty.\n Create it'),
     'AssertionError: Manual directory /m does not exist or is empty. Create it'),
    (FileExistsError(errno.EEXIST, 'File exists', '/x'), "[Errno 17] File exists: '/x'"),
    (PermissionError(errno.EACCES, 'Permission denied', '/x'),
     "[Errno 13] Permission denied: '/x'"),
    (OSError(errno.ENOSPC, 'No space left on device'),
     '[Errno 28] No space left on device; free some space and run the same command again: it '
     'resumes'),
    (FileNotFoundError('no CSV'), 'no CSV'),
    (ValueError('bad value'), 'bad value'),
    (ZeroDivisionError('integer division'),  # a bug, but still one line
     'unexpected ZeroDivisionError: integer division; please report it with'),
])
def test_main_ends_known_failures_with_one_line(tmp_path, monkeypatch, capsys, error, line):
  workdir = tmp_path / 'w'
  workdir.mkdir()

  def fail(*_):
    raise error
  monkeypatch.setattr(runners, 'run', fail)
  flags.FLAGS(['main', f'--workdir={workdir}', '--config=configs/default.py:smoke'])
  try:
    with pytest.raises(SystemExit) as e:
      main.main(['main'])
  finally:
    flags.FLAGS.unparse_flags()
  assert e.value.code == 1
  err = capsys.readouterr().err
  log = workdir / 'error.log'
  expected = f'{line} {log}' if 'unexpected' in line else f'{line} (traceback in {log})'
  assert err == f'mammo_jax: error: {expected}\n'
  assert 'Traceback' in log.read_text() and type(error).__name__ in log.read_text()
