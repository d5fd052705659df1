# mammo_jax: `make demo` and `make test` are all a fresh machine needs.
# Python 3.11: the pinned jax/TensorFlow set is tested there.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Quiet TensorFlow's C++ start-up logs and keep it off any GPU that JAX should have.
export TF_CPP_MIN_LOG_LEVEL ?= 2
export NO_GCE_CHECK ?= true
PYTEST_WORKERS ?= 2

.PHONY: install test test-slow test-all demo demo-whole benchmark gpu-benchmark dummy-data clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
	  "mammo_jax needs Python 3.11 (found %s at $(PYTHON)); run make PYTHON=/path/to/python3.11" \
	  % sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	$(PY) -m pip check
	touch $(STAMP)

# The fast suite compiles far more than it runs: with XLA's optimisations off it took 225 s
# instead of 287 s on the 2-core machine (measured back to back; issue 10).
test: install
	JAX_DISABLE_MOST_OPTIMIZATIONS=1 $(PY) -m pytest -m "not slow" -n $(PYTEST_WORKERS) -q

test-slow: install
	$(PY) -m pytest -m slow -q

test-all: install
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q

# The study's 4-class ensemble with demo-sized members (configs/ensemble4.py:demo) on the
# synthetic CBIS-DDSM; ends with the report's path. A second run reuses the members.
demo: install
	$(PY) -m mammo_jax.main --config=configs/ensemble4.py --workdir=runs/demo

# Shen's whole-image classifier at demo size (configs/whole.py:demo: an S10 patch classifier,
# then the whole-image model on its backbone, 288x224 images) on the synthetic CBIS-DDSM, its
# report, then `predict` on one synthetic test mammogram (DICOM): prints the report's path and
# the prediction's CSV, JSON and heatmap PNG.
DEMO_WHOLE_TEST_IMAGE = import re, ml_collections, pathlib; \
  from mammo_jax import input_pipeline, workdir; \
  data = ml_collections.ConfigDict(workdir.read_config('runs/demo_whole/all')['data']); \
  tree = pathlib.Path(input_pipeline.synthetic_tree(data)); \
  print(min(p for p in tree.rglob('*') if p.is_dir() and \
            re.fullmatch(r'(Mass|Calc)-Test_P_[0-9]+_(LEFT|RIGHT)_(CC|MLO)', p.name)))
demo-whole: install
	$(PY) -m mammo_jax.main --config=configs/whole.py:demo --workdir=runs/demo_whole
	$(PY) -m mammo_jax.report --workdir=runs/demo_whole
	$(PY) -m mammo_jax.predict --workdir=runs/demo_whole/all --out=runs/demo_whole/predict \
	  "$$($(PY) -c "$(DEMO_WHOLE_TEST_IMAGE)")"
	@ls runs/demo_whole/predict/*.png

benchmark: install
	$(PY) benchmarks/build_throughput.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/train_throughput.py --model vgg16_ft --steps 3 --rounds 1

# bfloat16 train steps against PyTorch on a GPU (benchmarks/gpu_step.py), with the GPU machine's
# own python3 (JAX with CUDA, torch): no .venv. `benchmarks/gpu_run.sh prepare` first fetches
# the wheels that machine lacks; benchmarks/gpu_run.sh installs them and writes JSON to $$OUT.
gpu-benchmark:
	benchmarks/gpu_run.sh

# Regenerates tfds_cbis/cbis_ddsm/dummy_data (tiny synthetic CBIS-DDSM for the builder tests).
dummy-data: install
	$(PY) -m tfds_cbis.cbis_ddsm.make_dummy_data

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
