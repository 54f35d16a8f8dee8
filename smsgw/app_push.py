"""Waking stock-app phones in FCM mode through the app project's public push relay.

The app's FCM token belongs to the app project's Firebase app, so only that project can
push to it; a private server asks its relay (``POST .../upstream/v1/push``, spec §4.4:
``[{"token", "event", "data"}]``, no authentication, 202, at most 5 requests a minute per
client address). Opt-in (``SMSGW_APP_PUSH_RELAY_URL``, off by default): it needs the
internet and trusts the relay's operator with the phones' push tokens and the fact that
work is waiting (never a message's content or number). A hub without it still works: the
app pulls on its own schedule.

``RelayPusher.push`` only queues (it never blocks a dispatch); one task sends whatever
is queued at most once per ``app_push_relay_interval`` seconds, one event per token and
event name however many were asked for, and honours a 429's ``Retry-After``. A failed
round is retried with the next ones; after three failed rounds a token rests for 15
minutes (as the app project's own server does), and every failure is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger("smsgw.app_push")

USER_AGENT = "smsgw (server; python)"
HTTP_TIMEOUT = 10.0
MAX_ROUNDS = 3  # failed rounds before a token rests
REST_SECONDS = 15 * 60.0
BACKOFF_429 = 60.0  # without a Retry-After: the relay's window is a minute
MAX_QUEUED = 10_000


@dataclass(slots=True)
class _Pending:
    event: str
    data: dict[str, str] | None
    rounds: int = 0


class RelayPusher:
    def __init__(
        self, url: str, *, interval: float, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.url = url
        self.interval = interval
        self.pushed = 0  # events the relay accepted
        self._client = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT, headers={"User-Agent": USER_AGENT}, transport=transport
        )
        self._queue: dict[tuple[str, str], _Pending] = {}
        self._resting: dict[str, float] = {}  # token -> monotonic time it may be used again
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="smsgw-app-push")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._client.aclose()

    def push(self, token: str, event: str, data: dict[str, str] | None = None) -> None:
        """Ask for ``event`` to reach the phone with ``token``; returns at once."""
        if self._resting.get(token, 0.0) > time.monotonic():
            return
        key = (token, event)
        if key not in self._queue and len(self._queue) >= MAX_QUEUED:
            log.warning("push relay queue full: an event for a phone was dropped")
            return
        self._queue.setdefault(key, _Pending(event, data))
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pause = self.interval
            try:
                pause = max(pause, await self._round())
            except asyncio.CancelledError:
                raise
            except Exception:  # the next round tries again
                log.exception("push relay round failed")
            await asyncio.sleep(pause)
            if self._queue:
                self._wake.set()

    async def _round(self) -> float:
        """Send what is queued; returns how long to wait before the next round."""
        batch, self._queue = self._queue, {}
        if not batch:
            return 0.0
        items = [
            {"token": token, "event": p.event, "data": p.data} for (token, _), p in batch.items()
        ]
        try:
            r = await self._client.post(self.url, json=items)
        except httpx.HTTPError as exc:
            log.warning("push relay %s unreachable: %s", self.url, exc)
            self._failed(batch)
            return 0.0
        if r.status_code == 429:
            wait = _retry_after(r.headers.get("Retry-After")) or BACKOFF_429
            log.warning("push relay rate-limited this hub: next try in %.0f s", wait)
            self._requeue(batch, count=False)
            return wait
        if r.status_code >= 300:
            log.warning("push relay answered %d: %s", r.status_code, r.text[:200])
            self._failed(batch)
            return 0.0
        self.pushed += len(items)
        return 0.0

    def _requeue(self, batch: dict[tuple[str, str], _Pending], *, count: bool) -> None:
        for key, pending in batch.items():
            if count:
                pending.rounds += 1
                if pending.rounds >= MAX_ROUNDS:
                    self._resting[key[0]] = time.monotonic() + REST_SECONDS
                    log.warning(
                        "push relay: %s for a phone failed %d times; its token rests %d min",
                        pending.event,
                        pending.rounds,
                        REST_SECONDS // 60,
                    )
                    continue
            self._queue.setdefault(key, pending)

    def _failed(self, batch: dict[tuple[str, str], _Pending]) -> None:
        self._requeue(batch, count=True)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
