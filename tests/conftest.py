"""Shared fixtures: a real hub on a free port and a farm of simulated phones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from smsgw.store import Store
from tests.app_farm import Apps
from tests.harness import Farm, HubServer
from tests.nginx import nginx_binary
from tests.pgtest import harness_store, in_ci, pass_store, postgres_url

# Skipped in the SMSGW_TEST_STORE=postgres pass: they exercise SQLite itself (its files,
# its migrations, URLs they build), which the default pass already covers.
SQLITE_ONLY = {
    "tests/smsgw/test_cli.py": "builds sqlite:/// URLs itself (smsgw migrate on "
    "PostgreSQL: tests/smsgw/store/test_postgres.py)",
    "tests/smsgw/store/test_store_contract.py::test_migrations_are_recorded_and_idempotent": (
        "SQLite migration files (PostgreSQL: tests/smsgw/store/test_postgres.py)"
    ),
    "tests/smsgw/test_secrets_e2e.py": "reads the SQLite file's bytes and builds sqlite:/// URLs "
    "(PostgreSQL: tests/smsgw/store/test_secrets_contract.py)",
}


def pytest_report_header() -> list[str]:
    """What the multi-node tests run on (tests/smsgw/test_multinode.py)."""
    binary = nginx_binary()
    if binary is not None:
        balancer = f"nginx at {binary} with deploy/nginx.conf"
    else:
        balancer = "missing nginx: a failure (CI=true)" if in_ci() else "tests/lb.py (no nginx)"
    database = "PostgreSQL" if postgres_url() or harness_store() == "postgres" else "SQLite"
    return [f"multi-node tests: {balancer}; {database} shared by the nodes"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if harness_store() != "postgres":
        return
    for item in items:
        for prefix, reason in SQLITE_ONLY.items():
            if item.nodeid == prefix or item.nodeid.startswith((prefix + "::", prefix + "[")):
                item.add_marker(pytest.mark.skip(reason=f"SQLite-specific: {reason}"))


@pytest.fixture
async def hub(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[HubServer]:
    """A hub on a fresh database; ``@pytest.mark.hub_settings(**overrides)`` on a test or
    module changes its settings."""
    marker = request.node.get_closest_marker("hub_settings")
    server = await HubServer(tmp_path / "hub.db", **(marker.kwargs if marker else {})).start()
    yield server
    await server.stop()


@pytest.fixture
async def engine_store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store of the pass's engine (a SQLite file, or PostgreSQL in the PostgreSQL pass)
    for tests that drive the dispatcher or the webhook worker without a hub."""
    store = await pass_store(tmp_path / "store.db")
    yield store
    await store.close()


@pytest.fixture
async def api(hub: HubServer) -> AsyncIterator[httpx.AsyncClient]:
    async with hub.client() as client:
        yield client


@pytest.fixture
async def farm(hub: HubServer) -> AsyncIterator[Farm]:
    f = Farm(lambda: hub.url)
    yield f
    await f.close()


@pytest.fixture
async def apps(hub: HubServer, api: httpx.AsyncClient) -> AsyncIterator[Apps]:
    """Stand-ins of the stock app registered on ``hub`` (tests/app_farm.py)."""
    a = Apps(hub, api)
    yield a
    await a.close()
