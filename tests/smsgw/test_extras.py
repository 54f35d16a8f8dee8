"""A setting whose optional package is missing fails at start, naming the extra to install
(smsgw/extras.py); the embedded default needs none of them."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from smsgw import cli
from smsgw.config import Settings
from smsgw.extras import MissingExtra
from smsgw.hub import Hub
from smsgw.store import create_store


@pytest.fixture
def without(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """Modules to pretend are not installed."""
    missing: set[str] = set()
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kw: Any) -> Any:
        return None if name in missing else real(name, *args, **kw)

    monkeypatch.setattr("smsgw.extras.importlib.util.find_spec", find_spec)
    return missing


def test_postgres_needs_the_postgres_extra(without: set[str]) -> None:
    without.add("asyncpg")
    with pytest.raises(MissingExtra, match=r"pip install 'smsgw\[postgres\]'"):
        create_store(Settings(database_url="postgresql://u@127.0.0.1/db"))
    create_store(Settings(database_url="memory://"))  # the default needs nothing


def test_several_nodes_need_the_redis_extra(without: set[str]) -> None:
    without.add("redis")
    with pytest.raises(MissingExtra, match=r"SMSGW_REDIS_URL .*smsgw\[redis\]"):
        Hub.build(Settings(database_url="memory://", redis_url="redis://127.0.0.1:6379/0"))


def test_the_cli_says_which_extra_and_exits_2(
    without: set[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    without.add("asyncpg")
    monkeypatch.setenv("SMSGW_DATABASE_URL", "postgresql://u@127.0.0.1/db")
    assert cli.main(["migrate"]) == 2
    assert "smsgw[postgres]" in capsys.readouterr().err


def test_fcm_needs_the_fcm_extra(without: set[str]) -> None:
    from smsgw.wakeup import FcmClient

    without.add("firebase_admin")
    with pytest.raises(MissingExtra, match=r"smsgw\[fcm\]"):
        FcmClient("/nonexistent.json", ttl_seconds=60)
