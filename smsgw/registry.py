"""Who is online: the registry of live sessions and what the hub knows of each phone.

``Registry`` is the interface; ``LocalRegistry`` keeps everything in this process (one
hub node). A cross-node registry keeps the same interface; nothing outside this module
may assume the sessions are all local.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from smsgw.clock import today, utcnow
from smsgw.roster import Roster
from smsgw.session import Session
from smsgw.store import Device, Status

if TYPE_CHECKING:
    from smsgw.dispatcher import Dispatcher


@dataclass(slots=True, eq=False)
class LiveDevice:
    """A connected phone: its session plus the state routing needs, kept in memory.

    Satisfies ``routing.Routable`` directly, so a routing decision copies nothing.
    """

    session: Session
    device_id: str
    name: str
    enabled: bool
    daily_quota: int
    max_in_flight: int
    battery: int
    charging: bool
    signal: int
    network: str | None
    sims: list[dict[str, object]]
    kind: str = "agent"  # "app": the stock app, the only kind that sends data/encrypted SMS
    sent_count: int = 0  # sent on sent_day
    sent_day: str | None = None
    connected_at: datetime = field(default_factory=utcnow)
    last_seen: datetime = field(default_factory=utcnow)
    last_used: float = 0.0
    # Messages on offer to this phone or owned by it and not yet reported on.
    holding: set[str] = field(default_factory=set)
    # Ownership epoch of this session in a cluster (smsgw/cluster.py); 0 on one node.
    epoch: int = 0
    # Another node's phone answered "busy" (full with that node's own work, which this
    # node does not see): shown as full here until this monotonic time.
    full_until: float = 0.0
    # The rosters that file this phone for routing (smsgw/roster.py): set_status(),
    # mark_used() and configure() move it in each. Battery, charging, signal and
    # last_used change only through them, and enabled and daily_quota only through
    # configure() once the phone is in a roster (a roster sets aside spent phones until
    # one of these tells it otherwise).
    rosters: list[Roster] = field(default_factory=list, repr=False)

    @classmethod
    def from_device(
        cls,
        session: Session,
        device: Device,
        *,
        default_quota: int,
        max_in_flight: int,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        sims: list[dict[str, object]],
    ) -> LiveDevice:
        return cls(
            session=session,
            device_id=device.id,
            name=device.name,
            enabled=device.enabled,
            daily_quota=device.daily_quota if device.daily_quota is not None else default_quota,
            max_in_flight=max_in_flight,
            sent_count=device.sent_today,
            sent_day=device.sent_day,
            battery=battery,
            charging=charging,
            signal=signal,
            network=network,
            sims=sims,
            kind=device.kind,
        )

    @property
    def connected(self) -> bool:
        return True

    @property
    def in_flight(self) -> int:
        if self.full_until and time.monotonic() < self.full_until:
            return self.max_in_flight
        return len(self.holding)

    @property
    def sent_today(self) -> int:
        return self.sent_count if self.sent_day == today() else 0

    def count_sent(self) -> None:
        self.sent_count = self.sent_today + 1
        self.sent_day = today()

    def touch(self) -> None:
        self.last_seen = utcnow()

    def set_status(self, battery: int, charging: bool, signal: int, network: str | None) -> None:
        """A heartbeat's news; refiled where routing looks (its tier may have changed)."""
        self.battery, self.charging, self.signal, self.network = battery, charging, signal, network
        self._refile()

    def mark_used(self) -> None:
        """Offered a message now: the back of its tier for the next pick."""
        self.last_used = time.monotonic()
        self._refile()

    def configure(self, *, name: str, enabled: bool, daily_quota: int) -> None:
        """An admin's change (or news of one): a phone that was spent may not be now."""
        self.name, self.enabled, self.daily_quota = name, enabled, daily_quota
        self._refile()

    def _refile(self) -> None:
        for roster in self.rosters:
            roster.refile(self)


