# MediDD: two commands on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SHARED ?= ../shared
SAMPLES ?= data/samples
export FLWR_TELEMETRY_ENABLED := 0
export MEDIDD_SAMPLES := $(abspath $(SAMPLES))

.PHONY: venv samples demo test test-all lint bench clean

$(BIN)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "installing MediDD and its pinned dependencies into $(VENV) (about a minute the first time)"
	@$(BIN)/pip install -q --disable-pip-version-check -e '.[fl,dp,dev]' 2>&1 | grep -v "is ignored: it is neither" || true
	@$(BIN)/python -c "import torch, monai, pydicom, flwr, opacus, medidd" \
	  || { echo "installation failed: see the pip output above"; exit 1; }
	@touch $@

venv: $(BIN)/.installed

# the fetch script runs every time: it returns at once when the cohort is complete, and fetches
# an older cohort (marker .complete, without .complete-v2) again
samples:
	@bash $(SHARED)/data/fetch_real_samples.sh $(SAMPLES) 2>&1 | grep -v "is ignored: it is neither" || true
	@test -f $(SAMPLES)/.complete-v2 || { echo "could not fetch the real samples: is $(SHARED) beside this clone?"; exit 1; }

lint: venv
	$(BIN)/ruff check medidd hospital_node aggregator tests benchmarks
	$(BIN)/mypy

test: venv samples lint
	$(BIN)/python -m pytest -m "not slow" -q

test-all: venv samples lint
	$(BIN)/python -m pytest -q

demo: venv samples
	$(BIN)/python -m benchmarks.demo --samples $(SAMPLES) --out out/demo

bench: venv samples
	$(BIN)/python -m benchmarks.run_all --samples $(SAMPLES)

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
