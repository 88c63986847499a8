# picoalign — two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs torch (CPU) first, then picoalign; runs the main job
#   make test   same set-up, then lint + the test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.picoalign-installed
# pip on some machines prints a warning per index location it skips; keep the log readable
QUIET := { grep -v "is ignored: it is neither" || true; }
export HF_HUB_OFFLINE ?= 1

.PHONY: install system-data demo test lint bench gpu-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 (CPU) first, then picoalign and its offline models ..."
	$(BIN)/python -m pip install -q torch==2.13.0 2>&1 | $(QUIET)
	$(BIN)/python -m pip install -q -e ".[cpu-models,dev]" 2>&1 | $(QUIET)
	@touch $(STAMP)

install: $(STAMP)

# Optional Debian data (Noto emoji font, Tux Paint stamps, cairo for SVG). Installed only where
# we are root and apt works; elsewhere the tests that need them skip with the install command.
system-data:
	@bash scripts/system-data.sh

demo: install system-data
	$(BIN)/picoalign demo

test: install system-data
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

# Every benchmark, quickest first (hours in all on 2 cores: the quality study dominates).
# Left out: gpu_check.py (its own target, needs CUDA) and scenes_sheet.py (draws the docs
# picture, measures nothing).
bench: install system-data
	$(BIN)/python benchmarks/similarity_speed.py
	$(BIN)/python benchmarks/train_speed.py
	$(BIN)/python benchmarks/eval_memory.py
	$(BIN)/python benchmarks/cache_reuse.py --overwrite
	$(BIN)/python benchmarks/retrieval_scale.py
	$(BIN)/python benchmarks/retrieval_real.py
	$(BIN)/python benchmarks/zeroshot.py --overwrite
	$(BIN)/python benchmarks/scenes_baselines.py --overwrite
	$(BIN)/python benchmarks/rounding.py --overwrite
	# the committed study's rows ran native math on one tuning seed: continue them in their own mode
	$(BIN)/python benchmarks/quality.py --resume --math native --tune-seeds 1

# GPU paths, measured (benchmarks/results/gpu_check.json); says so and exits 0 without CUDA
# The device machine's own Python (a CUDA build of torch): `install` would put the CPU wheel in
# .venv. Nothing is installed here; a CPU-only torch on an NVIDIA machine fails the check.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_check.py --overwrite

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
