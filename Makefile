# controlplane: `make help` lists the targets.
SHELL := /bin/bash
# `make test` runs on PYTHON, the default platform; `make test-matrix` runs each MATRIX entry
# (python:locked set:Django series) in a venv of its own. pyproject.toml declares the same.
PYTHON ?= python3.11
MATRIX := 3.12:django52:5.2 3.13:django60:6.0
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# PostgreSQL for the test suite (local server, trust auth); SQLite runs second.
TEST_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install lock lock-check audit run demo screenshot test test-postgres test-sqlite test-matrix lint format typecheck \
	migrations-check check bench bench-heartbeats stress soak clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The locked sets (uv.lock, exported with hashes by `make lock`): `runtime` is what the image
# installs; `django52` (the default, with the dev and demo extras) is what .venv gets.
LOCKED_SETS := runtime django52 django60
EXPORT_runtime := --no-default-groups --group django52
EXPORT_django52 := --no-default-groups --group django52 --extra dev --extra demo
EXPORT_django60 := --no-default-groups --group django60 --extra dev --extra demo
UV := $(BIN)/uv
UV_EXPORT := $(UV) export --frozen --no-emit-project --format requirements-txt --quiet
LOCK_ARGS ?=

$(BIN)/django-admin: pyproject.toml requirements/django52.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found (set PYTHON=...)"; exit 1; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The locked set first, every file checked against its hash; then the project itself,
	@# editable and without dependencies (hash-checking mode refuses an editable install).
	$(BIN)/pip install --quiet --require-hashes -r requirements/django52.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/django-admin ## create .venv and install the locked set (runtime, dev and demo) and the project

lock: install ## after changing pyproject's dependencies: re-resolve uv.lock, re-export requirements/*.txt (LOCK_ARGS="--upgrade-package NAME" moves one)
	$(UV) lock $(LOCK_ARGS)
	$(foreach set,$(LOCKED_SETS),$(UV_EXPORT) $(EXPORT_$(set)) > requirements/$(set).txt &&) true
	@$(MAKE) --no-print-directory install

lock-check: install ## fail if uv.lock or an exported requirements/*.txt is out of date with pyproject.toml
	@# Offline: an unchanged pyproject is checked against the lock alone; a changed one cannot
	@# resolve without the registry, and fails either way.
	@$(UV) lock --check --offline --quiet || { echo "uv.lock is out of date with pyproject.toml: run make lock"; exit 1; }
	@$(foreach set,$(LOCKED_SETS),$(UV_EXPORT) $(EXPORT_$(set)) | diff -q requirements/$(set).txt - >/dev/null \
		|| { echo "requirements/$(set).txt is out of date with uv.lock: run make lock"; exit 1; };)
	@echo "uv.lock and requirements/*.txt match pyproject.toml"

run: demo ## the README's run command: the whole system on the embedded defaults (see demo)

demo: install ## SQLite + embedded Redis, admin, worker, beat, Flower, simulator; prints URLs and login; Ctrl-C stops all
	VENV=$(VENV) bash scripts/demo.sh

screenshot: install ## run the browser acceptance test on `make run` (headless Chromium) and copy its dashboard picture to docs/images/ for the README
	DEBUG=1 DATABASE_URL=$(TEST_PG_URL) $(BIN)/pytest -q -p no:cacheprovider -m browser tests/ops/test_browser_demo.py
	mkdir -p docs/images && cp var/screenshots/dashboard.png docs/images/dashboard.png

test: install lint typecheck migrations-check lock-check test-postgres test-sqlite ## everything CI checks: lint, types, migrations, lock, suite on PostgreSQL then SQLite

test-postgres: install ## the suite on PostgreSQL
	@echo "=== test suite on PostgreSQL ($(TEST_PG_URL)) ==="
	DEBUG=1 DATABASE_URL=$(TEST_PG_URL) $(BIN)/pytest $(PYTEST_ARGS)

test-sqlite: install ## the suite on SQLite (the embedded default)
	@echo "=== test suite on SQLite ==="
	DEBUG=1 DATABASE_URL=sqlite:///$(CURDIR)/var/controlplane-test-host.sqlite3 $(BIN)/pytest -m "not packaging" $(PYTEST_ARGS)

