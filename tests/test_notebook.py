"""notebooks/colab_tpu.ipynb runs headless on CPU with smoke settings, so it cannot rot."""

import os

import pytest

from tests.conftest import ROOT

NOTEBOOK = os.path.join(ROOT, 'notebooks', 'colab_tpu.ipynb')


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
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code'
             for o in cell.get('outputs', [])]
  assert not [o for o in outputs if o.output_type == 'error']
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'devices: 1 cpu' in text.lower()
  html = [o for o in outputs if o.output_type == 'display_data' and 'text/html' in o.data]
  assert html and '<table' in html[-1].data['text/html']
  assert (workdir / 'report.md').exists()
