# smsgw: `make run` starts the hub, `make test` runs lint, types and the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 0.0.0.0
PORT ?= 9000

.PHONY: run install install-test install-bench check test test-postgres migrate bench bench-full agent clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# The hub needs the agent's distribution (android_client/: the wire format both sides
# share), which is not on PyPI: it is installed from here in the same pip command.
$(VENV)/.installed: pyproject.toml android_client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./android_client -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml android_client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e './android_client[modem]' -e '.[test]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml android_client/pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ./android_client -e '.[bench]'
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

# dist/smsgw-agent.pyz: the agent and its pure-Python dependencies in one file that runs
# with a bare python3 (docs/android.md); the hub serves it at /agent/smsgw-agent.pyz.
agent: $(BIN)/python
	$(BIN)/python deploy/agent_pyz.py dist/smsgw-agent.pyz

bench: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run

bench-full: $(VENV)/.installed-bench
	$(BIN)/python -m bench.run --full

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache dist android_client/build
