"""python -m tfds_cbis.splits: the committed lists in docs/splits/, and one-line errors."""

import csv
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tfds_cbis import cases
from tfds_cbis import splits
from tfds_cbis.splits import cli


@pytest.mark.parametrize('protocol,column', [('official', 'split'), ('tfds', 'split'),
                                             ('kfold5', 'fold')])
def test_committed_lists_are_what_the_cli_writes(tmp_path, protocol, column):
  out = tmp_path / f'{protocol}.csv'
  assert cli.main(['--protocol', protocol, '--csv_dir', cases.PACKAGED_CSV_DIR,
                   '--out', str(out)]) == 0
  committed = os.path.join(ROOT, 'docs', 'splits', f'{protocol}.csv')
  assert out.read_bytes() == open(committed, 'rb').read()
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['patient_id', column] and len(rows) == 1566
  _, expected = splits.patient_list(protocol, cases.load_cases(cases.find_csvs(None)[0]))
  assert {r['patient_id']: r[column] for r in rows} == {p: str(v) for p, v in expected.items()}


def test_module_runs_from_the_command_line(tmp_path):
  out = tmp_path / 'k3.csv'
  done = subprocess.run([sys.executable, '-m', 'tfds_cbis.splits', '--protocol', 'kfold3',
                         '--csv_dir', cases.PACKAGED_CSV_DIR, '--out', str(out)],
                        capture_output=True, text=True, cwd=ROOT, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.strip() == f'{out}: 1566 patients (kfold3)'
  assert {r['fold'] for r in csv.DictReader(open(out))} == {'0', '1', '2'}


def _bad_inputs(tmp_path):
  partial = tmp_path / 'partial'
  partial.mkdir()
  shutil.copy(os.path.join(cases.PACKAGED_CSV_DIR, 'mass_case_description_test_set.csv'),
              partial)
  broken = tmp_path / 'broken'
  broken.mkdir()
  for name in cases.CSV_FILES.values():
    (broken / name).write_text('a,b\n1,2\n')
  return {'partial': str(partial), 'broken': str(broken), 'empty': str(tmp_path)}


@pytest.mark.parametrize('protocol,csv_dir,out,message', [
    ('kfold', 'packaged', 'x.csv', "error: unknown split protocol 'kfold'; known: official"),
    ('tfds', 'missing', 'x.csv', 'error: --csv_dir {tmp}/missing is not a folder'),
    ('tfds', 'empty', 'x.csv', 'error: --csv_dir {tmp} holds none of the CBIS-DDSM description'),
    ('tfds', 'partial', 'x.csv', "error: {tmp}/partial: found .'mass_case_description_test"),
    ('tfds', 'broken', 'x.csv', 'error: {tmp}/broken/.*: not a CBIS-DDSM description CSV; '),
    ('tfds', 'packaged', 'no/x.csv', r'error: --out {tmp}/no/x.csv: cannot write it \(No such '),
])
def test_bad_input_is_one_error_line(tmp_path, capsys, protocol, csv_dir, out, message):
  dirs = {**_bad_inputs(tmp_path), 'packaged': cases.PACKAGED_CSV_DIR,
          'missing': str(tmp_path / 'missing')}
  code = cli.main(['--protocol', protocol, '--csv_dir', dirs[csv_dir],
                   '--out', str(tmp_path / out)])
  err = capsys.readouterr().err
  assert code == 1 and err.count('\n') == 1
  assert re.match(message.format(tmp=tmp_path), err), err
  assert not (tmp_path / out).exists()
