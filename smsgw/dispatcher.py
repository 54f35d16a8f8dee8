"""Getting messages out: offers to phones, failover, and the durable outbox loop.

A message is offered to one phone at a time (``Store.offer``, a compare-and-set that bumps
the message's attempt number). The phone has ``accept_timeout`` seconds to accept; if it
does not, refuses retryably, or disconnects first, the offer is released and the next
phone is tried. Ownership is decided by the database (``Store.accept``), never by this
process, so a late ``accepted`` from a phone we gave up on loses the race and is told so.

``dispatch`` is the synchronous path of ``POST /sms/dispatch``; the outbox loop offers
every other PENDING message (and whatever a synchronous dispatch left behind) whenever a
phone connects, frees a slot or a retry time comes up, and at least every
``outbox_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from smsgw.affinity import AffinityCache
from smsgw.clock import utcnow
from smsgw.config import Settings
from smsgw.idempotency import KEEP_SECONDS as IDEMPOTENCY_KEEP
from smsgw.registry import LiveDevice, Registry
from smsgw.routing import APP, eligible, free_slots, spent
from smsgw.session import Session, SessionClosed
from smsgw.store import FINAL_STATUSES, Message, Status, Store
from smsgw.telemetry import HubMetrics
from smsgw.wakeup import Waker

log = logging.getLogger("smsgw.dispatch")

# Seconds another node's phone that answered "busy" is left out of routing here.
BUSY_BACKOFF = 2.0

# Messages one outbox round takes at most. The round counts free slots only up to this,
# so a node holding 10,000 phones does not walk every one of them on each wake-up (a
# reconnect storm wakes it thousands of times); a full round asks for another at once.
ROUND_LIMIT = 500

# Accepted messages whose SENT report this node waits for, to time their dispatch, at
# most: a report that never comes here (the phone took it to another node) leaves an
# entry, and the oldest go first.
SINCE_LIMIT = 100_000

T = TypeVar("T")


class Outcome(enum.Enum):
    ACCEPTED = "accepted"
    DECLINED = "declined"  # the phone refused the offer with a failure report
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    LOST = "lost"  # someone else changed the message first; nothing was offered
    BUSY = "busy"  # another node's phone was full there: not the message's fault


@dataclass(frozen=True, slots=True)
class Change:
    """What a report or the outbox did to a message, for coroutines waiting on it."""

    status: Status
    device_id: str | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass(slots=True)
class _Offer:
    device_id: str
    attempt: int
    future: asyncio.Future[Outcome]
    session: Session  # the connection the command went down


@dataclass(slots=True)
class _Unstored:
    """A new message on its first offer to a phone of this node, not yet in the database.

    It is written once, with the phone's accept (``accept_unstored``), instead of once on
    offer and again on accept; if the offer ends any other way it is written as the PENDING
    offer it would have been (``_settle``), before anything else touches it. Nobody outside
    this process knows its id until then (the caller has had no answer), and a phone that
    was offered it cannot own it without the write, so a hub that dies meanwhile loses
    nothing that was promised (the phone's accept finds no message and is refused)."""

    message: Message
    device_id: str
    lease_until: datetime
    on_stored: Callable[[], None] | None
    # Set while a write of it is under way: everyone else waits for that one.
    storing: asyncio.Future[bool] | None = None


class Dispatcher:
    def __init__(self, store: Store, registry: Registry, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.settings = settings
        self._offers: dict[str, _Offer] = {}
        self._unstored: dict[str, _Unstored] = {}
        self._watchers: dict[str, list[asyncio.Future[Change | None]]] = {}
        # Messages a coroutine of this node is working on; the outbox leaves them alone.
        self._active: set[str] = set()
        # Phones that already had a message without taking it, so failover moves on.
        self._tried: dict[str, set[str]] = {}
        # "busy" answers per message: added to its attempt budget (see Outcome.BUSY).
        self._busy: dict[str, int] = {}
        self._wake = asyncio.Event()
        # Whether the database may hold due messages: a freed slot or a new phone only
        # calls for an outbox round when it does. Bumped by every "there is work" wake so
        # a round cannot clear news that arrived while it ran.
        self._maybe_due = True
        self._due_generation = 0
        self._next_expiry = 0.0
        self._next_purge = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._affinity = AffinityCache(settings.affinity_cache_size)
        self._slot_waiters: list[asyncio.Future[None]] = []
        # Wakes offline phones (FCM) when work waits that no online phone can take.
        self.waker: Waker | None = None
        # Counters and histograms (the hub puts its own here: smsgw/telemetry.py).
        self.metrics = HubMetrics()
        # Accepted messages: when each was created (or due, if scheduled), as a Unix time,
        # for smsgw_dispatch_seconds once the phone reports it SENT.
        self._since: dict[str, float] = {}

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._affinity.warm(await self.store.recent_affinities(self._affinity.maxsize))
        self._loop_task = asyncio.create_task(self._outbox_loop(), name="smsgw-outbox")

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def wake(self, *, due: bool = False) -> None:
        """Ask for an outbox round. ``due=True``: a message became (or may have become)
        due; otherwise only capacity changed, which matters only if something is due."""
        if due:
            self._maybe_due = True
            self._due_generation += 1
        else:
            self._capacity_changed()
        if self._maybe_due:
            self._wake.set()

    # -- the synchronous path ---------------------------------------------------------

    async def submit(self, msg: Message, deadline: float | None) -> Message:
        """Store a new message and, unless ``deadline`` is None, dispatch it now: offer
        it phone after phone until it is SENT or FAILED, no phone is left, or
        ``deadline`` seconds pass. Returns the message as it then stands."""
        msg.last_device = self._affinity.get(msg.recipient)
        first = None
        end = time.monotonic() + (deadline or 0.0)
        if deadline is not None:
            first = self._pick(msg, allow_retry=False)
            if first is None:
                first = await self._wait_for_slot(msg, end)
        if deadline is None or first is None:
            # Nobody can take it now (or the caller does not wait): the outbox will.
            await self.store.create_message(msg)
            self.wake(due=True)
            if deadline is not None:
                self._stranded((msg,))
            return msg
        return await self._dispatch(msg, end, first)

    async def _wait_for_slot(self, msg: Message, end: float) -> LiveDevice | None:
        """All usable phones are at their in-flight limit: wait (until ``end``) for one to
        free a slot rather than give up at once. Returns None when no phone could ever
        take it (none online, or all disabled or over quota)."""
        loop = asyncio.get_running_loop()
        while (remaining := end - time.monotonic()) > 0:
            pool = (
                [d for d in [self.registry.get(msg.pinned_device_id)] if d is not None]
                if msg.pinned_device_id is not None
                else self.registry.all()
            )
            if all(spent(d) for d in pool):
                return None
            fut: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(fut)
            timer = loop.call_later(remaining, _resolve, fut, None)
            try:
                await fut
            finally:
                timer.cancel()
                if fut in self._slot_waiters:
                    self._slot_waiters.remove(fut)
            live = self._pick(msg, allow_retry=False)
            if live is not None:
                return live
        return None

    def _release_slot(self, live: LiveDevice, message_id: str) -> None:
        if message_id in live.holding:
            live.holding.discard(message_id)
            self._capacity_changed()

    def _capacity_changed(self) -> None:
        """A slot freed, a phone came online or was re-enabled: waiting dispatches retry."""
        waiters, self._slot_waiters = self._slot_waiters, []
        for fut in waiters:
            _resolve(fut, None)

    async def _dispatch(self, msg: Message, end: float, first: LiveDevice) -> Message:
        """``msg`` is kept up to date in memory from the reports, so the hot path reads
        nothing back from the database. The first offer also stores the message. ``end``
        is the caller's deadline (monotonic), shared with any wait for a free slot."""
        self._active.add(msg.id)
        live: LiveDevice | None = first
        stored = False

        def mark_stored() -> None:
            nonlocal stored
            stored = True

        try:
            while (remaining := end - time.monotonic()) > 0 or not stored:
                if remaining <= 0:  # the deadline went to waiting for a slot: store it now
                    await self.store.create_message(msg)
                    stored = True
                    break
                if msg.status is Status.SENT or msg.status in FINAL_STATUSES:
                    break
                if msg.status is Status.QUEUED:
                    await self._wait_change(msg, remaining)
                    continue
                if stored:
                    live = self._pick(msg, allow_retry=False)
                if live is None:
                    break  # nobody (else) can take it now: the outbox keeps it going
                timeout = min(self._accept_timeout(live), remaining)
                outcome = await self._offer(
                    msg, live, timeout, create=not stored, on_stored=mark_stored
                )
                if outcome is Outcome.LOST:
                    # Someone else changed it; the database knows what.
                    current = await self.store.get_message(msg.id)
                    if current is None:
                        break
                    msg = current
                    self._active.add(msg.id)
                elif outcome is Outcome.ACCEPTED:
                    await self._wait_change(msg, end - time.monotonic())
        except Exception:
            if not stored:
                raise  # nothing was written: the request fails as a whole
            # Once stored, the message is the outbox's: the caller gets its current state
            # (202), never an error that would invite a retry and a duplicate.
            log.exception("dispatch of %s failed after it was stored", msg.id)
        finally:
            self._active.discard(msg.id)
            self.wake(due=msg.status is Status.PENDING)
        return msg

    async def _wait_change(self, msg: Message, timeout: float) -> None:
        """Wait for the next change of ``msg`` and apply it to the in-memory copy."""
        if timeout <= 0:
            return
        message_id = msg.id
        fut: asyncio.Future[Change | None] = asyncio.get_running_loop().create_future()
        self._watchers.setdefault(message_id, []).append(fut)
        timer = asyncio.get_running_loop().call_later(timeout, _resolve, fut, None)
        try:
            change = await fut
            if change is not None:
                msg.status = change.status
                msg.device_id = change.device_id
                # The latest change's error only: a message SENT after a failover has
                # none (the failed attempt's stays in its attempts).
                msg.error_code, msg.error = change.error_code, change.error
        finally:
            timer.cancel()
            waiters = self._watchers.get(message_id)
            if waiters is not None:
                if fut in waiters:
                    waiters.remove(fut)
                if not waiters:
                    del self._watchers[message_id]

    def _notify(self, message_id: str, change: Change) -> None:
        for fut in self._watchers.pop(message_id, []):
            if not fut.done():
                fut.set_result(change)

    # -- offering ---------------------------------------------------------------------

    def _pick(self, msg: Message, *, allow_retry: bool, local: bool = False) -> LiveDevice | None:
        tried = self._tried.get(msg.id, ())
        if msg.pinned_device_id is not None:
            live = self.registry.get(msg.pinned_device_id)
            if live is None or not eligible(live):
                return None
            if msg.app_only and live.kind != APP:
                return None
            if local and not self.registry.is_local(live):
                return None
            if not allow_retry and live.device_id in tried:
                return None
            return live
        app_only = msg.app_only
        best = self.registry.pick(
            affinity=msg.last_device, exclude=tried, local=local, app_only=app_only
        )
        if best is None and allow_retry and tried:
            best = self.registry.pick(affinity=msg.last_device, local=local, app_only=app_only)
        return best

    def _accept_timeout(self, live: LiveDevice) -> float:
        return live.session.accept_timeout or self.settings.accept_timeout

    def _has_untried(self, msg: Message) -> bool:
        if msg.pinned_device_id is not None:
            return False
        tried = self._tried.get(msg.id, ())
        return self.registry.pick(exclude=tried, app_only=msg.app_only) is not None

    async def _offer(
        self,
        msg: Message,
        live: LiveDevice,
        timeout: float,
        *,
        create: bool = False,
        on_stored: Callable[[], None] | None = None,
    ) -> Outcome:
        attempt = msg.attempt + 1
        now = utcnow()
        # The lease outlives our own wait so no other node offers it meanwhile; a hub that
        # dies mid-offer leaves a lease that simply runs out.
        lease = now + timedelta(seconds=timeout + 1.0)
        live.holding.add(msg.id)  # reserve the slot before the write, not after
        # A phone on this node answers through this process, so the message can wait to
        # be written with its accept (see _Unstored); another node's phone answers there,
        # and a phone that pulls its offers (the stock app) reads them from the database.
        defer = create and self.registry.is_local(live) and not live.session.pulls
        try:
            if defer:
                self._unstored[msg.id] = _Unstored(msg, live.device_id, lease, on_stored)
            elif create:
                offered = await self.store.create_message(
                    msg, offer_to=live.device_id, lease_until=lease
                )
                if on_stored is not None:
                    on_stored()
                if not offered:  # the phone was removed: stored on offer to nobody
                    self._release_slot(live, msg.id)
                    return Outcome.LOST
            elif not await self.store.offer(msg.id, live.device_id, msg.attempt, now, lease):
                self._release_slot(live, msg.id)
                return Outcome.LOST
        except BaseException:
            self._release_slot(live, msg.id)  # a failed write must not eat the phone's slot
            raise
        offer = _Offer(
            live.device_id, attempt, asyncio.get_running_loop().create_future(), live.session
        )
        self._offers[msg.id] = offer
        live.mark_used()
        self._tried.setdefault(msg.id, set()).add(live.device_id)
        msg.attempt = attempt
        if attempt > 1:
            self.metrics.failovers.inc()
        # A timer resolving the future, not wait_for: wait_for costs a task per call.
        timer = asyncio.get_running_loop().call_later(
            timeout, _resolve, offer.future, Outcome.TIMEOUT
        )
        try:
            try:
                # Bounded like the answer: a phone on another node is reached through the
                # broker, and a stalled broker must cost a failover, not the deadline.
                async with asyncio.timeout(timeout):
                    await live.session.send_command(msg, attempt)
            except TimeoutError:
                outcome = Outcome.TIMEOUT
            else:
                outcome = await offer.future
        except SessionClosed:
            outcome = Outcome.DISCONNECTED
        except BaseException:
            # Cancelled (shutdown): the lease runs out and the outbox offers it again. An
            # unstored message is dropped: its caller gets no answer, and the phone's late
            # accept finds nothing to own (an accept being written still lands).
            self._unstored.pop(msg.id, None)
            self._release_slot(live, msg.id)
            raise
        finally:
            timer.cancel()
            if self._offers.get(msg.id) is offer:
                del self._offers[msg.id]
        if defer:
            try:
                await self._settle(msg.id)
            except BaseException:
                # Not stored, and the request fails as a whole: the entry goes too, so a
                # late accept finds nothing to own (an in-flight write still lands).
                self._unstored.pop(msg.id, None)
                self._release_slot(live, msg.id)
                raise
        if outcome is Outcome.ACCEPTED:
            msg.status, msg.device_id = Status.QUEUED, live.device_id
            self._taken(msg)
            return outcome
        if outcome is Outcome.TIMEOUT:
            self.metrics.offer_timeouts.inc()
        self._release_slot(live, msg.id)
        if outcome in (Outcome.DECLINED, Outcome.LOST):
            return outcome  # a failure report or a cancel already updated the store
        max_attempts = self.settings.max_attempts
        if outcome is Outcome.BUSY:
            # Not an attempt that counts: the phone never saw the message. Show it full
            # here for a moment so the next pick looks elsewhere.
            live.full_until = time.monotonic() + BUSY_BACKOFF
            self._busy[msg.id] = self._busy.get(msg.id, 0) + 1
        max_attempts += self._busy.get(msg.id, 0)
        if outcome is Outcome.DISCONNECTED:
            reconnected = self.registry.get(live.device_id)
            if reconnected is not None and reconnected.session is not live.session:
                # The phone is back on a new connection: it is worth another try.
                self._tried.get(msg.id, set()).discard(live.device_id)
        retry_at = (
            now
            if self._has_untried(msg)
            else utcnow() + timedelta(seconds=self.settings.retry_backoff)
        )
        status = await self.store.release_offer(
            msg.id,
            live.device_id,
            attempt,
            outcome.value,
            utcnow(),
            retry_at,
            max_attempts,
        )
        if status is None:
            # Our release lost to the phone's accept: it owns the message after all.
            current = await self.store.get_message(msg.id)
            if (
                current is not None
                and current.device_id == live.device_id
                and current.status in (Status.QUEUED, Status.SENT, Status.DELIVERED)
            ):
                if current.status is Status.QUEUED:  # still the phone's to report on
                    live.holding.add(msg.id)
                msg.status, msg.device_id = current.status, current.device_id
                self._taken(msg)
                return Outcome.ACCEPTED
            return Outcome.LOST
        msg.device_id = None
        if status is Status.FAILED:
            msg.status, msg.error_code = Status.FAILED, "max_attempts"
            msg.error = f"no phone took the message after {attempt} attempts"
            self.metrics.transition(Status.FAILED, msg.error_code)
            self._finished(msg.id, Change(Status.FAILED, None, msg.error_code, msg.error))
        return outcome

    def _taken(self, msg: Message) -> None:
        """A phone accepted this node's offer of ``msg``: count it, and remember since when
        the message waits, for its dispatch time once it is SENT."""
        self.metrics.transition(Status.QUEUED)
        if msg.id not in self._since:
            start = msg.created_at
            if msg.send_at is not None and msg.send_at > start:
                start = msg.send_at  # scheduled: its wait for send_at is not a delay
            if len(self._since) >= SINCE_LIMIT:
                del self._since[next(iter(self._since))]
            self._since[msg.id] = start.timestamp()

    # -- reports from phones (called after the store recorded them) -------------------

    def accepted(self, message_id: str, device_id: str, attempt: int, owner: bool) -> None:
        offer = self._offers.get(message_id)
        if (
            owner
            and offer
            and offer.device_id == device_id
            and offer.attempt == attempt
            and not offer.future.done()
        ):
            offer.future.set_result(Outcome.ACCEPTED)
        self.registry.accepted(message_id, device_id, attempt, owner)

    async def accept_unstored(
        self, message_id: str, device_id: str, attempt: int, now: datetime
    ) -> bool | None:
        """A phone accepted an offer: if it is the first offer of a message not yet
        stored (and this phone's, under this attempt), store the message as the phone's.
        None when the database has to decide (``Store.accept``)."""
        entry = self._unstored.get(message_id)
        if entry is None or entry.device_id != device_id or attempt != 1:
            return None
        if entry.storing is not None:  # a repeated accept, or the offer just ended
            await asyncio.shield(entry.storing)
            return None
        # False: the phone was removed meanwhile; nothing was written, and its offer ends
        # (the removal closes its session), which writes the message for another phone.
        return await self._store(entry, accepted_at=now)

    async def store_unstored(self, message_id: str, device_id: str) -> None:
        """Before a phone's failure report is applied: a message still on its unstored
        first offer to that phone is written as that offer, so the report finds it."""
        entry = self._unstored.get(message_id)
        if entry is not None and entry.device_id == device_id:
            await self._settle(message_id)

    async def _settle(self, message_id: str) -> None:
        while (entry := self._unstored.get(message_id)) is not None:
            if entry.storing is not None:
                await asyncio.shield(entry.storing)  # stored, or failed and still here
            else:
                await self._store(entry, accepted_at=None)

    async def _store(self, entry: _Unstored, *, accepted_at: datetime | None) -> bool:
        """Write the entry's message: owned by its phone (``accepted_at``), or as the offer
        it was. False when the phone was removed: then an accept wrote nothing (the entry
        stays), and an offer that ended stored the message on offer to nobody."""
        msg = entry.message
        loop = asyncio.get_running_loop()
        storing = entry.storing = loop.create_future()
        # A task of its own: a write once queued may commit even if the caller is
        # cancelled, and the bookkeeping must follow what the database did, not the caller.
        write = loop.create_task(
            self.store.create_message(
                msg,
                offer_to=entry.device_id,
                lease_until=entry.lease_until,
                accepted_at=accepted_at,
            )
        )

        def written(task: asyncio.Task[bool]) -> None:
            if (
                task.cancelled()
                or task.exception() is not None
                or (accepted_at is not None and not task.result())
            ):
                entry.storing = None  # nothing written: still unstored
                storing.set_result(False)
                return
            if self._unstored.get(msg.id) is entry:
                del self._unstored[msg.id]
            storing.set_result(True)
            if entry.on_stored is not None:
                entry.on_stored()

        write.add_done_callback(written)
        await asyncio.shield(storing)
        return write.result()  # or the write's error

    def has_offer(self, message_id: str) -> bool:
        """Whether this node is waiting for a phone's answer to an offer of the message."""
        return message_id in self._offers

    async def reconcile_slots(self, lives: Iterable[LiveDevice]) -> None:
        """Free the slots of ``lives`` held for messages no longer theirs to report on.
        A slot is freed by the phone's report, which reaches this node's dispatcher; when
        that report was taken elsewhere and its relay was lost (another node's phone; an
        app phone's HTTP report on another node), the database still knows."""
        stale = [
            (live, message_id)
            for live in lives
            for message_id in list(live.holding)
            if not self.has_offer(message_id)
        ]
        for live, message_id in stale:
            msg = await self.store.get_message(message_id)
            owned = (
                msg is not None
                and msg.device_id == live.device_id
                and msg.status in (Status.PENDING, Status.QUEUED)
            )
            if not owned and message_id in live.holding and not self.has_offer(message_id):
                self._release_slot(live, message_id)
                self.wake()

    def offer_failed(
        self, message_id: str, device_id: str, attempt: int, *, busy: bool = False
    ) -> None:
        """The node holding the phone could not pass the offer on (the phone left it, or
        is at its in-flight limit there: ``busy``): fail over now, not at the timeout."""
        offer = self._offers.get(message_id)
        if offer is not None and offer.device_id == device_id and offer.attempt == attempt:
            _resolve(offer.future, Outcome.BUSY if busy else Outcome.DISCONNECTED)

    def reported(
        self,
        message_id: str,
        device_id: str,
        status: Status | None,
        error_code: str | None = None,
        error: str | None = None,
        recipient: str | None = None,
        attempt: int | None = None,
    ) -> None:
        """A sent/failed/delivered report changed the message (``status`` is its new one,
        None when the report changed nothing, e.g. a stale duplicate)."""
        if status is None:
            return
        self.registry.reported(message_id, device_id, status, error_code, error, recipient, attempt)
        if status is Status.SENT or status is Status.DELIVERED:  # a delivery implies the send
            since = self._since.pop(message_id, None)
            if since is not None:
                self.metrics.dispatched(time.time() - since)
        if status is Status.SENT and recipient is not None:
            self._affinity.put(recipient, device_id)
        live = self.registry.get(device_id)
        if live is not None and message_id in live.holding:
            # The first report that ends the phone's hold on the message frees its slot;
            # a delivery report overtaking the sent report counts as the send.
            self._release_slot(live, message_id)
            if status in (Status.SENT, Status.DELIVERED):
                live.count_sent()
        offer = self._offers.get(message_id)
        if (
            offer is not None
            and offer.device_id == device_id
            and (attempt is None or attempt == offer.attempt)
            and not offer.future.done()
        ):
            offer.future.set_result(Outcome.DECLINED)
        owner = None if status is Status.PENDING else device_id
        change = Change(status, owner, error_code, error)
        if status is Status.SENT or status in FINAL_STATUSES:
            self._finished(message_id, change)
        else:
            self._notify(message_id, change)
        self.wake(due=status is Status.PENDING)  # a slot freed up, or it is PENDING again

    def cancelled(self, message_id: str) -> None:
        """The client cancelled it (the store already says so): stop waiting for it."""
        offer = self._offers.get(message_id)
        if offer is not None:
            _resolve(offer.future, Outcome.LOST)
        self._finished(message_id, Change(Status.CANCELLED))

    def session_closed(self, session: Session) -> None:
        """Offers made through this connection will get no answer: fail over now. Also
        when a newer session of the same phone replaced it (that one never saw them)."""
        for offer in list(self._offers.values()):
            if offer.session is session and not offer.future.done():
                offer.future.set_result(Outcome.DISCONNECTED)

    def _finished(self, message_id: str, change: Change) -> None:
        self._tried.pop(message_id, None)
        self._busy.pop(message_id, None)
        self._since.pop(message_id, None)
        self._notify(message_id, change)

    # -- the outbox ---------------------------------------------------------------------

    async def _outbox_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.settings.outbox_interval)
            except TimeoutError:
                # The periodic round: retry times and lease ends pass without any event.
                self._maybe_due = True
            self._wake.clear()
            try:
                await self.drain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A database hiccup must not kill the loop: the next round tries again.
                log.exception("outbox round failed")
                await asyncio.sleep(self.settings.outbox_interval)

    async def drain_once(self) -> int:
        """One round: expire (at most every ``outbox_interval``), then offer due messages
        to phones with free slots."""
        now = utcnow()
        generation = self._due_generation
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + self.settings.outbox_interval
            await self._expire(now)
        # Each node's outbox fills only the phones whose sockets it holds: several nodes
        # never compete for one phone's slots, and background traffic needs no hop
        # between nodes (docs/architecture.md, "Several nodes").
        capacity = 0
        for phone in self.registry.local():
            capacity += free_slots(phone)
            if capacity >= ROUND_LIMIT:
                capacity = ROUND_LIMIT
                break
        if capacity == 0:
            self._stranded()
            return 0
        limit = capacity + len(self._active)
        due = await self.store.due_messages(now, limit)
        started = 0
        stranded: list[Message] = []
        for msg in due:
            if msg.id in self._active:
                continue
            live = self._pick(msg, allow_retry=True, local=True)
            if live is None:
                stranded.append(msg)
                continue
            self._active.add(msg.id)
            # Reserve the slot now so the next pick in this round sees it taken.
            live.holding.add(msg.id)
            task = asyncio.create_task(self._background_offer(msg, live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        if stranded:
            self._stranded(stranded)
        if generation == self._due_generation:
            # Nothing left behind: until news arrives, freed slots need no round.
            self._maybe_due = len(due) >= limit or started < len(due)
        return started

    def _stranded(self, messages: Iterable[Message] = ()) -> None:
        """Due work that no online phone can take now: offline phones may be woken."""
        if self.waker is not None:
            self.waker.poke(messages)

    async def _expire(self, now: datetime) -> None:
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + 60.0
            await self.store.purge_idempotency(now - timedelta(seconds=IDEMPOTENCY_KEEP))
            await self.store.purge_otps(now - timedelta(days=1))
        expired = await self.store.expire_messages(now)
        if expired:
            self.metrics.transition(Status.FAILED, "expired", len(expired))
        for message_id in expired:
            self._finished(
                message_id,
                Change(
                    Status.FAILED, None, "expired", "no phone sent the message before it expired"
                ),
            )

    async def _background_offer(self, msg: Message, live: LiveDevice) -> None:
        outcome = Outcome.LOST
        try:
            outcome = await self._offer(msg, live, self._accept_timeout(live))
            if outcome is Outcome.LOST:
                self._release_slot(live, msg.id)
        except Exception:
            self._release_slot(live, msg.id)
            log.exception("offer of %s to %s failed", msg.id, live.device_id)
        finally:
            self._active.discard(msg.id)
        if outcome is not Outcome.ACCEPTED:
            self.wake(due=True)


def _resolve(fut: asyncio.Future[T], value: T) -> None:
    if not fut.done():
        fut.set_result(value)