test-matrix: ## the suite on SQLite for each MATRIX entry (3.12 + Django 5.2, 3.13 + Django 6.0), each from its locked set; no bench, stress, browser or packaging tests
	@failed=""; for entry in $(MATRIX); do \
		IFS=: read -r python set series <<< "$$entry"; \
		bash scripts/test-matrix.sh "$$python" "$$set" "$$series" $(PYTEST_ARGS) || failed="$$failed $$entry"; \
	done; \
	if [ -n "$$failed" ]; then echo "test-matrix: failed on$$failed"; exit 1; fi; echo "test-matrix: passed on $(MATRIX)"

lint: install ## ruff lint and format check, and the import layering of docs/design.md §2
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: install ## apply ruff formatting and fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: install ## mypy with django-stubs
	DEBUG=1 $(BIN)/mypy controlplane reconcilers bench stress scripts

migrations-check: install ## fail if models and migrations disagree
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

check: test ## alias of test: run before every commit

AUDIT_ARGS ?=
audit: install ## pip-audit (strict) of every package uv.lock pins, then the allow-list gate (needs PyPI's vulnerability data: not in make test)
	$(PY) scripts/audit.py run --allow-list requirements/audit-allow.toml --out var/audit -- $(AUDIT_ARGS)

BENCH_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane_bench
BENCH_ARGS ?=
# Production settings (DEBUG off): with DEBUG on, Django keeps every query in memory and slows each one.
bench: install ## benchmarks at a million rows against the SQL floor and the naive loop (PostgreSQL; writes docs/benchmarks.md)
	@psql "$(BENCH_PG_URL)" -c 'SELECT 1' >/dev/null 2>&1 || psql "$(dir $(BENCH_PG_URL))postgres" -qc 'CREATE DATABASE $(notdir $(BENCH_PG_URL))'
	DEBUG=0 SECRET_KEY=bench-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz ALLOWED_HOSTS=127.0.0.1 LOG_LEVEL=WARNING \
		DATABASE_URL=$(BENCH_PG_URL) $(PY) -m bench.run --out docs/benchmarks.md $(BENCH_ARGS)
	@$(MAKE) --no-print-directory bench-heartbeats

HEARTBEAT_BENCH_ARGS ?=
bench-heartbeats: install ## heartbeats over HTTP, the project against the raw-psycopg floor app under the same gunicorn (16/64 connections; ~3 min; writes its section of docs/benchmarks.md)
	@psql "$(BENCH_PG_URL)" -c 'SELECT 1' >/dev/null 2>&1 || psql "$(dir $(BENCH_PG_URL))postgres" -qc 'CREATE DATABASE $(notdir $(BENCH_PG_URL))'
	DEBUG=0 SECRET_KEY=bench-only-not-a-secret-0123456789abcdefghijklmnopqrstuvwxyz ALLOWED_HOSTS=127.0.0.1 LOG_LEVEL=WARNING \
		DATABASE_URL=$(BENCH_PG_URL) $(PY) -m bench.heartbeats --out docs/benchmarks.md $(HEARTBEAT_BENCH_ARGS)

STRESS_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane_stress
STRESS_ARGS ?=
stress: install ## fault and load suite at full length (PostgreSQL, redis-server; ~6 min): prints the figures, exit 0 only if every invariant held
	DEBUG=1 LOG_LEVEL=WARNING DATABASE_URL=$(STRESS_PG_URL) $(PY) -m stress $(STRESS_ARGS)
	DEBUG=1 DATABASE_URL=$(STRESS_PG_URL) STRESS_EXAMPLES=$${STRESS_EXAMPLES:-500} $(BIN)/pytest -q -p no:cacheprovider tests/stress/test_bad_input.py tests/stress/test_checks.py

SOAK_PG_URL ?= postgres://postgres@127.0.0.1:5432/controlplane_soak
SOAK_ARGS ?=
soak: install ## the whole system under the simulator for 30 min (SOAK_ARGS="--duration 3600"): fails on RSS growth, a growing metric dir or slow scrapes; figures to docs/reliability.md
	$(PY) -m stress.soak --pg-url $(SOAK_PG_URL) $(SOAK_ARGS)

clean: ## remove the venv and local state
	rm -rf $(VENV) .venv-py* var .mypy_cache .ruff_cache .pytest_cache
