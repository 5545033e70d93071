# Two commands on a fresh machine: `make run` (the whole loop on its embedded defaults: a
# drifting stream, policies, kfp.local runs, promotion gate) and `make test` (lint, types,
# every test; `lint` checks the layers with import-linter). Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run quickstart test lint bench clean

$(VENV)/.installed: requirements.txt requirements-pipeline.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m triggers demo $(ARGS)

quickstart: install
	$(PY) -m triggers quickstart

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy thresholds triggers pipeline_client main.py
	$(VENV)/bin/lint-imports

test: lint
	$(VENV)/bin/pytest -q

bench: install
	$(PY) bench/run_all.py

clean:
	rm -rf .retrain
