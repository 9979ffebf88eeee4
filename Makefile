# Every target sets up .venv first, so a fresh clone needs only `make run` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Keep Ray on loopback and quiet, in every process these targets start.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER := 0
export RAY_USAGE_STATS_ENABLED := 0
CONFIG ?= configs/default.yaml

.PHONY: venv run test test-fast bench quality clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch is on disk here; plain `torch` would pull a 5 GB CUDA build.
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev]" -c constraints.txt
	# Standard FID's InceptionV3 only; its torchvision dependency is a CUDA build that breaks the CPU torch.
	$(PY) -m pip install -q --no-deps "torch-fidelity==0.4.0"
	touch $(STAMP)

run: venv
	$(PY) -m pipeline run --config $(CONFIG)

test: venv
	$(PY) -m pytest -q --durations=15

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

bench: venv
	$(PY) bench/run.py

# Recipes x step budgets on the long-tailed digits (about 15 min per recipe on 2 cores).
quality: venv
	$(PY) -m bench.quality

clean:
	rm -rf outputs mlruns mlartifacts mlflow.db ray_results
