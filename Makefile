# bnpipe: `make demo` runs the experiment end to end; `make test` runs the test suite.
# Both set everything up first: Debian packages (data set, browser) and the pinned .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pins-$(shell sha256sum pyproject.toml | cut -c1-16)
BIN := $(VENV)/bin
export BNPIPE_HOME ?= $(CURDIR)/.bnpipe

.PHONY: demo test setup system venv lint clean-state

demo: setup
	$(BIN)/bnpipe run --parallel

test: setup
	$(BIN)/pytest

setup: system venv

system:
	@bash scripts/setup-system.sh

venv: $(STAMP)

# Rebuilt only when pyproject.toml (the one place with the pins) changes.
$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

lint: venv
	$(BIN)/ruff check bnpipe dags plugins tests
	$(BIN)/ruff format --check bnpipe dags plugins tests

clean-state:
	rm -rf .bnpipe
