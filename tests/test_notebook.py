"""notebooks/colab_tpu.ipynb runs headless on CPU with smoke settings, so it cannot rot; its
run cell streams the run's output live and fails with the run's error line."""

import json
import os
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_tpu.ipynb')


def _cell_outputs(cell):
  return ''.join(o.get('text', '') for o in cell.get('outputs', [])
                 if o.output_type == 'stream')


@pytest.mark.slow
def test_colab_notebook_runs_an_ensemble_and_shows_the_report(tmp_path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  workdir = tmp_path / 'run'
  for name, value in {'MAMMO_JAX_NOTEBOOK_SMOKE': '1', 'MAMMO_JAX_REPO': ROOT,
                      'MAMMO_JAX_WORKDIR': str(workdir),
                      'MAMMO_JAX_CACHE': str(tmp_path / 'cache'),
                      'TF_CPP_MIN_LOG_LEVEL': '3', 'NO_GCE_CHECK': 'true'}.items():
    monkeypatch.setenv(name, value)  # the kernel inherits this process's environment
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbclient.NotebookClient(notebook, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}).execute()
  code = [cell for cell in notebook.cells if cell.cell_type == 'code']
  outputs = [o for cell in code for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(_cell_outputs(cell) for cell in code)
  assert 'devices: 1 cpu' in text.lower()
  # The run's own progress, as it happens, in the run cell: a run of hours must not be silent.
  run_cell = next(c for c in code if 'run_output = stream_run(' in c.source)
  run_text = _cell_outputs(run_cell)
  # It arrived in pieces while the run went on (about 200), not as one text at its end.
  assert len([o for o in run_cell.outputs if o.output_type == 'stream']) > 10
  assert 'mammo_jax.main' in run_text
  assert 'JAX devices:' in run_text
  assert any(line.startswith('step ') for line in run_text.splitlines()), run_text[-2000:]
  assert 'Report: ' in run_text
  html = [o for o in outputs if o.output_type == 'display_data' and 'text/html' in o.data]
  assert html and '<table' in html[-1].data['text/html']
  assert (workdir / 'report.md').exists()


def _stream_run():
  """The notebook's own stream_run, defined by running its cell (the notebook stays
  self-contained: Colab's kernel runs it before the project is importable)."""
  with open(NOTEBOOK) as f:
    cells = json.load(f)['cells']
  source, = [''.join(c['source']) for c in cells
             if c['cell_type'] == 'code' and 'def stream_run(' in ''.join(c['source'])]
  namespace = {}
  exec(compile(source, NOTEBOOK, 'exec'), namespace)  # pylint: disable=exec-used
  return namespace['stream_run']


class _Console:
  """sys.stdout for stream_run: records what arrives, and calls `on_text` with all so far."""

  def __init__(self, on_text=lambda text: None):
    self.text = ''
    self.on_text = on_text

  def write(self, text):
    self.text += text
    self.on_text(self.text)

  def flush(self):
    pass


def _child(code):
  return [sys.executable, '-c', textwrap.dedent(code)]


def test_stream_run_shows_output_before_the_run_ends_and_fails_with_its_error_line(
    tmp_path, monkeypatch):
  go = tmp_path / 'go'
  # The child writes a '\r' progress line and waits until the console has shown it: output
  # captured until the end (or read by lines) would never let it go on.
  child = _child(f"""
      import os, sys, time
      print('step 1/2 epoch 1', flush=True)
      sys.stdout.write('progress 50%\\r'); sys.stdout.flush()
      deadline = time.time() + 20
      while not os.path.exists({str(go)!r}) and time.time() < deadline:
        time.sleep(0.05)
      print('shown live' if os.path.exists({str(go)!r}) else 'not shown live', flush=True)
      print('mammo_jax: error: an old one (traceback in /old.log)', file=sys.stderr, flush=True)
      print('mammo_jax: error: learning_rate must be > 0 (traceback in /w/error.log)',
            file=sys.stderr, flush=True)
      sys.exit(1)
      """)
  console = _Console(lambda text: 'progress 50%\r' in text and go.touch())
  monkeypatch.setattr(sys, 'stdout', console)
  with pytest.raises(RuntimeError) as raised:
    _stream_run()(child, cwd=str(tmp_path))
  monkeypatch.undo()
  assert 'step 1/2 epoch 1\n' in console.text and 'shown live' in console.text
  assert 'not shown live' not in console.text
  assert str(raised.value) == ('the run exited with status 1: mammo_jax: error: learning_rate '
                               'must be > 0 (traceback in /w/error.log)')


def test_stream_run_returns_all_output_and_names_the_last_lines_when_no_error_line(
    monkeypatch):
  stream_run = _stream_run()
  monkeypatch.setattr(sys, 'stdout', _Console())
  text = stream_run(_child("""
      import sys
      print('outs')
      print('err', file=sys.stderr)
      print('x' + 'é' * 40000)  # 65536-byte reads split a character
      """))
  assert text.startswith('outs\nerr\n') and text.endswith('x' + 'é' * 40000 + '\n')
  assert sys.stdout.text == text
  with pytest.raises(RuntimeError, match=r'status -9: \(no error line.*\)\nlast words$'):
    stream_run(_child("""
        import os, signal
        print('last words', flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """))


def test_stream_run_interrupted_ends_the_run(monkeypatch):
  def interrupt(text):
    if text.endswith('\n'):
      raise KeyboardInterrupt  # what the cell's stop button does
  monkeypatch.setattr(sys, 'stdout', _Console(interrupt))
  with pytest.raises(KeyboardInterrupt):
    _stream_run()(_child("""
        import os, time
        print(os.getpid(), flush=True)
        time.sleep(60)
        """))
  pid = int(sys.stdout.text)
  monkeypatch.undo()
  time.sleep(0.1)
  with pytest.raises(ProcessLookupError):  # ended and reaped, not left running
    os.kill(pid, 0)
