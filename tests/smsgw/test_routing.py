"""The routing policy, as a pure function."""

from __future__ import annotations

from dataclasses import replace

from smsgw.routing import Candidate, eligible, free_slots, pick, rank

BASE = Candidate(
    device_id="a",
    enabled=True,
    connected=True,
    in_flight=0,
    max_in_flight=4,
    sent_today=0,
    daily_quota=90,
    signal=4,
    battery=80,
    charging=False,
    last_used=0.0,
)


def test_ineligible_phones_are_never_picked() -> None:
    phones = [
        replace(BASE, device_id="disabled", enabled=False),
        replace(BASE, device_id="offline", connected=False),
        replace(BASE, device_id="busy", in_flight=4),
        replace(BASE, device_id="quota", sent_today=90),
        replace(BASE, device_id="quota-with-inflight", sent_today=88, in_flight=2),
    ]
    assert [eligible(p) for p in phones] == [False] * 5
    assert ids(rank(phones)) == [] and pick(phones) is None
    assert free_slots(phones[2]) == 0


def test_affinity_beats_health_and_recency() -> None:
    weak = replace(BASE, device_id="weak", signal=1, last_used=100.0)
    strong = replace(BASE, device_id="strong", signal=4)
    assert ids(rank([strong, weak], affinity="weak")) == ["weak", "strong"]
    assert ids(rank([strong, weak])) == ["strong", "weak"]


def test_health_then_least_recently_used() -> None:
    low_battery = replace(BASE, device_id="low", battery=5, last_used=0.0)
    charging = replace(BASE, device_id="charging", battery=5, charging=True, last_used=50.0)
    recent = replace(BASE, device_id="recent", last_used=90.0)
    older = replace(BASE, device_id="older", last_used=10.0)
    assert ids(rank([low_battery, recent, charging, older])) == [
        "older",
        "charging",
        "recent",
        "low",
    ]


def ids(cands: list[Candidate]) -> list[str]:
    return [c.device_id for c in cands]


def test_pick_agrees_with_rank() -> None:
    phones = [
        replace(
            BASE,
            device_id=f"p{i}",
            signal=i % 5,
            battery=(i * 37) % 100,
            charging=i % 3 == 0,
            last_used=float((i * 7) % 11),
            in_flight=i % 5,
        )
        for i in range(40)
    ]
    for affinity in (None, "p7", "p3"):
        for exclude in ((), {"p0", "p5"}):
            ranked = rank(phones, affinity=affinity, exclude=exclude)
            assert pick(phones, affinity=affinity, exclude=exclude) is ranked[0]
    assert pick([replace(BASE, enabled=False)]) is None


def test_excluded_phones_are_skipped_and_free_slots_respect_quota() -> None:
    a, b = replace(BASE, device_id="a"), replace(BASE, device_id="b", last_used=5.0)
    assert ids(rank([a, b], exclude={"a"})) == ["b"]
    assert free_slots(replace(BASE, sent_today=88, in_flight=1)) == 1
    assert free_slots(replace(BASE, in_flight=1)) == 3
