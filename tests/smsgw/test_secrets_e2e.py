"""``SMSGW_SECRET_KEY`` end to end: a hub with the key signs webhooks and callbacks that a
real receiver verifies, and never writes those secrets in clear; a database written
without the key is sealed when a hub starts with it and its webhooks still verify; a
wrong or missing key stops the hub (and the CLI) with the setting named."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from smsgw.secretbox import PREFIX
from tests.harness import ADMIN_KEY, Farm, HubServer, free_socket, wait_for
from tests.receiver import Receiver

KEY = "e2e-key-" + "x" * 32
OTHER = "e2e-other-" + "y" * 32
TO = "+12025550123"
FAST: dict[str, Any] = {"webhook_poll_interval": 0.05, "webhook_retry_schedule": [0.2]}


def stored(db: Path) -> list[str]:
    """Every secret column's value as the file holds it."""
    with sqlite3.connect(db) as conn:
        found = [r[0] for r in conn.execute("SELECT value FROM hub_secrets")]
        for secret, previous in conn.execute("SELECT secret, previous_secret FROM webhooks"):
            found += [v for v in (secret, previous) if v is not None]
    return found


async def signed_round(hub: HubServer, receiver: Receiver) -> None:
    """A message with a callback_url through a phone: its events reach the receiver twice
    (the webhook and the callback), each verified against the secrets it was handed."""
    farm = Farm(lambda: hub.url)
    before = len(receiver.received)
    try:
        await farm.add()
        async with hub.client() as api:
            r = await api.post(
                "/sms/dispatch", json={"to": TO, "message": "hi", "callback_url": receiver.url}
            )
            assert r.json()["status"] == "SENT", r.text
        # queued, sent, delivered: once for the webhook, once for the callback.
        await wait_for(lambda: len(receiver.received) - before >= 6, what="signed events")
    finally:
        await farm.close()
    assert receiver.bad_signatures == 0


async def subscribe(hub: HubServer, receiver: Receiver) -> list[str]:
    async with hub.client() as api:
        r = await api.post(
            "/webhooks",
            json={
                "url": receiver.url,
                "events": ["message.queued", "message.sent", "message.delivered"],
            },
        )
        assert r.status_code == 201, r.text
        callback = (await api.get("/webhooks/callback-secret")).json()["secret"]
    receiver.secrets += [r.json()["secret"], callback]
    return [r.json()["secret"], callback]


async def test_a_hub_with_the_key_signs_with_secrets_it_never_wrote_in_clear(
    tmp_path: Path,
) -> None:
    db = tmp_path / "hub.db"
    receiver = await Receiver().start()
    hub = await HubServer(db, secret_key=KEY, **FAST).start()
    try:
        secrets = await subscribe(hub, receiver)
        await signed_round(hub, receiver)
        # The dashboard's cookie key and the SMSGate API's JWT key are made on first use.
        async with httpx.AsyncClient(base_url=hub.url) as web:
            assert (await web.get("/ui/sign-in")).status_code == 200
            r = await web.post(
                "/api/3rdparty/v1/auth/token",
                auth=("smsgw", ADMIN_KEY),
                json={"scopes": ["messages:send"]},
            )
            assert r.status_code == 201, r.text
            token = r.json()["access_token"]
            # The token verifies against the JWT key the store opens for each request.
            r = await web.get(
                "/api/3rdparty/v1/messages", headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code != 401, r.text
    finally:
        await hub.stop()
    values = stored(db)
    assert {"callback", "smsgate_jwt", "ui_cookie"} <= _names(db)
    assert values and all(v.startswith(PREFIX) for v in values), values
    # Not in the file at all (no page, no WAL): nothing was ever written in clear.
    raw = database_files(tmp_path)
    for secret in secrets:
        assert secret.encode() not in raw
    again = await HubServer(db, secret_key=KEY, **FAST).start()
    try:
        await signed_round(again, receiver)  # opened after a restart, same signatures
    finally:
        await again.stop()
        await receiver.stop()


def database_files(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in directory.iterdir() if p.name.startswith("hub.db"))


def _names(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM hub_secrets")}


async def test_a_plain_database_is_sealed_at_start_and_still_verifies(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    receiver = await Receiver().start()
    plain = await HubServer(db, **FAST).start()
    try:
        secrets = await subscribe(plain, receiver)
    finally:
        await plain.stop()
    assert set(secrets) <= set(stored(db))  # in clear, as before the setting
    sealed = await HubServer(db, secret_key=KEY, **FAST).start()
    try:
        assert all(v.startswith(PREFIX) for v in stored(db))
        await signed_round(sealed, receiver)
    finally:
        await sealed.stop()
        await receiver.stop()


def smsgw(db: Path, *args: str, key: str | None, timeout: float = 60) -> tuple[int, str]:
    env = {
        **os.environ,
        "SMSGW_DATABASE_URL": f"sqlite:///{db}",
        "SMSGW_ADMIN_KEY": ADMIN_KEY,
        "SMSGW_HOST": "127.0.0.1",
    }
    env.pop("SMSGW_SECRET_KEY", None)
    if key is not None:
        env["SMSGW_SECRET_KEY"] = key
    with free_socket() as sock:
        env["SMSGW_PORT"] = str(sock.getsockname()[1])
    done = subprocess.run(
        [sys.executable, "-m", "smsgw", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.returncode, done.stdout + done.stderr


async def test_a_wrong_or_missing_key_stops_the_hub_naming_the_setting(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    assert smsgw(db, "migrate", key=KEY)[0] == 0
    hub = await HubServer(db, secret_key=KEY).start()  # creates the hub's own secrets
    await hub.stop()
    for key, says in ((OTHER, "other keys"), (None, "SMSGW_SECRET_KEY is not set")):
        code, out = smsgw(db, "serve", key=key)
        assert code != 0 and says in out and "not starting" in out, out
        code, out = smsgw(db, "migrate", key=key)
        assert code == 2 and says in out, out
    code, out = smsgw(db, "serve", key="too-short")
    assert code == 2 and "SMSGW_SECRET_KEY is 9 characters" in out, out
    # The CLI's own pair: decrypt (with the key), then the hub starts without it.
    code, out = smsgw(db, "secrets", "encrypt", key=KEY)
    assert code == 0 and "sealed under key id" in out, out
    code, out = smsgw(db, "secrets", "decrypt", key=KEY)
    assert code == 0 and "in clear" in out, out
    assert not any(v.startswith(PREFIX) for v in stored(db))
    assert smsgw(db, "migrate", key=None)[0] == 0
