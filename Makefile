# smsgw: `make run` starts the hub, `make test` runs lint, types and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 9000

.PHONY: run install install-test install-bench check test test-postgres migrate bench bench-full clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[bench]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

install-bench: $(VENV)/.installed-bench

run: install
	SMSGW_HOST=$${SMSGW_HOST:-$(HOST)} SMSGW_PORT=$${SMSGW_PORT:-$(PORT)} $(BIN)/smsgw serve

migrate: install
	$(BIN)/smsgw migrate

check: install-test
	$(BIN)/ruff check smsgw android_client tests bench
	$(BIN)/ruff format --check smsgw android_client tests bench
	$(BIN)/mypy

# The whole suite on SQLite, then again with every hub on PostgreSQL (tests/pgtest.py):
# always under CI=true, elsewhere when SMSGW_TEST_POSTGRES_URL names a server.
test: check
	$(BIN)/pytest
	@if [ "$$CI" = true ] || [ -n "$$SMSGW_TEST_POSTGRES_URL" ]; then \
		$(MAKE) --no-print-directory test-postgres; \
	else \
		echo "PostgreSQL pass skipped: set SMSGW_TEST_POSTGRES_URL=postgresql://user@host/db"; \
	fi

test-postgres: install-test
	SMSGW_TEST_STORE=postgres $(BIN)/pytest

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run

bench-full: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
