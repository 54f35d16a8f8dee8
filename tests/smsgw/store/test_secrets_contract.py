"""Secrets at rest (smsgw/secretbox.py, smsgw/store/secrets.py) on every engine: with a key
no secret column holds a clear value, the store still reads each one back; a plain
database is sealed when opened with a key; a missing or wrong key refuses to open; the
previous key rotates; ``decrypt`` goes back to clear."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from smsgw.clock import new_id, utcnow
from smsgw.secretbox import PREFIX, SecretBox, SecretKeyError
from smsgw.store import Store, Webhook
from smsgw.store.postgres import PostgresStore
from smsgw.store.sql import Op, fetch
from smsgw.store.sqlite import MEMORY, SqliteStore
from tests.pgtest import (
    drop_schema,
    fresh_schema_name,
    harness_store,
    require_postgres,
    with_schema,
)

KEY = "k1-" + "a" * 40
OTHER = "k2-" + "b" * 40
SETTINGS_DOC = "smsgate.settings"

OpenStore = Callable[[SecretBox | None], Awaitable[Store]]


async def _engine(kind: str, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """Opens stores on one database (each open after the last one closed)."""
    if kind != "postgres" and harness_store() == "postgres":
        pytest.skip("the SMSGW_TEST_STORE=postgres pass runs only the PostgreSQL store")
    opened: list[Store] = []
    base = url = schema = None
    if kind == "postgres":
        base = await require_postgres()
        schema = fresh_schema_name()
        url = with_schema(base, schema)

    async def open_store(box: SecretBox | None) -> Store:
        s: Store
        if url is not None:
            s = PostgresStore(url, max_size=2, box=box)
        else:
            s = SqliteStore(tmp_path / "hub.db" if kind == "sqlite" else MEMORY, box=box)
        await s.open()
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        await s.close()
    if base is not None and schema is not None:
        await drop_schema(base, schema)


@pytest.fixture(params=["sqlite", "memory", "postgres"])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    async for opener in _engine(request.param, tmp_path):
        yield opener


@pytest.fixture(params=["sqlite", "postgres"])
async def durable(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[OpenStore]:
    """An engine whose database outlives a store: closed and opened again with other keys."""
    async for opener in _engine(request.param, tmp_path):
        yield opener


def _select(sql: str) -> Op[list[Any]]:
    found: list[Any] = yield fetch(sql)
    return found


async def raw_secrets(store: Store) -> list[str]:
    """Every stored value of every secret column, as the database holds it."""
    read = store.driver.read
    found = [r[0] for r in await read(lambda: _select("SELECT value FROM hub_secrets"))]
    for r in await read(lambda: _select("SELECT secret, previous_secret FROM webhooks")):
        found += [v for v in (r[0], r[1]) if v is not None]
    for r in await read(lambda: _select("SELECT value FROM hub_settings")):
        found.append(json.loads(r[0])["webhooks"]["signing_key"])
    return found


async def put_secrets(store: Store) -> str:
    """One of each kind of secret, in clear as the hub hands them over; the webhook's id."""
    now = utcnow()
    hook = Webhook(
        id=new_id(),
        url="http://127.0.0.1:9/h",
        events=frozenset({"*"}),
        description=None,
        enabled=True,
        secret="whsec_first",
        created_at=now,
        updated_at=now,
    )
    await store.create_webhook(hook)
    await store.rotate_webhook_secret(hook.id, "whsec_second", now + timedelta(hours=1), now)
    assert await store.hub_secret("callback", "callback-clear") == "callback-clear"
    assert await store.hub_secret("smsgate_jwt", "jwt-clear") == "jwt-clear"
    assert await store.hub_secret("ui_cookie", "cookie-clear") == "cookie-clear"
    doc = {"webhooks": {"signing_key": "signing-clear"}, "ping": {"interval_seconds": 5}}
    assert await store.hub_setting(SETTINGS_DOC, doc, now) == doc
    return hook.id


CLEAR = {
    "whsec_first",
    "whsec_second",
    "callback-clear",
    "jwt-clear",
    "cookie-clear",
    "signing-clear",
}


async def reads_back(store: Store, hook_id: str) -> None:
    """The store hands out every secret in clear, whatever the column holds."""
    hook = await store.get_webhook(hook_id)
    assert hook is not None
    assert (hook.secret, hook.previous_secret) == ("whsec_second", "whsec_first")
    assert [h.secret for h in await store.list_webhooks()] == ["whsec_second"]
    assert await store.hub_secret("callback", "ignored") == "callback-clear"
    assert await store.hub_secret("smsgate_jwt", "ignored") == "jwt-clear"
    doc = await store.hub_setting(SETTINGS_DOC, {}, utcnow())
    assert doc["webhooks"]["signing_key"] == "signing-clear" and doc["ping"]


