"""smsgw/route_policy.py: which route takes a message, by wait, type, cost and priority."""

from __future__ import annotations

from datetime import timedelta

from smsgw.clock import utcnow
from smsgw.route_policy import admits, choose, shortest_wait
from smsgw.store.records import Route
from tests.builders import new_message


def route(name: str, **kw: object) -> Route:
    now = utcnow()
    r = Route(
        id="id-" + name,
        kind="twilio",
        name=name,
        enabled=True,
        credentials={},
        created_at=now,
        updated_at=now,
        price_per_segment=0.01,
    )
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def test_waits_for_phones_first() -> None:
    r = route("a", policy={"after_seconds": 30})
    msg = new_message()
    now = msg.created_at
    assert not admits(r, msg, now + timedelta(seconds=29))
    assert admits(r, msg, now + timedelta(seconds=30))
    assert not admits(route("b"), msg, now + timedelta(seconds=59))  # default 60 s


def test_types_and_costs() -> None:
    msg = new_message(parts=3)
    later = msg.created_at + timedelta(hours=1)
    otp_only = route("otp", policy={"after_seconds": 0, "sms_types": ["otp"]})
    assert not admits(otp_only, msg, later)  # untyped is transactional
    msg.sms_type = "otp"
    assert admits(otp_only, msg, later)
    capped = route("cap", policy={"after_seconds": 0, "max_cost_per_message": 0.02})
    assert not admits(capped, msg, later)  # 3 segments x 0.01
    daily = route("day", policy={"after_seconds": 0, "max_cost_per_day": 1.0})
    assert admits(daily, msg, later, spent_today=0.97)
    assert not admits(daily, msg, later, spent_today=0.98)


def test_forced_goes_at_once_but_never_elsewhere_nor_above_its_cap() -> None:
    forced = route("f", policy={"sms_types": ["otp"]})
    other = route("o", policy={"after_seconds": 0}, priority=10)
    msg = new_message(route_id=forced.id, route_forced=True)
    now = msg.created_at
    choice = choose([other, forced], msg, now)
    assert choice is not None and choice.route is forced
    capped = route("f2", id=forced.id, policy={"max_cost_per_message": 0})
    assert not admits(capped, msg, now)


def test_priority_then_name_and_disabled_skipped() -> None:
    msg = new_message()
    later = msg.created_at + timedelta(hours=1)
    a, b = route("a", priority=1), route("b", priority=5)
    off = route("z", priority=9, enabled=False)
    choice = choose([a, b, off], msg, later)
    assert choice is not None and choice.route is b and choice.cost == 0.01
    assert choose([], msg, later) is None
    assert shortest_wait([a, route("c", policy={"after_seconds": 2}), off]) == 2
    assert shortest_wait([off]) is None
