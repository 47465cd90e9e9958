# controlplane: `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# PostgreSQL for the test suite (local server, trust auth); SQLite runs second.
TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install run demo test test-postgres test-sqlite lint format typecheck migrations-check check bench stress clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/django-admin: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/django-admin ## create .venv and install the project with its dev tools

run: demo ## the README's run command: the whole system on the embedded defaults (see demo)

demo: install ## SQLite + embedded Redis, admin, worker, beat, Flower, simulator; prints URLs and login; Ctrl-C stops all
	VENV=$(VENV) bash scripts/demo.sh

test: install lint typecheck migrations-check test-postgres test-sqlite ## everything CI checks: lint, types, migrations, suite on PostgreSQL then SQLite

test-postgres: install ## the suite on PostgreSQL
	@echo "=== test suite on PostgreSQL ($(TEST_PG_URL)) ==="
	DEBUG=1 DATABASE_URL=$(TEST_PG_URL) $(BIN)/pytest $(PYTEST_ARGS)

test-sqlite: install ## the suite on SQLite (the embedded default)
	@echo "=== test suite on SQLite ==="
	DEBUG=1 DATABASE_URL=sqlite:///$(CURDIR)/var/controlplane-test-host.sqlite3 $(BIN)/pytest $(PYTEST_ARGS)

lint: install ## ruff lint and format check, and the import layering of docs/design.md §2
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy with django-stubs
	DEBUG=1 $(BIN)/mypy controlplane reconcilers bench stress

migrations-check: install ## fail if models and migrations disagree
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

check: test ## alias of test: run before every commit

BENCH_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane_bench
BENCH_ARGS ?=
# Production settings (DEBUG off): with DEBUG on, Django keeps every query in memory and slows each one.
bench: install ## benchmarks at a million rows against the SQL floor and the naive loop (PostgreSQL; writes docs/benchmarks.md)
	@psql "$(BENCH_PG_URL)" -c 'SELECT 1' >/dev/null 2>&1 || psql "$(dir $(BENCH_PG_URL))postgres" -qc 'CREATE DATABASE $(notdir $(BENCH_PG_URL))'
	DEBUG=0 SECRET_KEY=bench-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz ALLOWED_HOSTS=127.0.0.1 LOG_LEVEL=WARNING \
		DATABASE_URL=$(BENCH_PG_URL) $(PY) -m bench.run --out docs/benchmarks.md $(BENCH_ARGS)

STRESS_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane_stress
STRESS_ARGS ?=
stress: install ## fault and load suite at full length (PostgreSQL, redis-server; ~6 min): prints the figures, exit 0 only if every invariant held
	DEBUG=1 LOG_LEVEL=WARNING DATABASE_URL=$(STRESS_PG_URL) $(PY) -m stress $(STRESS_ARGS)
	DEBUG=1 DATABASE_URL=$(STRESS_PG_URL) STRESS_EXAMPLES=$${STRESS_EXAMPLES:-500} $(BIN)/pytest -q -p no:cacheprovider tests/stress/test_bad_input.py tests/stress/test_checks.py

clean: ## remove the venv and local state
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
