"""Sends through routes beyond phones (docs/routes.md): the loop that finds what a route
may take, claims it, hands it to the provider and records the answer.

Single owner: every message goes through ``Store.claim_for_route``, a compare-and-set on
the message row (PENDING, no live offer to a phone). Phones' accepts, other nodes' route
workers and this one all race on that row, and the database lets exactly one win; the
claim also fences a phone's late accept of an expired offer (``attempt + 1``).

At most once: the claim is committed before the provider is called. If this node dies
between the two, the message stays QUEUED with its route and no provider id; after
``route_answer_timeout`` it is FAILED ``route_unknown`` (it may have been sent; sending it
again could deliver it twice, which an OTP or an alert must not). A provider's
transient refusal (throttled, down, unreachable) puts it back to PENDING for later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta

from smsgw.clock import utcnow
from smsgw.config import Settings
from smsgw.providers import Accepted, Provider, provider_for
from smsgw.route_policy import Choice, choose, shortest_wait
from smsgw.store import Store
from smsgw.store.records import Message, Route

log = logging.getLogger("smsgw.routes")

BATCH = 64
# A message no wait admits yet: its creation must be before the epoch (only forced ones).
_NEVER = datetime(1970, 1, 1).astimezone()


def hub_base_url(settings: Settings) -> str:
    """The hub's address as providers reach it (SMSGW_PUBLIC_URL; else host and port)."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def route_callback_url(settings: Settings, route_id: str) -> str:
    return f"{hub_base_url(settings)}/routes/{route_id}/callback"


class RouteWorker:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        news: asyncio.Event,
        providers: dict[str, Provider] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.news = news
        self._providers = providers or {}
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def provider(self, kind: str) -> Provider | None:
        if kind not in self._providers:
            found = provider_for(kind)
            if found is None:
                return None
            self._providers[kind] = found
        return self._providers[kind]

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="smsgw-routes")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.news.wait(), self.settings.route_poll_interval)
            self.news.clear()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # the loop must outlive a database hiccup
                log.exception("route worker round failed")

    async def run_once(self, now: datetime | None = None) -> int:
        """One round: fail unanswered claims, then claim and send what is due. Returns
        how many messages were handed to providers."""
        now = now or utcnow()
        timeout = timedelta(seconds=self.settings.route_answer_timeout)
        for message_id in await self.store.fail_unanswered_route_sends(now, now - timeout):
            log.warning("message %s: no provider answer recorded, FAILED route_unknown", message_id)
        routes = [r for r in await self.store.list_routes() if r.enabled and self.provider(r.kind)]
        if not routes:
            return 0
        wait = shortest_wait(routes)
        created_before = now - timedelta(seconds=wait) if wait is not None else _NEVER
        due = await self.store.due_for_routes(now, created_before, BATCH)
        if not due:
            return 0
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        spent = {
            r.id: await self.store.route_cost_since(r.id, day)
            for r in routes
            if r.policy.get("max_cost_per_day") is not None
        }
        sent = 0
        for msg in due:
            choice = choose(routes, msg, now, spent)
            if choice is None:
                continue
            if not await self.store.claim_for_route(msg.id, choice.route.id, now):
                continue  # a phone (or another node) has it: the database decided
            if choice.route.id in spent:
                spent[choice.route.id] += choice.cost
            task = asyncio.create_task(self._send(msg, choice))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            sent += 1
        return sent

    async def _send(self, msg: Message, choice: Choice) -> None:
        route: Route = choice.route
        provider = self.provider(route.kind)
        assert provider is not None  # routes without an adapter were left out
        try:
            answer = await provider.send(msg, route, route_callback_url(self.settings, route.id))
        except Exception as exc:  # an adapter's bug or an SDK's surprise: maybe sent
            log.exception("route %s: sending message %s failed", route.name, msg.id)
            await self.store.route_refused(
                msg.id,
                route.id,
                utcnow(),
                error_code="route_unknown",
                error=f"{type(exc).__name__}: {exc}"[:500],
                retry_at=None,
            )
            return
        now = utcnow()
        if isinstance(answer, Accepted):
            await self.store.route_accepted(
                msg.id,
                route.id,
                answer.route_message_id,
                now,
                sent=answer.sent,
                cost=answer.cost if answer.cost is not None else choice.cost or None,
                currency=answer.currency or route.currency,
            )
            return
        retry_at = (
            now + timedelta(seconds=self.settings.route_retry_delay) if answer.retryable else None
        )
        log.info(
            "route %s refused message %s: %s %s",
            route.name,
            msg.id,
            answer.error_code,
            answer.error,
        )
        await self.store.route_refused(
            msg.id,
            route.id,
            now,
            error_code=answer.error_code,
            error=answer.error,
            retry_at=retry_at,
        )