async def test_with_a_key_no_column_holds_a_clear_secret(engine: OpenStore) -> None:
    box = SecretBox(KEY)
    store = await engine(box)
    hook_id = await put_secrets(store)
    stored = await raw_secrets(store)
    assert len(stored) == len(CLEAR)
    assert all(v.startswith(f"{PREFIX}{box.key_id}:") for v in stored), stored
    assert not any(clear in v for v in stored for clear in CLEAR)
    await reads_back(store, hook_id)
    # The settings document replaced through the API is sealed too, and its other
    # sections stay readable JSON.
    doc = {"webhooks": {"signing_key": "signing-new"}, "ping": {"interval_seconds": 9}}
    await store.put_hub_setting(SETTINGS_DOC, doc, utcnow())
    assert (await store.hub_setting(SETTINGS_DOC, {}, utcnow())) == doc
    assert "signing-new" not in json.dumps(await raw_secrets(store))


async def test_without_a_key_secrets_are_stored_as_before(engine: OpenStore) -> None:
    store = await engine(None)
    hook_id = await put_secrets(store)
    assert set(await raw_secrets(store)) == CLEAR
    await reads_back(store, hook_id)


async def test_a_plain_database_is_sealed_when_opened_with_a_key(durable: OpenStore) -> None:
    plain = await durable(None)
    hook_id = await put_secrets(plain)
    await plain.close()
    box = SecretBox(KEY)
    sealed = await durable(box)
    assert all(v.startswith(f"{PREFIX}{box.key_id}:") for v in await raw_secrets(sealed))
    await reads_back(sealed, hook_id)
    # Sealed once: opening again rewrites nothing.
    report = await sealed.seal_secrets()
    assert (report.rewritten, report.kept) == (0, 5)  # 3 hub secrets, 1 webhook, 1 doc


async def test_a_missing_or_wrong_key_refuses_to_open(durable: OpenStore) -> None:
    store = await durable(SecretBox(KEY))
    await put_secrets(store)
    before = await raw_secrets(store)
    await store.close()
    with pytest.raises(SecretKeyError, match="SMSGW_SECRET_KEY is not set"):
        await durable(None)
    with pytest.raises(SecretKeyError, match="other keys"):
        await durable(SecretBox(OTHER))
    again = await durable(SecretBox(KEY))  # nothing was changed by the refusals
    assert await raw_secrets(again) == before


async def test_the_previous_key_opens_what_it_sealed_and_is_replaced(durable: OpenStore) -> None:
    store = await durable(SecretBox(KEY))
    hook_id = await put_secrets(store)
    await store.close()
    rotated = SecretBox(OTHER, previous=KEY)
    store = await durable(rotated)
    assert all(v.startswith(f"{PREFIX}{rotated.key_id}:") for v in await raw_secrets(store))
    await reads_back(store, hook_id)
    await store.close()
    await reads_back(await durable(SecretBox(OTHER)), hook_id)


async def test_decrypt_writes_them_back_in_clear(durable: OpenStore) -> None:
    store = await durable(SecretBox(KEY))
    hook_id = await put_secrets(store)
    report = await store.seal_secrets(clear=True)
    assert report.rewritten == 5
    assert set(await raw_secrets(store)) == CLEAR
    await store.close()
    await reads_back(await durable(None), hook_id)


# -- the box itself ------------------------------------------------------------------


def test_sealing_is_randomised_authenticated_and_keyed() -> None:
    box = SecretBox(KEY)
    one, two = box.seal("s3cret"), box.seal("s3cret")
    assert one != two and box.open(one) == box.open(two) == "s3cret"
    assert box.open("in clear") == "in clear"
    assert box.current(one) and not box.current("in clear")
    assert not SecretBox().current(one) and SecretBox().current("in clear")
    body = one.rsplit(":", 1)[1]
    flipped = one[: -len(body)] + ("A" if body[0] != "A" else "B") + body[1:]
    with pytest.raises(SecretKeyError, match="damaged"):
        box.open(flipped)
    # The key id is authenticated: a value relabelled with another key's id fails too.
    other = SecretBox(OTHER)
    relabelled = one.replace(str(box.key_id), str(other.key_id))
    with pytest.raises(SecretKeyError, match="damaged"):
        other.open(relabelled)
    with pytest.raises(SecretKeyError, match="not set"):
        SecretBox().open(one)


def test_short_keys_and_a_previous_key_alone_are_refused() -> None:
    with pytest.raises(SecretKeyError, match="at least 16"):
        SecretBox("short")
    with pytest.raises(SecretKeyError, match="without SMSGW_SECRET_KEY"):
        SecretBox(None, previous=KEY)
    assert SecretBox(KEY).key_id == SecretBox(KEY).key_id != SecretBox(OTHER).key_id
