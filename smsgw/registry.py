"""Who is online: the registry of live sessions and what the hub knows of each phone.

``Registry`` is the interface; ``LocalRegistry`` keeps everything in this process (one
hub node). A cross-node registry keeps the same interface; nothing outside this module
may assume the sessions are all local.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from datetime import datetime

from smsgw.clock import utcnow
from smsgw.routing import Candidate
from smsgw.session import Session
from smsgw.store import Device


@dataclass(slots=True, eq=False)
class LiveDevice:
    """A connected phone: its session plus the state routing needs, kept in memory."""

    session: Session
    device_id: str
    name: str
    enabled: bool
    daily_quota: int
    sent_today: int
    sent_day: str | None
    battery: int
    charging: bool
    signal: int
    network: str | None
    sims: list[dict[str, object]]
    connected_at: datetime = field(default_factory=utcnow)
    last_seen: datetime = field(default_factory=utcnow)
    last_seen_mono: float = field(default_factory=time.monotonic)
    last_used: float = 0.0
    in_flight: set[str] = field(default_factory=set)

    @classmethod
    def from_device(
        cls,
        session: Session,
        device: Device,
        *,
        default_quota: int,
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
            sent_today=device.sent_today,
            sent_day=device.sent_day,
            battery=battery,
            charging=charging,
            signal=signal,
            network=network,
            sims=sims,
        )

    def sent_on(self, day: str) -> int:
        return self.sent_today if self.sent_day == day else 0

    def count_sent(self, day: str) -> None:
        self.sent_today = self.sent_on(day) + 1
        self.sent_day = day

    def candidate(self, max_in_flight: int, day: str) -> Candidate:
        return Candidate(
            device_id=self.device_id,
            enabled=self.enabled,
            connected=True,
            in_flight=len(self.in_flight),
            max_in_flight=max_in_flight,
            sent_today=self.sent_on(day),
            daily_quota=self.daily_quota,
            signal=self.signal,
            battery=self.battery,
            charging=self.charging,
            last_used=self.last_used,
        )

    def touch(self) -> None:
        self.last_seen = utcnow()
        self.last_seen_mono = time.monotonic()


class Registry(abc.ABC):
    @abc.abstractmethod
    async def attach(self, live: LiveDevice) -> LiveDevice | None:
        """Make ``live`` the device's session; returns the session it replaced."""

    @abc.abstractmethod
    async def detach(self, live: LiveDevice) -> bool:
        """Remove ``live`` if it is still the device's current session."""

    @abc.abstractmethod
    def get(self, device_id: str) -> LiveDevice | None: ...

    @abc.abstractmethod
    def all(self) -> list[LiveDevice]: ...


class LocalRegistry(Registry):
    def __init__(self) -> None:
        self._live: dict[str, LiveDevice] = {}

    async def attach(self, live: LiveDevice) -> LiveDevice | None:
        previous = self._live.get(live.device_id)
        self._live[live.device_id] = live
        return previous

    async def detach(self, live: LiveDevice) -> bool:
        if self._live.get(live.device_id) is live:
            del self._live[live.device_id]
            return True
        return False

    def get(self, device_id: str) -> LiveDevice | None:
        return self._live.get(device_id)

    def all(self) -> list[LiveDevice]:
        return list(self._live.values())
