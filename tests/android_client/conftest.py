"""Fixtures for the device-side tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from fakehub import FakeHub


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def auto_hub() -> AsyncIterator[FakeHub]:
    fake = FakeHub(auto_welcome=True)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()
