"""Waking offline phones with Firebase Cloud Messaging (FCM).

Android dozes: a phone's socket drops and its agent may not get to run again until
something wakes it. A phone that registered an FCM token can be woken with a data-only,
high-priority FCM message ``{"type": "wake"}``; the app's answer is to reconnect its socket
and drain its queue. FCM carries no message content: the live socket stays the only
channel for commands.

Three parts, one concept:

- ``whom_to_wake``: the pure decision. Given the due messages no online phone can take and
  the offline phones with tokens, which phones to wake: the phone a message is pinned to,
  and for the others the phones a dispatch would pick if they were online (the routing
  preference), enough for the backlog (``ceil(waiting / max_in_flight)``, at least one
  when nobody online can take anything). Unit-tested without FCM.
- ``FcmClient``: firebase-admin's ``messaging.send``. It is synchronous (requests, with
  its own retries of 500/503 that sleep), so it runs on a small thread pool of its own and
  the event loop never waits for Google.
- ``Waker``: the dispatcher pokes it when work is waiting that nobody online can take; it
  decides, sends at most one wake per phone per ``SMSGW_FCM_WAKE_INTERVAL`` seconds,
  retries transient FCM errors with exponential backoff and jitter (bounded), and drops a
  token FCM calls unregistered or invalid from the device.

Without ``SMSGW_FIREBASE_CREDENTIALS`` the Waker is off (every poke is a no-op) and the
hub says so once at start.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import random
import time
import warnings
from collections.abc import Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from smsgw.app_push import RelayPusher
from smsgw.appwire import PushEvent
from smsgw.clock import today, utcnow
from smsgw.config import Settings
from smsgw.extras import need
from smsgw.registry import Registry
from smsgw.routing import Candidate, eligible, rank, spent
from smsgw.store import Device, Message, Store

log = logging.getLogger("smsgw.wakeup")

# The whole payload. Data-only (no ``notification``): the app handles it silently, and
# nothing about any message leaves the hub through Google.
WAKE_DATA: Mapping[str, str] = {"type": "wake"}
MESSAGE_ENQUEUED = PushEvent.MESSAGE_ENQUEUED.value  # what wakes the stock app (spec §4.3)
COLLAPSE_KEY = "smsgw-wake"  # several undelivered wakes reach the phone as one

# Seconds a pool thread may wait for one HTTP answer (firebase-admin's default is 120).
HTTP_TIMEOUT = 10.0
# Most checks per second: a busy outbox pokes on every round, one check covers them all.
CHECK_GAP = 0.5
# Most due messages read per check (the decision only needs to know "how many phones").
BACKLOG_LIMIT = 10_000

_app_names = itertools.count(1)


# -- the decision (pure) -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiting:
    """A due message no online phone can take: pinned to one phone, or for any phone
    (``affinity``: the phone that last sent to its recipient, routing's first choice)."""

    pinned: str | None = None
    affinity: str | None = None

    @classmethod
    def of(cls, msg: Message) -> Waiting:
        return cls(msg.pinned_device_id, msg.last_device)


@dataclass(frozen=True, slots=True)
class Sleeper:
    """An offline phone with an FCM token, seen as routing would see it were it online.
    ``app``: the stock app, woken through its project's push relay (smsgw/app_push.py);
    woken, it pulls without opening a stream, so it takes only messages pinned to it."""

    device_id: str
    token: str
    candidate: Candidate
    app: bool = False

    @classmethod
    def of(cls, device: Device, *, default_quota: int, max_in_flight: int) -> Sleeper | None:
        if not device.fcm_token:
            return None
        return cls(
            device_id=device.id,
            token=device.fcm_token,
            app=device.kind == "app",
            candidate=Candidate(
                device_id=device.id,
                enabled=device.enabled,
                connected=True,  # the question is "would a dispatch pick it if it were online"
                in_flight=0,
                max_in_flight=max_in_flight,
                sent_today=device.sent_today if device.sent_day == today() else 0,
                daily_quota=(
                    device.daily_quota if device.daily_quota is not None else default_quota
                ),
                signal=device.signal if device.signal is not None else 0,
                battery=device.battery if device.battery is not None else 0,
                charging=bool(device.charging),
                last_used=0.0,
            ),
        )


def whom_to_wake(
    waiting: Sequence[Waiting],
    sleepers: Sequence[Sleeper],
    *,
    max_in_flight: int,
    online_usable: int = 0,
    cooling: Collection[str] = frozenset(),
    unanswered: Mapping[str, int] | None = None,
) -> list[Sleeper]:
    """The phones to wake now, best first.

    ``waiting``: due messages no online phone can take. ``sleepers``: offline phones with a
    token. ``online_usable``: online phones that could take messages once they free a slot
    (enabled, quota left); they count as capacity. ``cooling``: phones woken less than the
    wake interval ago (or being woken): never woken again now, but counted as coming, so
    another phone is not woken in their place. ``unanswered``: wakes each phone got without
    coming online since; a phone that ignores its wakes sorts after the others, so a dead
    phone with a valid token cannot keep the backlog from reaching a live one.
    """
    unanswered = unanswered or {}
    usable = {s.device_id: s for s in sleepers if eligible(s.candidate)}
    chosen: dict[str, Sleeper] = {}

    # A message pinned to a phone can only go through that phone.
    for w in waiting:
        if w.pinned is not None:
            s = usable.get(w.pinned)
            if s is not None and s.device_id not in cooling:
                chosen.setdefault(s.device_id, s)

    free = sum(1 for w in waiting if w.pinned is None)
    if free == 0:
        return list(chosen.values())
    usable = {d: s for d, s in usable.items() if not s.app}  # routed work needs a live session
    needed = math.ceil(free / max_in_flight) - online_usable
    if online_usable == 0:
        needed = max(needed, 1)
    # Phones already coming (woken recently, or just chosen for a pinned message) will take
    # their share of the backlog too.
    needed -= sum(1 for d in usable if d in cooling or d in chosen)
    if needed <= 0:
        return list(chosen.values())

    # Routing's order: each message's affinity phone first, then the routing preference
    # (signal, power, ...), with phones that ignored their last wakes last.
    order: list[Sleeper] = []
    seen: set[str] = set()
    for w in waiting:
        if w.pinned is None and w.affinity in usable and w.affinity not in seen:
            seen.add(w.affinity)
            order.append(usable[w.affinity])
    ranked = rank((s.candidate for s in usable.values()), exclude=seen)
    order.extend(usable[c.device_id] for c in ranked)
    order.sort(key=lambda s: unanswered.get(s.device_id, 0))  # stable: keeps routing's order
    for s in order:
        if needed <= 0:
            break
        if s.device_id in cooling or s.device_id in chosen:
            continue
        chosen[s.device_id] = s
        needed -= 1
    return list(chosen.values())


class Verdict(enum.Enum):
    DROP_TOKEN = "drop_token"  # the token is dead: forget it
    RETRY = "retry"  # transient: try again later
    GIVE_UP = "give_up"  # a configuration problem: retrying cannot help


def classify(exc: BaseException) -> Verdict:
    """What an error from ``messaging.send`` means for the wake and the token."""
    from firebase_admin import exceptions as fx
    from firebase_admin import messaging
    from google.auth import exceptions as gx

    # UNREGISTERED (404: the app was uninstalled or the token expired), SENDER_ID_MISMATCH
    # (403: the token belongs to another Firebase project) and INVALID_ARGUMENT (400: our
    # message is fixed and valid, so the argument at fault is the token) all mean that this
    # token will never work again.
    if isinstance(
        exc, messaging.UnregisteredError | messaging.SenderIdMismatchError | fx.InvalidArgumentError
    ):
        return Verdict.DROP_TOKEN
    if isinstance(
        exc,
        fx.UnavailableError  # 503, connection refused or reset
        | fx.InternalError  # 500
        | fx.DeadlineExceededError  # HTTP timeout
        | fx.ResourceExhaustedError  # 429 QUOTA_EXCEEDED (honours Retry-After)
        | fx.AbortedError
        | fx.UnknownError,  # other 5xx
    ):
        return Verdict.RETRY
    if isinstance(exc, gx.TransportError):  # the OAuth token endpoint was unreachable
        return Verdict.RETRY
    if isinstance(exc, gx.RefreshError):
        return Verdict.RETRY if getattr(exc, "retryable", False) else Verdict.GIVE_UP
    return Verdict.GIVE_UP  # 401/403 from FCM, a bad service account, a bug


def retry_after(exc: BaseException) -> float | None:
    """The ``Retry-After`` seconds FCM sent with a 429/503, if any."""
    response = getattr(exc, "http_response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from FCM; the backoff applies


def backoff_delay(attempt: int, base: float, maximum: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random. The random half
    spreads a hub's retries; the fixed half guarantees FCM a real pause."""
    ceiling = min(maximum, math.ldexp(base, min(attempt - 1, 60)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


# -- firebase-admin, off the event loop -------------------------------------------------


class FcmClient:
    """One firebase-admin app (a named one: several hubs in one process do not clash) and
    the threads its synchronous calls run on."""

    def __init__(self, credentials_path: str, *, ttl_seconds: float, workers: int = 4) -> None:
        need("firebase_admin", "fcm", "SMSGW_FIREBASE_CREDENTIALS")
        import firebase_admin
        from firebase_admin import credentials

        # Reads and checks the service-account file: raises on a missing or invalid one.
        cred = credentials.Certificate(credentials_path)
        self.project_id: str = cred.project_id
        self._app: Any = firebase_admin.initialize_app(
            cred,
            options={"httpTimeout": HTTP_TIMEOUT},
            name=f"smsgw-wakeup-{next(_app_names)}",
        )
        self._ttl = timedelta(seconds=ttl_seconds)
        # firebase-admin 7.x deprecates ``Message.token`` in favour of installation ids
        # (``fid``), but what an app gets from FirebaseMessaging.getToken() and registers
        # here is a registration token, which the v1 API's ``token`` field still takes.
        warnings.filterwarnings(
            "ignore", message="Message.token is deprecated", category=DeprecationWarning
        )
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="smsgw-fcm")

    async def send_wake(self, token: str) -> str:
        """Send the wake to ``token``; returns FCM's message name, raises its errors."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._send, token)

    def _send(self, token: str) -> str:
        from firebase_admin import messaging

        message = messaging.Message(
            data=dict(WAKE_DATA),
            token=token,
            # High priority: a normal-priority message waits for the next maintenance
            # window in Doze, which is the very thing to get around. The TTL lets FCM drop a
            # wake that could not be delivered before the next one may be sent.
            android=messaging.AndroidConfig(
                priority="high", ttl=self._ttl, collapse_key=COLLAPSE_KEY
            ),
        )
        return str(messaging.send(message, app=self._app))

    async def close(self) -> None:
        import firebase_admin

        # A send in progress finishes in its thread (at most HTTP_TIMEOUT and
        # firebase-admin's own retries); nobody waits for it.
        self._pool.shutdown(wait=False, cancel_futures=True)
        # delete_app closes the messaging service, whose close() calls asyncio.run() for its
        # httpx client: that cannot run on the event loop's thread.
        await asyncio.to_thread(firebase_admin.delete_app, self._app)


# -- the Waker ----------------------------------------------------------------------------


class Waker:
    """Wakes offline phones with FCM when work waits for them (see the module docstring).

    ``poke`` is cheap and synchronous, so the dispatcher can call it from its hot paths;
    everything else happens in the Waker's own task.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self.fcm: FcmClient | None = None
        self.relay: RelayPusher | None = None  # app phones (smsgw/app_push.py)
        # Retries of one wake: attempts, and the backoff's base and cap in seconds.
        self.max_attempts = 5
        self.retry_base = 1.0
        self.retry_max = 60.0
        self.wakes_sent = 0
        self._rng = rng or random.Random()
        self._poked = asyncio.Event()
        self._known: dict[str, Waiting] = {}  # messages the dispatcher named since the check
        self._woken_at: dict[str, float] = {}  # device -> monotonic time of its last wake
        self._unanswered: dict[str, int] = {}  # device -> wakes sent while it stayed offline
        self._sending: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.fcm is not None or self.relay is not None

    @property
    def interval(self) -> float:
        return self.settings.fcm_wake_interval

    async def start(self) -> None:
        relay_url = self.settings.app_push_relay_url
        if relay_url:
            self.relay = RelayPusher(relay_url, interval=self.settings.app_push_relay_interval)
            self.relay.start()
            log.info("app phones in FCM mode are woken through the push relay %s", relay_url)
        await self._start_fcm()
        if self.enabled:
            self._task = asyncio.create_task(self._loop(), name="smsgw-wakeup")

    async def _start_fcm(self) -> None:
        path = self.settings.firebase_credentials
        if not path:
            log.info(
                "FCM wake-up is off: SMSGW_FIREBASE_CREDENTIALS is not set, "
                "so phones that drop off are not woken"
            )
            return
        try:
            # Reading the file and building the app touches the disk: off the loop too.
            self.fcm = await asyncio.to_thread(FcmClient, path, ttl_seconds=self.interval)
        except Exception as exc:
            log.error("FCM wake-up is off: cannot use the service account %s: %s", path, exc)
            return
        log.info(
            "FCM wake-up is on (project %s, at most one wake per phone every %gs)",
            self.fcm.project_id,
            self.interval,
        )

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._sending.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        if self.fcm is not None:
            await self.fcm.close()
            self.fcm = None
        if self.relay is not None:
            await self.relay.close()
            self.relay = None

    def poke(self, messages: Iterable[Message] = ()) -> None:
        """Work is waiting that no online phone can take (``messages``, when the caller
        knows which; the Waker also reads the due messages itself)."""
        if not self.enabled:
            return
        for msg in messages:
            if len(self._known) < BACKLOG_LIMIT:
                self._known[msg.id] = Waiting.of(msg)
        self._poked.set()

    # -- the loop ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            await self._poked.wait()
            self._poked.clear()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database hiccup must not end wake-ups: the next poke tries again.
                log.exception("wake-up check failed")
            await asyncio.sleep(CHECK_GAP)

    async def check(self) -> list[str]:
        """Decide and start the wakes; returns the device ids being woken."""
        if not self.enabled:
            return []
        now = time.monotonic()
        known, self._known = self._known, {}
        settings = self.settings
        self._woken_at = {d: t for d, t in self._woken_at.items() if now - t < self.interval}
        # The outbox pokes on every round while no phone has a free slot, work or not: one
        # cheap probe first, the device list only when something is due.
        if not known and not await self.store.due_messages(utcnow(), 1):
            return []
        sleepers: list[Sleeper] = []
        # Read afresh each time (no cache): a phone that just went offline or a token just
        # set must count now, not a few seconds later.
        for device in await self.store.list_devices():
            if self.registry.get(device.id) is not None:
                self._unanswered.pop(device.id, None)  # it came back: it answers wakes
                continue
            s = Sleeper.of(
                device,
                default_quota=settings.default_daily_quota,
                max_in_flight=settings.max_in_flight,
            )
            # Each kind of phone is woken through its own channel, if the hub has it.
            if s is not None and (self.relay if s.app else self.fcm) is not None:
                sleepers.append(s)
        if not sleepers:
            return []
        online_usable = sum(1 for live in self.registry.all() if not spent(live))
        # Enough to decide how many phones the backlog needs, never the whole outbox.
        limit = min(BACKLOG_LIMIT, settings.max_in_flight * (len(sleepers) + online_usable) + 1)
        waiting = dict(known)
        for msg in await self.store.due_messages(utcnow(), limit):
            waiting.setdefault(msg.id, Waiting.of(msg))
        # A message pinned to an online phone is that phone's to take, not a reason to wake.
        stranded = [
            w for w in waiting.values() if w.pinned is None or self.registry.get(w.pinned) is None
        ]
        if not stranded:
            return []
        chosen = whom_to_wake(
            stranded,
            sleepers,
            max_in_flight=settings.max_in_flight,
            online_usable=online_usable,
            cooling=self._woken_at.keys() | self._sending.keys(),
            unanswered=self._unanswered,
        )
        for s in chosen:
            self._start_wake(s)
        return [s.device_id for s in chosen]

    def _start_wake(self, sleeper: Sleeper) -> None:
        # The interval counts from the decision, so retries of one wake are not new wakes.
        self._woken_at[sleeper.device_id] = time.monotonic()
        if sleeper.app and self.relay is not None:
            # The relay queues, coalesces and retries on its own: nothing to wait for.
            self.relay.push(sleeper.token, MESSAGE_ENQUEUED)
            self.wakes_sent += 1
            return
        task = asyncio.create_task(
            self._wake(sleeper.device_id, sleeper.token), name=f"smsgw-wake-{sleeper.device_id}"
        )
        self._sending[sleeper.device_id] = task
        task.add_done_callback(lambda _t: self._sending.pop(sleeper.device_id, None))

    async def _wake(self, device_id: str, token: str) -> None:
        fcm = self.fcm
        if fcm is None:
            return
        for attempt in range(1, self.max_attempts + 1):
            try:
                name = await fcm.send_wake(token)
            except Exception as exc:
                verdict = classify(exc)
                if verdict is Verdict.DROP_TOKEN:
                    await self._drop_token(device_id, token, exc)
                    return
                if verdict is Verdict.GIVE_UP or attempt == self.max_attempts:
                    log.warning(
                        "device %s: FCM wake failed after %d attempt(s): %s: %s",
                        device_id,
                        attempt,
                        type(exc).__name__,
                        exc,
                    )
                    return
                delay = backoff_delay(attempt, self.retry_base, self.retry_max, self._rng)
                delay = min(self.retry_max, max(delay, retry_after(exc) or 0.0))
                log.info(
                    "device %s: FCM wake failed (%s), retrying in %.1fs",
                    device_id,
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            self.wakes_sent += 1
            self._unanswered[device_id] = self._unanswered.get(device_id, 0) + 1
            log.info("device %s: FCM wake sent (%s)", device_id, name)
            return

    async def _drop_token(self, device_id: str, token: str, exc: BaseException) -> None:
        device = await self.store.get_device(device_id)
        if device is None or device.fcm_token != token:
            return  # removed, or the phone registered a new token meanwhile: keep that one
        await self.store.update_device(device_id, utcnow(), fcm_token=None)
        self._unanswered.pop(device_id, None)
        log.warning(
            "device %s: FCM rejected its token (%s: %s); dropped it. The phone registers a "
            "new one when it reconnects (hello.fcm_token or PATCH /devices/{id})",
            device_id,
            type(exc).__name__,
            exc,
        )
