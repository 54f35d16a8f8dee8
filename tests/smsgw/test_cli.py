"""The ``smsgw`` command and first-start behaviour, run as a user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smsgw.auth import Scope
from smsgw.config import Settings
from smsgw.hub import Hub
from tests.harness import Farm, HubProcess, HubServer


def smsgw(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SMSGW_DATABASE_URL": f"sqlite:///{db}"}
    env.pop("SMSGW_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "smsgw", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_migrate_then_keys_create_list_revoke(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    out = smsgw(db, "migrate")
    assert out.returncode == 0 and "up to date" in out.stdout
    out = smsgw(db, "keys", "create", "--name", "billing", "--scopes", "send,read")
    assert out.returncode == 0, out.stderr
    secret = re.search(r"secret \(shown once\): (sk_\S+)", out.stdout)
    key_id = re.search(r"created key (\S+)", out.stdout)
    assert secret and key_id
    listed = smsgw(db, "keys", "list").stdout
    assert key_id.group(1) in listed and "read,send" in listed and "active" in listed
    assert secret.group(1) not in listed  # the secret is never shown again
    assert smsgw(db, "keys", "revoke", key_id.group(1)).returncode == 0
    assert "revoked" in smsgw(db, "keys", "list").stdout
    again = smsgw(db, "keys", "revoke", key_id.group(1))
    assert again.returncode == 1 and "no active key" in again.stderr
    bad = smsgw(db, "keys", "create", "--name", "x", "--scopes", "root")
    assert bad.returncode == 2 and "scopes" in bad.stderr


async def test_cli_key_works_against_the_running_hub(tmp_path: Path) -> None:
    db = tmp_path / "hub.db"
    hub = await HubServer(db).start()
    try:
        out = smsgw(db, "keys", "create", "--name", "reader", "--scopes", "read")
        secret = re.search(r"secret \(shown once\): (sk_\S+)", out.stdout)
        assert secret
        async with hub.client(secret.group(1)) as c:
            assert (await c.get("/devices/")).status_code == 200
            assert (
                await c.post("/keys", json={"name": "x", "scopes": ["admin"]})
            ).status_code == 403
    finally:
        await hub.stop()


async def test_first_start_creates_and_prints_an_admin_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'first.db'}", admin_key=None)
    hub = Hub.build(settings)
    await hub.start()
    printed = re.search(r"(sk_\S+)", capsys.readouterr().out)
    assert printed
    principal = await hub.auth.resolve_client(printed.group(1))
    assert principal is not None and principal.allows(Scope.ADMIN)
    await hub.stop()
    again = Hub.build(settings)
    await again.start()
    assert "sk_" not in capsys.readouterr().out  # shown only once
    await again.stop()


async def test_env_admin_key_means_no_key_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'env.db'}", admin_key="sk_mine_x")
    hub = Hub.build(settings)
    await hub.start()
    assert "sk_" not in capsys.readouterr().out
    assert await hub.store.list_api_keys() == []
    await hub.stop()


def test_database_urls_are_printed_without_their_password() -> None:
    from smsgw.config import redact_url

    assert redact_url("postgresql://smsgw:s3cr%40t@db:5432/smsgw?schema=a") == (
        "postgresql://smsgw:***@db:5432/smsgw?schema=a"
    )
    assert redact_url("postgresql://smsgw@db/smsgw") == "postgresql://smsgw@db/smsgw"
    assert redact_url("sqlite:///./smsgw.db") == "sqlite:///./smsgw.db"


async def test_a_hub_on_memory_serves_a_dispatch(tmp_path: Path) -> None:
    """``SMSGW_DATABASE_URL=memory:// make run``: the hub process starts on one in-memory
    database that its writer and reader share, enrolls a phone and sends through it."""
    hub = await HubProcess(tmp_path / "unused.db", database_url="memory://").start()
    farm = Farm(lambda: hub.url)
    try:
        phone = await farm.add()
        async with hub.client() as api:
            r = await api.post("/sms/dispatch", json={"to": "+12025550123", "message": "hi"})
            assert r.status_code == 200, r.text
            assert r.json()["status"] == "SENT" and r.json()["device_id"] == phone.device_id
            assert phone.transmitted_ids == [r.json()["message_id"]]
            got = (await api.get(f"/sms/{r.json()['message_id']}")).json()
            assert got["status"] in {"SENT", "DELIVERED"} and got["body"] == "hi"
        assert not (tmp_path / "unused.db").exists()  # nothing on disk
    finally:
        await farm.close()
        await hub.stop()
