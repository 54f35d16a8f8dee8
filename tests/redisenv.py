"""Redis for the cross-node tests: ``SMSGW_TEST_REDIS_URL`` (under ``CI=true`` it defaults
to ``redis://127.0.0.1:6379/0`` and a missing server is a failure, not a skip). Each test
gets a key prefix of its own, removed afterwards, so parallel runs never collide."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

CI = os.environ.get("CI") == "true"


@dataclass(frozen=True)
class RedisEnv:
    url: str
    prefix: str

    def settings(self, node_id: str | None = None) -> dict[str, object]:
        """Hub settings overrides for a node of this test's cluster."""
        overrides: dict[str, object] = {"redis_url": self.url, "redis_prefix": self.prefix}
        if node_id is not None:
            overrides["node_id"] = node_id
        return overrides


def test_redis_url() -> str | None:
    url = os.environ.get("SMSGW_TEST_REDIS_URL")
    if not url and CI:
        url = "redis://127.0.0.1:6379/0"
    return url or None


test_redis_url.__test__ = False  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def redis_env_for_test() -> AsyncIterator[RedisEnv]:
    """A Redis and a fresh key prefix, removed afterwards; skips (or fails under CI)."""
    url = test_redis_url()
    if url is None:
        pytest.skip("no Redis: set SMSGW_TEST_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    client = aioredis.from_url(url, decode_responses=True)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if CI:
            pytest.fail(f"Redis at {url} does not answer under CI=true: {exc}")
        pytest.skip(f"Redis at {url} does not answer: {exc}")
    env = RedisEnv(url, f"smsgwtest:{uuid.uuid4().hex[:12]}:")
    try:
        yield env
    finally:
        keys = [k async for k in client.scan_iter(match=env.prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def redis_env() -> AsyncIterator[RedisEnv]:
    async with redis_env_for_test() as env:
        yield env
