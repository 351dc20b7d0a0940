# journeylab: `make report` runs the whole pipeline on the built-in data; `make test` runs the tests.
# Both create .venv with Python 3.11 on first use and are idempotent (the second run is fast).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.journeylab-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: setup report repro test test-fast browser-deps benchmarks clean-data help

help:
	@echo "make report   - set up .venv, run the DVC pipeline (simulate -> ingest -> build -> analyses -> reports)"
	@echo "make test     - set up .venv and run the test suite"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,spark]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@rm -f $(VENV)/.journeylab-installed-*
	@touch $@

setup: $(STAMP)

report: setup
	@test -d .git || (git init -q && git add -A && git -c user.email=journeylab@localhost -c user.name=journeylab commit -qm "initial" )
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	@echo "Reports: $(CURDIR)/reports/index.html"

repro: report

browser-deps:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed and not root: browser tests will be skipped"; }

test: setup browser-deps
	$(BIN)/python -m pytest -n 2 --dist loadgroup

test-fast: setup
	$(BIN)/python -m pytest -n 2 -m "not slow and not spark and not browser"

benchmarks: setup
	$(BIN)/python benchmarks/engine.py

clean-data:
	rm -rf data/raw/*.parquet data/raw/*.json data/clean/* data/journeys/* data/results/* metrics/* reports/*.html data/interim