class Registry(abc.ABC):
    async def start(self, dispatcher: Dispatcher) -> None:  # noqa: B027 (optional hook)
        """Begin serving; a cross-node registry starts listening to other nodes."""

    async def stop(self) -> None: ...  # noqa: B027 (optional hook)

    @abc.abstractmethod
    async def attach(self, live: LiveDevice) -> LiveDevice | None:
        """Make ``live`` the device's session; returns the session it replaced."""

    @abc.abstractmethod
    async def detach(self, live: LiveDevice) -> bool:
        """Remove ``live`` if it is still the device's current session."""

    @abc.abstractmethod
    def get(self, device_id: str) -> LiveDevice | None: ...

    @abc.abstractmethod
    def all(self) -> Collection[LiveDevice]:
        """A live view, not a copy: iterate it without awaiting in between."""

    def local(self) -> Collection[LiveDevice]:
        """The phones whose sockets this node holds (all of them on one node)."""
        return self.all()

    def is_local(self, live: LiveDevice) -> bool:
        return True

    def pick(
        self,
        *,
        affinity: str | None = None,
        exclude: Collection[str] = (),
        local: bool = False,
        app_only: bool = False,
    ) -> LiveDevice | None:
        """The phone ``routing.pick()`` would choose among ``all()`` (or ``local()``),
        found without looking at every phone (smsgw/roster.py)."""
        return self._roster(local).pick(affinity=affinity, exclude=exclude, app_only=app_only)

    @abc.abstractmethod
    def _roster(self, local: bool) -> Roster:
        """What ``local()`` (or ``all()``) is a view of."""

    # This node is shutting down (start_draining): its phones stay disabled.
    draining: bool = False

    def start_draining(self) -> None:
        """This node is shutting down: route no new work to its phones."""
        self.draining = True
        for live in self.local():
            self.configure(live, name=live.name, enabled=False, daily_quota=live.daily_quota)

    def configure(self, live: LiveDevice, *, name: str, enabled: bool, daily_quota: int) -> None:
        """Apply an admin's settings to a phone this node holds; a draining node keeps
        its phones disabled whatever the admin sets."""
        live.configure(name=name, enabled=enabled and not self.draining, daily_quota=daily_quota)

    async def tell_nodes(self, news: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """This node changed state that every node keeps in memory (the opt-out list,
        credential caches): a cross-node registry passes ``news`` to the other nodes."""

    # Set by the hub: applies news from another node to this node's memory.
    on_news: Callable[[dict[str, Any]], None] | None = None

    async def changed(self, live: LiveDevice) -> None:  # noqa: B027 (optional hook)
        """An admin changed ``live``'s settings (name, enabled, quota) on this node."""

    # The dispatcher tells the registry what phones answered, after acting on it itself:
    # a cross-node registry passes answers to offers made by other nodes back to them.

    def accepted(self, message_id: str, device_id: str, attempt: int, owner: bool) -> None:  # noqa: B027 (optional hook)
        """A phone of this node accepted an offer (``owner``: it won the message)."""

    def reported(  # noqa: B027 (optional hook)
        self,
        message_id: str,
        device_id: str,
        status: Status,
        error_code: str | None,
        error: str | None,
        recipient: str | None,
        attempt: int | None,
    ) -> None:
        """A phone of this node's report changed a message to ``status``."""

    def relay_answer(self, device_id: str, answer: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """A phone answered on this node, not through its session: the stock app's pulls
        and reports are plain HTTP calls that any node may take. When another node holds
        the phone's session, a cross-node registry passes ``answer`` (``as``: "accepted"
        or "reported", and the fields of that answer) to it, which hands it to its
        dispatcher like its own session's, so the node that made the offer hears of it."""


class LocalRegistry(Registry):
    def __init__(self) -> None:
        self._live = Roster()

    async def attach(self, live: LiveDevice) -> LiveDevice | None:
        return self._live.put(live)

    async def detach(self, live: LiveDevice) -> bool:
        if self._live.get(live.device_id) is live:
            self._live.pop(live.device_id)
            return True
        return False

    def _roster(self, local: bool) -> Roster:
        return self._live

    def get(self, device_id: str) -> LiveDevice | None:
        return self._live.get(device_id)

    def all(self) -> Collection[LiveDevice]:
        return self._live.values()
