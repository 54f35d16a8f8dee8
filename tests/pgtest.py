"""PostgreSQL for the tests: where the server is, one schema per test, skip or fail.

The server comes from ``SMSGW_TEST_POSTGRES_URL``; under ``CI=true`` it defaults to the
one CI runs (``postgresql://postgres@127.0.0.1:5432/test``) and a missing server fails
the test instead of skipping it. Every store under test lives in a schema of its own
(``?schema=`` in the hub's database URL), so runs in parallel on one database never see
each other's rows.

``SMSGW_TEST_STORE=postgres`` makes the end-to-end harness put every hub on PostgreSQL:
a hub "database path" maps to a schema named after a hash of the path, so a test that
restarts a hub on the same path finds its data again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from smsgw.config import Settings
from smsgw.store import Store, create_store

CI_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"true", "1", "yes"}


def postgres_url() -> str | None:
    return os.environ.get("SMSGW_TEST_POSTGRES_URL") or (CI_POSTGRES_URL if in_ci() else None)


def harness_store() -> str:
    """The engine the end-to-end hubs use: ``sqlite`` (default) or ``postgres``."""
    return os.environ.get("SMSGW_TEST_STORE", "sqlite").lower()


_checked: dict[str, str | None] = {}  # url -> why it is unusable (None: usable)


async def require_postgres() -> str:
    """The server's URL; skips the test (fails it under CI) when there is none."""
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL tests need SMSGW_TEST_POSTGRES_URL (or CI=true)")
    if url not in _checked:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            await conn.close()
            _checked[url] = None
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            _checked[url] = f"{type(exc).__name__}: {exc}"
    problem = _checked[url]
    if problem is not None:
        message = f"PostgreSQL at {url} is not usable: {problem}"
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return url


def with_schema(url: str, schema: str) -> str:
    """``url`` with the store's ``schema`` query parameter set."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


def fresh_schema_name() -> str:
    return f"smsgw_t_{os.getpid()}_{secrets.token_hex(4)}"


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


# -- the end-to-end harness on PostgreSQL ------------------------------------------

_harness_schemas: set[str] = set()  # created by this process, dropped at exit


async def hub_database_url(db_path: Path) -> str:
    """The hub URL for a test "database path": SQLite, or with ``SMSGW_TEST_STORE=postgres``
    a schema of its own (fresh the first time this process sees the path)."""
    if harness_store() != "postgres":
        return f"sqlite:///{db_path}"
    base = await require_postgres()
    digest = hashlib.sha256(str(db_path).encode()).hexdigest()[:24]  # tmp paths: absolute
    schema = f"smsgw_h_{digest}"
    if schema not in _harness_schemas:
        # A path seen for the first time starts empty, even if an older run left the
        # schema behind (pytest reuses temporary directory names across runs).
        await drop_schema(base, schema)
        _harness_schemas.add(schema)
    return with_schema(base, schema)


async def pass_store(db_path: Path) -> Store:
    """An open store on this pass's engine: a SQLite file at ``db_path``, or with
    ``SMSGW_TEST_STORE=postgres`` a PostgreSQL schema of its own."""
    store = create_store(Settings(database_url=await hub_database_url(db_path)))
    await store.open()
    return store


def _drop_harness_schemas() -> None:
    url = postgres_url()
    if not _harness_schemas or url is None:
        return

    async def drop_all() -> None:
        for schema in sorted(_harness_schemas):
            await drop_schema(url, schema)

    # Leftovers are named smsgw_h_*, and a reused path starts fresh anyway.
    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        asyncio.run(drop_all())


atexit.register(_drop_harness_schemas)
