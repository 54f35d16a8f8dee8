"""The hub's service object: the store, registry, dispatcher and authenticator of one node,
started and stopped together. The HTTP and WebSocket layers only hold a reference to it."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smsgw.app_phones import AppPhones
from smsgw.auth import Authenticator, issue_api_key
from smsgw.clock import utcnow
from smsgw.config import Settings
from smsgw.dispatcher import Dispatcher
from smsgw.extras import need
from smsgw.idempotency import Idempotency
from smsgw.protocol import CloseCode
from smsgw.ratelimit import AuthFailures, Limits
from smsgw.registry import LiveDevice, LocalRegistry, Registry
from smsgw.route_worker import RouteWorker
from smsgw.secretbox import SecretKeyError
from smsgw.session import Session
from smsgw.store import Message, OptOut, Status, Store, create_store
from smsgw.telemetry import HubMetrics
from smsgw.thirdparty_auth import ThirdPartyAuth
from smsgw.wakeup import Waker
from smsgw.webhook_worker import WebhookWorker

if TYPE_CHECKING:
    from smsgw.connection import DeviceConnection

log = logging.getLogger("smsgw")

# Seconds between reloads of the opt-out list on a node of several (a backstop for a
# change broadcast that was lost; changes normally reach every node at once).
OPT_OUT_RELOAD = 60.0

# Seconds ``stop`` may take before the node gives up on a clean stop. A node that never
# exits is worse than one that exits uncleanly: every state change is already durable,
# leases run out and phones reconnect to another node.
STOP_TIMEOUT = 10.0


@dataclass(slots=True)
class Hub:
    settings: Settings
    store: Store
    registry: Registry
    dispatcher: Dispatcher
    auth: Authenticator
    idempotency: Idempotency
    limits: Limits = field(default_factory=Limits)
    # Every open device connection, helloed or not, for the idle watchdog.
    connections: set[DeviceConnection] = field(default_factory=set)
    _watchdog: asyncio.Task[None] | None = None
    # SIGTERM: no new phone sockets, /ready says 503 (drain() below).
    draining: bool = False
    otp_secret: str = ""  # HMAC key for OTP codes, created once and kept in the database
    # The opt-out list, mirrored in memory so a send needs no read. This node is the only
    # writer (API and inbound STOP go through opt_out/opt_in below).
    opted_out: set[str] = field(default_factory=set)
    _opt_out_reload: asyncio.Task[None] | None = None
    _opt_out_changes: int = 0
    _stopping: str = ""  # the part stop() is waiting for, for its timeout's log line
    webhooks: WebhookWorker | None = None  # delivers the event outbox (started with the hub)
    callback_secret: str = ""  # signs requests to per-message callback_url
    # FCM wake-up of offline phones; created from the others in __post_init__.
    waker: Waker = field(init=False)
    # Phones running the stock app (smsgw/app_phones.py), and the hub's key for their
    # receiving URLs and webhook signatures (created once, kept in the database).
    apps: AppPhones = field(init=False)
    app_secret: str = ""
    # Callers of SMSGate's 3rd-party API (smsgw/thirdparty_auth.py).
    thirdparty: ThirdPartyAuth = field(init=False)
    # This node's counters and histograms (smsgw/telemetry.py), in a registry of its own.
    metrics: HubMetrics = field(default_factory=HubMetrics)
    # Set when routes or route-bound messages change: the route worker looks at once.
    route_news: asyncio.Event = field(default_factory=asyncio.Event)
    routes: RouteWorker = field(init=False)  # sends through routes beyond phones

    def __post_init__(self) -> None:
        self.waker = Waker(self.store, self.registry, self.settings)
        self.dispatcher.waker = self.waker
        self.dispatcher.metrics = self.metrics
        self.metrics.watch_store(self.store)
        self.apps = AppPhones(self)
        self.thirdparty = ThirdPartyAuth(self.store, self.auth)
        self.routes = RouteWorker(self.store, self.settings, self.route_news)

    @classmethod
    def build(cls, settings: Settings, store: Store | None = None) -> Hub:
        store = store or create_store(settings)
        registry: Registry = LocalRegistry()
        if settings.redis_url:
            # Several nodes: imported only then, so one node loads nothing of it.
            need("redis", "redis", "SMSGW_REDIS_URL")
            from smsgw.broker.redis import RedisBroker
            from smsgw.cluster import ClusterRegistry

            broker = RedisBroker(
                settings.redis_url, prefix=settings.redis_prefix, node_id=settings.node_id
            )
            registry = ClusterRegistry(broker, settings)
        return cls(
            settings=settings,
            store=store,
            registry=registry,
            dispatcher=Dispatcher(store, registry, settings),
            auth=Authenticator(
                store,
                settings.admin_key,
                AuthFailures(settings.auth_failure_limit, settings.auth_failure_window),
            ),
            idempotency=Idempotency(store),
        )

    async def start(self) -> None:
        try:
            await self.store.open()
        except SecretKeyError as exc:
            # Said plainly before the server's traceback: which setting to fix.
            log.error("not starting: %s", exc)
            raise
        await self.ensure_admin_key()
        self.otp_secret = await self.store.hub_secret("otp", secrets.token_hex(32))
        self.app_secret = await self.store.hub_secret("app", secrets.token_hex(32))
        await self._load_opt_outs()
        self.registry.on_news = self._on_news
        await self.registry.start(self.dispatcher)
        if self.settings.redis_url:
            # Other nodes broadcast their changes; this catches one lost on the way.
            self._opt_out_reload = asyncio.create_task(self._reload_opt_outs())
        await self.dispatcher.start()
        self.callback_secret = self.settings.callback_secret or await self.store.hub_secret(
            "callback", secrets.token_hex(32)
        )
        self.webhooks = WebhookWorker(self.store, self.settings, self.callback_secret)
        await self.webhooks.start()
        await self.routes.start()
        await self.waker.start()
        self._watchdog = asyncio.create_task(self._close_idle(), name="smsgw-idle-watchdog")

    async def _close_idle(self) -> None:
        """Close sockets silent for 2.5 heartbeat intervals. One sweep for all phones is
        far cheaper than a timer per received frame."""
        period = max(0.05, self.settings.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in [c for c in self.connections if c.idle(now)]:
                await conn.close(CloseCode.HEARTBEAT_TIMEOUT, "silent for 2.5 heartbeat intervals")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every part, in order; after ``timeout`` seconds the rest is skipped (and
        logged with what it was waiting for), so a stuck part cannot keep the node up."""
        try:
            async with asyncio.timeout(timeout):
                await self._stop()
        except TimeoutError:
            log.error(
                "stopping the hub took over %g s, at: %s; exiting anyway", timeout, self._stopping
            )

    async def _stop(self) -> None:
        self._stopping = "background tasks"
        for task in (self._watchdog, self._opt_out_reload):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._stopping = "route worker"
        await self.routes.stop()
        self._stopping = "dispatcher"
        await self.dispatcher.stop()
        self._stopping = "wake-ups"
        await self.waker.stop()
        self._stopping = "phone sockets"
        for live in list(self.registry.local()):
            await live.session.close(CloseCode.GOING_AWAY, "hub shutting down")
        if self.webhooks is not None:
            self._stopping = "webhook worker"
            await self.webhooks.stop()
        self._stopping = "store"
        await self.store.close()
        self._stopping = "registry"
        await self.registry.stop()

    async def drain(self, rng: random.Random | None = None) -> None:
        """Graceful shutdown of this node before the server stops (SIGTERM): refuse new
        phone sockets, route no new offers to this node's phones, let their offers and
        owned messages finish for up to ``drain_timeout`` seconds, then close each phone
        with 4005 and a random delay (up to ``drain_spread`` s) after which it reconnects,
        through the load balancer, to another node. Offers still unanswered then fail
        over (the dispatcher releases them to PENDING); messages a phone owns stay its
        own and are reported to whichever node it reaches next."""
        if self.draining:
            return
        self.draining = True
        rng = rng or random.Random()
        self.registry.start_draining()
        deadline = time.monotonic() + self.settings.drain_timeout
        # Polled: slots free from many places, and this runs once, for a few seconds.
        while time.monotonic() < deadline and any(  # noqa: ASYNC110
            live.holding for live in self.registry.local()
        ):
            await asyncio.sleep(0.05)
        lives = list(self.registry.local())
        log.info("draining: asking %d phone(s) to reconnect elsewhere", len(lives))
        await asyncio.gather(
            *(
                live.session.close(
                    CloseCode.DRAINING,
                    f"draining; reconnect_in={rng.uniform(0, self.settings.drain_spread):.2f}",
                )
                for live in lives
            ),
            return_exceptions=True,
        )

    def routes_changed(self) -> None:
        """A hint for the route worker (docs/routes.md): look now, not at the next poll."""
        self.route_news.set()

    async def ensure_admin_key(self) -> str | None:
        """First start without any admin key: create one and print it, once."""
        if self.settings.admin_key or await self.store.has_admin_key():
            return None
        secret, _ = await issue_api_key(self.store, "initial admin", frozenset({"admin"}), utcnow())
        banner = (
            "\n  No admin key existed, so one was created. It is shown only this once:\n"
            f"\n      {secret}\n\n  Keep it safe; create scoped keys with it (smsgw keys create).\n"
        )
        print(banner, flush=True)
        return secret

    async def _load_opt_outs(self) -> None:
        changes = self._opt_out_changes
        numbers: set[str] = set()
        after: str | None = None
        while page := await self.store.list_opt_outs(after=after, limit=10_000):
            numbers.update(o.number for o in page)
            after = page[-1].number
        # A change that arrived while the pages were read may be missing from them: keep
        # the mirror as it is, the next reload will agree with the database.
        if changes == self._opt_out_changes:
            self.opted_out = numbers

    async def _reload_opt_outs(self) -> None:
        while True:
            await asyncio.sleep(OPT_OUT_RELOAD)
            try:
                await self._load_opt_outs()
            except Exception:
                log.warning("reloading the opt-out list failed", exc_info=True)

    async def opt_out(self, entry: OptOut) -> bool:
        created = await self.store.add_opt_out(entry)
        await self._announce({"what": "opt_out", "number": entry.number, "opted_out": True})
        return created

    async def opt_in(self, number: str) -> bool:
        removed = await self.store.remove_opt_out(number)
        await self._announce({"what": "opt_out", "number": number, "opted_out": False})
        return removed

    async def forget_device_token(self, device_id: str) -> None:
        """The device's token was rotated or revoked: no node may keep accepting it."""
        await self._announce({"what": "device_token", "device_id": device_id})

    async def forget_api_key(self, key_id: str) -> None:
        await self._announce({"what": "api_key", "key_id": key_id})

    async def _announce(self, news: dict[str, Any]) -> None:
        """Apply a change to this node's memory, then tell the other nodes (if any)."""
        self._on_news(news)
        await self.registry.tell_nodes(news)

    def _on_news(self, news: dict[str, Any]) -> None:
        what = news.get("what")
        if what == "opt_out":
            self._opt_out_mirror(str(news["number"]), bool(news["opted_out"]))
        elif what == "device_token":
            self.auth.forget_device(str(news["device_id"]))
        elif what == "api_key":
            self.auth.forget(str(news["key_id"]))
        elif what == "inbox_export":
            self.apps.request_export(news.get("device_id"), dict(news["request"]))

    def _opt_out_mirror(self, number: str, opted_out: bool) -> None:
        self._opt_out_changes += 1
        if opted_out:
            self.opted_out.add(number)
        else:
            self.opted_out.discard(number)

    async def session_ended(self, session: Session, live: LiveDevice | None) -> bool:
        """A phone's session ended (agent socket or app stream): its offers fail over now.
        True when ``live`` was still the registry's, so the phone is offline now (and
        not when a newer session of it took over meanwhile)."""
        self.dispatcher.session_closed(session)
        return live is not None and await self.registry.detach(live)

    async def cancel_message(self, message_id: str) -> Message | None:
        """Cancel a message no phone owns yet (both APIs): the message as it then stands
        (CANCELLED, or the status that kept it from being cancelled), None if unknown."""
        now = utcnow()
        msg = await self.store.cancel_message(message_id, now)
        if msg is not None and msg.status is Status.CANCELLED:
            if msg.cancelled_at == now:  # this call cancelled it, not an earlier one
                self.metrics.transition(Status.CANCELLED)
            self.dispatcher.cancelled(message_id)
        return msg

    async def revoke_device(self, device_id: str) -> bool:
        if not await self.store.delete_device(device_id, utcnow()):
            return False
        self.metrics.forget_device(device_id)
        await self.forget_device_token(device_id)
        live = self.registry.get(device_id)
        if live is not None:
            await live.session.close(CloseCode.REVOKED, "device removed")
        self.dispatcher.wake(due=True)  # its unfinished messages are PENDING again
        return True
