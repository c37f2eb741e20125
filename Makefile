# Two commands on a fresh machine: `make demo` and `make test`. Each sets up what it needs.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export HF_HUB_DISABLE_TELEMETRY := 1
# from_pretrained progress bars would bury the pipeline's own progress lines
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-fast gpu-check ui plan clean

# torch is pinned and installed first, so no dependency's open range can pull a newer build. Here
# (and in CI) torch==2.13.0 resolves to a CPU wheel; on a GPU box PyPI's CUDA build is what you want;
# on a CPU-only box elsewhere, install torch==2.13.0 from PyTorch's CPU index before `make`.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

# The instance template lives in deploy/local/ (a dagster.yaml in the folder `dagster` runs from
# would be reported as ignored, since DAGSTER_HOME points here).
$(DAGSTER_HOME)/dagster.yaml: deploy/local/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp deploy/local/dagster.yaml $@

# Materialize every asset of the embedded demo config (or whatever is unsynced since last time).
demo: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pixart-pipeline validate
	$(VENV)/bin/pixart-pipeline sync

# The whole suite, slow end-to-end tests included (CI runs this), after a lint for real errors
# (undefined names, unused imports, syntax).
test: install
	$(VENV)/bin/ruff check --no-cache --select F,E9 pixart_pipeline tests benchmarks
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "slow or not slow" -p no:cacheprovider

# The fast subset (`pytest` alone runs the same).
test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# On a GPU machine: the CUDA-path tests (marked gpu; skipped elsewhere), then the real-scale
# benchmark (appends to BENCHMARKS.md).
gpu-check: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m gpu -p no:cacheprovider
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu.py

plan: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/pixart-pipeline plan

# The Dagster UI over the same instance as `make demo`, on http://127.0.0.1:3000
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(VENV)/bin/dagster dev -m pixart_pipeline.definitions -h 127.0.0.1 -p 3000

clean:
	rm -rf output .dagster_home
