# bnpipe: `make demo` runs the experiment end to end; `make test` runs the test suite.
# Both set everything up first: Debian packages (data set, browser) and the pinned .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.pins-$(shell sha256sum pyproject.toml | cut -c1-16)
BIN := $(VENV)/bin
export BNPIPE_HOME ?= $(CURDIR)/.bnpipe

.PHONY: demo test setup system venv lint clean-state serve up down status bench

demo: setup
	$(BIN)/bnpipe run --parallel

# Two pytest-xdist workers: each module stays on one, and the modules on the shared real stack share
# one (tests/conftest.py), so one worker waits on the stack while the other runs the rest.
# `make test TEST_ARGS=` runs serially; any pytest arguments go there (`TEST_ARGS='-n 2 -k celery'`).
TEST_ARGS ?= -n 2
test: setup
	$(BIN)/pytest $(TEST_ARGS)

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

# Serve the champion of DATASET over HTTP on 127.0.0.1:PORT with MLflow's model server (Ctrl-C stops it).
DATASET ?= fashion_mnist
PORT ?= 5001
serve: venv
	$(BIN)/bnpipe serve --dataset $(DATASET) --port $(PORT)

# The real stack on 127.0.0.1: Airflow api-server, scheduler, dag-processor, triggerer and an MLflow
# server, under $(BNPIPE_HOME)/stack (logs in its logs/). `make down` stops exactly those processes.
up: setup
	$(BIN)/python -m bnpipe.operations.stack up $(if $(AIRFLOW_PORT),--airflow-port $(AIRFLOW_PORT)) $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT))

down:
	$(BIN)/python -m bnpipe.operations.stack down

status:
	$(BIN)/python -m bnpipe.operations.stack status

lint: venv
	$(BIN)/ruff check bnpipe dags plugins tests benchmarks
	$(BIN)/ruff format --check bnpipe dags plugins tests benchmarks

# The benchmark suite (about 25 min on 2 cores): prints the table and writes BENCHMARKS.md.
bench: venv
	$(BIN)/python -m benchmarks

clean-state:
	rm -rf .bnpipe
