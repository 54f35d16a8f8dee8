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

LOW_BATTERY = 20


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


def eligible(c: Candidate) -> bool:
    return (
        c.enabled
        and c.connected
        and c.in_flight < c.max_in_flight
        # Messages in flight will count against the quota once sent.
        and c.sent_today + c.in_flight < c.daily_quota
    )


def free_slots(c: Candidate) -> int:
    if not eligible(c):
        return 0
    return min(c.max_in_flight - c.in_flight, c.daily_quota - c.sent_today - c.in_flight)


def rank(
    candidates: Iterable[Candidate],
    *,
    affinity: str | None = None,
    exclude: Collection[str] = (),
) -> list[str]:
    """Eligible device ids, best first."""
    pool = [c for c in candidates if eligible(c) and c.device_id not in exclude]
    pool.sort(
        key=lambda c: (
            c.device_id != affinity,
            -c.signal,
            not (c.charging or c.battery >= LOW_BATTERY),
            c.last_used,
            c.device_id,
        )
    )
    return [c.device_id for c in pool]
