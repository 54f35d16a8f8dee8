"""``Idempotency-Key`` for POSTs that create messages.

The same key with the same body returns the first response and creates nothing new, even
when the two requests race: the key is claimed in the database (a unique row per API key
and Idempotency-Key) before the handler runs, so exactly one request executes; the others
wait for its response and replay it. The same key with a different body is a 409. Error
responses the client caused (4xx) are replayed too; a server error frees the key so a
retry can run. Keys are kept 24 hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from starlette.responses import Response

from smsgw.clock import utcnow
from smsgw.errors import ApiError, error_response
from smsgw.store import IdempotencyRecord, Store

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
KEEP_SECONDS = 24 * 3600
WAIT_FOR_FIRST = 60.0  # how long a duplicate waits for the first request's response
# A claim this old without a response belonged to a request that died with its process
# (no request runs longer: the dispatch deadline is capped at 60 s).
ABANDONED_AFTER = 300.0


def request_hash(method: str, path: str, body: Any) -> str:
    canonical = json.dumps([method, path, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Idempotency:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._done: dict[tuple[str, str], asyncio.Event] = {}

    async def _claim(self, owner: str, key: str, fingerprint: str) -> IdempotencyRecord | None:
        now = utcnow()
        return await self.store.idempotency_claim(
            owner, key, fingerprint, now, now - timedelta(seconds=ABANDONED_AFTER)
        )

    async def run(
        self,
        owner: str,
        key: str,
        fingerprint: str,
        handler: Callable[[], Awaitable[Response]],
    ) -> Response:
        if not key or len(key) > MAX_KEY_LENGTH:
            raise ApiError(
                422,
                "invalid_idempotency_key",
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters",
            )
        slot = (owner, key)
        record = await self._claim(owner, key, fingerprint)
        if record is None:
            event = self._done.setdefault(slot, asyncio.Event())
            try:
                response = await handler()
            except ApiError as exc:
                if exc.status >= 500:
                    await self.store.idempotency_release(owner, key)
                    raise
                response = error_response(
                    exc.status, exc.code, exc.message, exc.details, exc.headers
                )
            except BaseException:
                await self.store.idempotency_release(owner, key)
                raise
            finally:
                event.set()
                self._done.pop(slot, None)
            if response.status_code < 500:
                await self.store.idempotency_complete(
                    owner, key, response.status_code, bytes(response.body).decode()
                )
            else:
                await self.store.idempotency_release(owner, key)
            return response
        if record.request_hash != fingerprint:
            raise ApiError(
                409,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            )
        deadline = time.monotonic() + WAIT_FOR_FIRST
        while record is not None and record.status_code is None:
            if time.monotonic() > deadline:
                raise ApiError(
                    409,
                    "idempotency_in_progress",
                    "a request with this Idempotency-Key is still running",
                )
            running = self._done.get(slot)
            if running is not None:  # same process: wake as soon as it finishes
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(running.wait(), 1.0)
            else:  # another process holds it: poll
                await asyncio.sleep(0.1)
            record = await self._claim(owner, key, fingerprint)
        if record is None:
            # The first request failed and freed the key; we claimed it just now.
            await self.store.idempotency_release(owner, key)
            raise ApiError(
                409, "idempotency_retry", "the first request with this key failed; retry"
            )
        assert record.status_code is not None and record.response is not None
        return Response(
            record.response,
            status_code=record.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
