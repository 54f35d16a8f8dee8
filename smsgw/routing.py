"""Which phone sends a message: a small pure policy, unit-tested without a hub.

Eligible: enabled, connected, under its daily quota and under its in-flight limit.
Among those: the phone that last sent to this recipient first (conversations keep coming
from one number), then the healthiest (signal, then power: charging or battery >= 20%),
then the least recently used, so load spreads across a farm instead of piling onto the
phone with one more percent of battery.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Protocol, TypeVar

LOW_BATTERY = 20
APP = "app"  # the kind of phone that runs the stock app: it alone sends data/encrypted SMS


class Routable(Protocol):
    """What routing reads of a phone. ``Candidate`` is the plain-data version; the
    registry's ``LiveDevice`` provides the same attributes without a copy per decision."""

    @property
    def device_id(self) -> str: ...
    @property
    def enabled(self) -> bool: ...
    @property
    def connected(self) -> bool: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def sent_today(self) -> int: ...
    @property
    def daily_quota(self) -> int: ...
    @property
    def signal(self) -> int: ...
    @property
    def battery(self) -> int: ...
    @property
    def charging(self) -> bool: ...
    @property
    def last_used(self) -> float: ...
    @property
    def kind(self) -> str: ...


R = TypeVar("R", bound=Routable)


@dataclass(frozen=True, slots=True)
class Candidate:
    device_id: str
    enabled: bool
    connected: bool
    in_flight: int
    max_in_flight: int
    sent_today: int
    daily_quota: int
    signal: int
    battery: int
    charging: bool
    last_used: float  # monotonic seconds of the last offer; 0 = never
    kind: str = "agent"


def eligible(c: Routable) -> bool:
    return (
        c.enabled
        and c.connected
        and c.in_flight < c.max_in_flight
        # Messages in flight will count against the quota once sent.
        and c.sent_today + c.in_flight < c.daily_quota
    )


def spent(c: Routable) -> bool:
    """Ineligible until an admin or the calendar says otherwise (disabled, or the day's
    quota used up): unlike a full in-flight window, no report of the phone's ends it."""
    return not c.enabled or c.sent_today >= c.daily_quota


def free_slots(c: Routable) -> int:
    if not eligible(c):
        return 0
    return min(c.max_in_flight - c.in_flight, c.daily_quota - c.sent_today - c.in_flight)


def tier(c: Routable) -> tuple[int, bool]:
    """How healthy a phone is, best first: signal, then power."""
    return -c.signal, not (c.charging or c.battery >= LOW_BATTERY)


def _preference(c: Routable, affinity: str | None) -> tuple[bool, int, bool, float, str]:
    return (c.device_id != affinity, *tier(c), c.last_used, c.device_id)


def rank(
    candidates: Iterable[R],
    *,
    affinity: str | None = None,
    exclude: Collection[str] = (),
) -> list[R]:
    """Eligible phones, best first."""
    pool = [c for c in candidates if eligible(c) and c.device_id not in exclude]
    pool.sort(key=lambda c: _preference(c, affinity))
    return pool


def pick(
    candidates: Iterable[R],
    *,
    affinity: str | None = None,
    exclude: Collection[str] = (),
    app_only: bool = False,
) -> R | None:
    """The best eligible phone (an app phone when ``app_only``): ``rank(...)[0]`` in one
    pass, without sorting.

    The definition; the hub picks through ``roster.Roster.pick()``, which returns the
    same phone without looking at every one (tests/smsgw/test_roster.py)."""
    best: R | None = None
    best_key: tuple[bool, int, bool, float, str] | None = None
    for c in candidates:
        if c.device_id in exclude or not eligible(c) or (app_only and c.kind != APP):
            continue
        key = _preference(c, affinity)
        if best_key is None or key < best_key:
            best, best_key = c, key
    return best
