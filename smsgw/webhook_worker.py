"""Delivers the event outbox: signed POSTs with retries, dead letters and auto-disable.

The stores write each event and its deliveries in the transaction that changed the state;
this worker only reads what is due and reports each attempt back. Semantics are
at-least-once with a stable event id: a hub killed after the receiver answered but before
the attempt was recorded sends the same event (same ``id``) again once the claim's lease
runs out. Receivers drop duplicates by ``id``.

Claims are leases in the database, so several hub nodes can run workers on one database
without sending a delivery twice while its lease holds.

A webhook registered through SMSGate's API (``format == "smsgate"``) gets the same
deliveries in SMSGate's envelope, signed as the app signs (``smsgw/thirdparty.py``) with
that API's ``webhooks.signing_key``: receivers written for SMSGate verify them unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from datetime import datetime, timedelta

import httpx

from smsgw.clock import utcnow
from smsgw.config import Settings
from smsgw.signature import HEADER, signature_header
from smsgw.store import Delivery, DeliveryAttempt, DeliveryStatus, Store, Webhook
from smsgw.thirdparty import SETTINGS, default_settings, envelope, signed_headers

log = logging.getLogger("smsgw.webhooks")

CLAIM_BATCH = 64
MAX_IN_FLIGHT = 256  # deliveries in hand at once, across all endpoints
PER_ENDPOINT_QUEUE = 2  # deliveries in hand per endpoint, in units of its concurrency
USER_AGENT = "smsgw-webhooks/1"
SMSGATE = "smsgate"  # a webhook of SMSGate's API (smsgw/api/thirdparty.py)


def retry_delay(schedule: list[float], attempts: int) -> float | None:
    """Seconds before the next attempt after ``attempts`` failed ones (None: no more).
    Jittered ±20% so endpoints that fail together do not get retried in lockstep."""
    if attempts > len(schedule):
        return None
    return schedule[attempts - 1] * random.uniform(0.8, 1.2)


def signing_secrets(hook: Webhook | None, callback_secret: str, now: datetime) -> list[str]:
    if hook is None:
        return [callback_secret]
    found = [hook.secret]
    if (
        hook.previous_secret
        and hook.previous_secret_until is not None
        and hook.previous_secret_until > now
    ):
        found.append(hook.previous_secret)
    return found


class WebhookWorker:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        callback_secret: str,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.callback_secret = callback_secret
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._handling: set[str] = set()  # delivery ids in hand
        self._queued: Counter[str] = Counter()  # deliveries in hand per endpoint URL
        self._limits: dict[str, asyncio.Semaphore] = {}  # per endpoint (url)
        self._wake = asyncio.Event()
        self._next_purge = 0.0
        self._signing_key: str | None = None  # SMSGate's webhooks.signing_key, this round

    @property
    def max_attempts(self) -> int:
        return len(self.settings.webhook_retry_schedule) + 1

    async def start(self) -> None:
        self._client = httpx.AsyncClient(
            transport=self._transport,
            follow_redirects=False,  # a redirect is an answer, not a success
            timeout=self.settings.webhook_timeout,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )
        self.store.on_events = self.wake
        self._task = asyncio.create_task(self._loop(), name="smsgw-webhooks")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def wake(self) -> None:
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.webhook_poll_interval)
            self._wake.clear()
            try:
                while await self.run_once() >= CLAIM_BATCH:
                    pass  # a full batch: more may be waiting
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook round failed")

    async def run_once(self) -> int:
        """Claim what is due and start delivering it; returns how many were claimed."""
        now = utcnow()
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + 3600
            purged = await self.store.purge_deliveries(
                now - timedelta(seconds=self.settings.webhook_retention)
            )
            if purged:
                log.info("forgot %d finished webhook deliveries", purged)
        room = MAX_IN_FLIGHT - len(self._inflight)
        if room <= 0:
            return 0
        # The lease is what a crash costs: the deliveries it held wait this long before
        # any worker takes them again. A delivery still queued behind its endpoint's
        # limit when the lease ends may be taken by another node and sent twice (same
        # event id); in this process, ids already in hand are skipped.
        lease_until = now + timedelta(seconds=3 * self.settings.webhook_timeout + 5)
        claimed = await self.store.claim_deliveries(now, lease_until, min(CLAIM_BATCH, room))
        if not claimed:
            return 0
        hooks = {h.id: h for h in await self.store.list_webhooks()}
        self._signing_key = None
        if any(hooks[d.webhook_id].format == SMSGATE for d in claimed if d.webhook_id in hooks):
            # Read each round: another node may have changed it through /settings.
            doc = await self.store.hub_setting(SETTINGS, default_settings(), now)
            self._signing_key = doc["webhooks"]["signing_key"]
        for d in claimed:
            hook = hooks.get(d.webhook_id) if d.webhook_id else None
            if d.webhook_id is not None and hook is None:
                continue  # deleted meanwhile (its deliveries went with it)
            if d.id in self._handling:
                continue
            if self._queued[d.url] >= PER_ENDPOINT_QUEUE * self.settings.webhook_concurrency:
                # A slow or dead endpoint must not take every place: this one waits out
                # its lease and is claimed again later.
                continue
            self._handling.add(d.id)
            self._queued[d.url] += 1
            task = asyncio.create_task(self._deliver(d, hook, lease_until))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed)

    async def _deliver(self, d: Delivery, hook: Webhook | None, lease: datetime) -> None:
        try:
            await self._deliver_once(d, hook, lease)
        finally:
            self._handling.discard(d.id)
            self._queued[d.url] -= 1
            if self._queued[d.url] <= 0:
                del self._queued[d.url]

    async def _deliver_once(self, d: Delivery, hook: Webhook | None, lease: datetime) -> None:
        limit = self._limits.setdefault(d.url, asyncio.Semaphore(self.settings.webhook_concurrency))
        async with limit:
            attempt = await self._post(d, hook)
        delay = (
            None
            if attempt.error is None
            else retry_delay(self.settings.webhook_retry_schedule, d.attempts + 1)
        )
        result = await self.store.finish_delivery(
            d.id,
            attempt,
            succeeded=attempt.error is None,
            retry_at=attempt.at + timedelta(seconds=delay) if delay is not None else None,
            default_max_attempts=self.max_attempts,
            disable_after=self.settings.webhook_disable_after,
            lease=lease,
        )
        if result is None:
            return
        status, disabled = result
        if status is DeliveryStatus.DEAD:
            log.warning(
                "webhook delivery %s (%s to %s) is dead after %d attempts: %s",
                d.id, d.event_type, d.url, attempt.attempt, attempt.error,
            )  # fmt: skip
        if disabled:
            log.warning(
                "webhook %s (%s) disabled: it has failed for %.0f s",
                d.webhook_id, d.url, self.settings.webhook_disable_after,
            )  # fmt: skip

    def _request(self, d: Delivery, hook: Webhook | None) -> tuple[bytes, dict[str, str]]:
        """The body and signature headers of one attempt, in the webhook's format."""
        if hook is not None and hook.format == SMSGATE:
            assert self._signing_key is not None  # read in this round (run_once)
            body = envelope(hook, d.event_type, d.payload, d.id)
            return body, signed_headers(self._signing_key, body, time.time())
        body = d.payload.encode()
        secrets = signing_secrets(hook, self.callback_secret, utcnow())
        return body, {HEADER: signature_header(secrets, int(time.time()), body)}

    async def _post(self, d: Delivery, hook: Webhook | None) -> DeliveryAttempt:
        assert self._client is not None
        number = d.attempts + 1
        body, headers = self._request(d, hook)
        headers |= {
            "X-Smsgw-Event-Id": d.event_id,
            "X-Smsgw-Event-Type": d.event_type,
            "X-Smsgw-Delivery-Id": d.id,
            "X-Smsgw-Attempt": str(number),
        }
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            # httpx's timeout is per phase; this bounds the whole exchange (a receiver
            # that trickles bytes must not hold a slot forever).
            async with asyncio.timeout(self.settings.webhook_timeout):
                response = await self._client.post(d.url, content=body, headers=headers)
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"HTTP {status_code}"
        except (TimeoutError, httpx.TimeoutException):
            error = f"timed out after {self.settings.webhook_timeout:g} s"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return DeliveryAttempt(
            attempt=number,
            at=utcnow(),
            status_code=status_code,
            error=error,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
