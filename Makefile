# The front door. `make run` and `make test` set up everything they need (venv, packages, Kafka jars).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYPROJECTS := shared/pyproject.toml deploy/pyproject.toml $(wildcard services/*/pyproject.toml) requirements-dev.txt
PYTEST_ARGS ?=

.PHONY: help setup run test infra-up infra-down check lint typecheck validate clean bench chaos docs

help:
	@echo "make run         start PostgreSQL, Kafka and the four services (Ctrl-C stops all)"
	@echo "make test        run the tests against a real PostgreSQL and Kafka"
	@echo "make check       ruff and mypy"
	@echo "make infra-up    start PostgreSQL and Kafka in the background (make infra-down stops them)"
	@echo "make bench       each hot path against its bare baseline on a private stack (.run/reports/bench.json)"
	@echo "make clean       stop everything and remove .run/ and .venv/"

$(STAMP): $(PYPROJECTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed (found " + sys.version.split()[0] + ")")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing packages into $(VENV) ..."
	@$(BIN)/python -m pip install -q --upgrade pip
	@$(BIN)/python -m pip install -q -r requirements-dev.txt -e shared $(addprefix -e ,$(wildcard services/*)) -e deploy
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	@$(BIN)/devstack run --replicas $(or $(REPLICAS),1)

test: $(STAMP)
	@$(BIN)/devstack test $(PYTEST_ARGS)

infra-up: $(STAMP)
	@$(BIN)/devstack up --profile $(or $(PROFILE),dev)

infra-down: $(STAMP)
	@$(BIN)/devstack down --profile $(or $(PROFILE),dev)

check: lint typecheck validate

validate: $(STAMP)
	$(BIN)/devstack validate

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	-@test -x $(BIN)/devstack && $(BIN)/devstack down --profile dev; true
	-@test -x $(BIN)/devstack && $(BIN)/devstack down --profile test; true
	rm -rf .run $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

chaos: $(STAMP)
	$(BIN)/devstack chaos --orders $(or $(ORDERS),2000) $(if $(SEED),--seed $(SEED),)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

docs: $(STAMP)
	$(BIN)/backoffice docs --out docs
