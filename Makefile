# The one command surface: README, CI and developers all call these targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Rebuilt when pyproject.toml changes; otherwise `install` is a no-op.
INSTALLED := $(VENV)/.installed
SOURCES := events store workers gateway baton examples tests bench
PYTEST_ARGS ?=

.PHONY: help install lint format typecheck test test-postgres bench demo

help:
	@echo "make demo           run the main job end to end on the embedded defaults"
	@echo "make test           run the tests (PYTEST_ARGS='-k name -x' to narrow)"
	@echo "make test-postgres  run the store's tests on BATON_TEST_POSTGRES_URL"
	@echo "make lint | format | typecheck | bench | install"

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@if [ ! -x $(BIN)/python ]; then \
		if [ -z "$(PYTHON)" ]; then echo "make install: no python3.11 or python3 on PATH; install Python 3.11+" >&2; exit 1; fi; \
		$(PYTHON) -m venv $(VENV) || { echo "make install: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2; exit 1; }; \
	fi
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

lint: install
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

format: install
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

typecheck: install
	$(BIN)/mypy

# pytest exits 5 when it collects nothing: say so rather than leave a bare status.
define run_pytest
	@status=0; $(BIN)/pytest -q $(1) $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make $@: pytest collected no tests (exit 5); check the paths and -k/-m filters" >&2; fi; \
	exit $$status
endef

test: install
	$(call run_pytest,)

test-postgres: install
	@if [ -z "$$BATON_TEST_POSTGRES_URL" ]; then \
		echo "make test-postgres: set BATON_TEST_POSTGRES_URL=postgresql+psycopg://USER:PASSWORD@127.0.0.1:PORT/DB, or run: eval \"\$$(.ci/postgres.sh start)\"" >&2; \
		exit 2; \
	fi
	$(call run_pytest,tests/store)

bench: install
	$(BIN)/python -m bench

demo: install
	$(BIN)/baton demo
