"""Shared fixtures: a real hub on a free port and a farm of simulated phones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness import Farm, HubServer


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[HubServer]:
    server = await HubServer(tmp_path / "hub.db").start()
    yield server
    await server.stop()


@pytest.fixture
async def api(hub: HubServer) -> AsyncIterator[httpx.AsyncClient]:
    async with hub.client() as client:
        yield client


@pytest.fixture
async def farm(hub: HubServer) -> AsyncIterator[Farm]:
    f = Farm(lambda: hub.url)
    yield f
    await f.close()
