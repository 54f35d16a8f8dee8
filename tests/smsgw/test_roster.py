"""The roster picks what routing.pick() picks, without looking at every phone."""

from __future__ import annotations

import random
import time
from datetime import date, timedelta

import pytest

import smsgw.registry
import smsgw.roster
from smsgw.clock import today
from smsgw.protocol import CloseCode
from smsgw.registry import LiveDevice
from smsgw.roster import Roster
from smsgw.routing import Routable, pick
from smsgw.session import Session
from smsgw.store import Message


class _NoSession(Session):
    async def send_command(self, message: Message, attempt: int) -> None:
        raise AssertionError("not used")

    async def close(self, code: CloseCode, reason: str) -> None:
        raise AssertionError("not used")


def phone(rng: random.Random, device_id: str) -> LiveDevice:
    return LiveDevice(
        session=_NoSession(),
        device_id=device_id,
        name=device_id,
        enabled=rng.random() > 0.1,
        daily_quota=rng.choice([3, 50, 10**6]),
        max_in_flight=rng.choice([1, 2, 8]),
        battery=rng.randint(0, 100),
        charging=rng.random() < 0.3,
        signal=rng.randint(0, 4),
        network=None,
        sims=[],
        sent_count=rng.randint(0, 5),
        sent_day=today(),
        kind=rng.choice(["agent", "agent", "app"]),
    )


@pytest.fixture
def calendar(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The date as the registry and the roster see it, moved on by ``calendar[0]`` days."""
    shift = [0]

    def shifted() -> str:
        return (date.fromisoformat(today()) + timedelta(days=shift[0])).isoformat()

    monkeypatch.setattr(smsgw.registry, "today", shifted)
    monkeypatch.setattr(smsgw.roster, "today", shifted)
    return shift


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many phones the roster checks for eligibility (``checks[0]``): a pick's cost,
    counted rather than timed."""
    count = [0]
    real = smsgw.roster.eligible

    def counting(c: Routable) -> bool:
        count[0] += 1
        return real(c)

    monkeypatch.setattr(smsgw.roster, "eligible", counting)
    return count


@pytest.mark.parametrize("seed", range(20))
def test_a_pick_is_routing_pick_over_the_same_phones_through_any_changes(
    seed: int, calendar: list[int]
) -> None:
    rng = random.Random(seed)
    roster = Roster()
    ids = [f"p{i:03d}" for i in range(60)]
    for step in range(1500):
        op = rng.random()
        device_id = rng.choice(ids)
        live = roster.get(device_id)
        if live is None or op < 0.08:
            roster.put(phone(rng, device_id))  # a new phone, or the same one reconnected
        elif op < 0.12:
            roster.pop(device_id)
        elif op < 0.35:
            live.set_status(rng.randint(0, 100), rng.random() < 0.3, rng.randint(0, 4), None)
        elif op < 0.6:
            live.mark_used()
            live.holding.add(f"m{step}")
        elif op < 0.8 and live.holding:
            live.holding.discard(rng.choice(sorted(live.holding)))
            if rng.random() < 0.7:  # sent; otherwise failed, which uses no quota
                live.count_sent()
        elif op < 0.83:
            live.configure(name=live.name, enabled=not live.enabled, daily_quota=live.daily_quota)
        elif op < 0.86:
            quota = max(0, live.sent_today + rng.choice([-1, 0, 1, 2]))
            live.configure(name=live.name, enabled=live.enabled, daily_quota=quota)
        elif op < 0.9:
            live.full_until = time.monotonic() + rng.choice([-1.0, 60.0])
        elif op < 0.92:
            calendar[0] += 1  # midnight: every quota is unused again
        affinity = rng.choice([None, rng.choice(ids)])
        exclude = set(rng.sample(ids, rng.choice([0, 1, 5, 30])))
        expected = pick(roster.values(), affinity=affinity, exclude=exclude)
        assert roster.pick(affinity=affinity, exclude=exclude) is expected, step
        # Data and encrypted messages: app phones only.
        expected = pick(roster.values(), affinity=affinity, exclude=exclude, app_only=True)
        found = roster.pick(affinity=affinity, exclude=exclude, app_only=True)
        assert found is expected and (found is None or found.kind == "app"), step


def test_a_replaced_phone_leaves_the_roster_and_its_changes_stay_out() -> None:
    rng = random.Random(1)
    roster = Roster()
    old = phone(rng, "p")
    old.enabled, old.daily_quota = True, 10**6
    roster.put(old)
    new = phone(rng, "p")
    new.enabled, new.daily_quota = True, 10**6
    assert roster.put(new) is old
    assert old.rosters == [] and new.rosters == [roster]
    old.mark_used()  # the old session's late bookkeeping must not touch the roster
    old.set_status(5, False, 0, None)
    assert list(roster.values()) == [new] and roster.pick() is new
    assert roster.pop("p") is new and roster.pick() is None and len(roster) == 0


def test_a_phone_in_two_rosters_is_refiled_in_both() -> None:
    """A cluster node files its own phones twice: among all phones and among its own."""
    rng = random.Random(2)
    everyone, ours = Roster(), Roster()
    a, b = phone(rng, "a"), phone(rng, "b")
    for live in (a, b):
        live.enabled, live.daily_quota, live.max_in_flight = True, 10**6, 8
        live.set_status(90, True, 4, None)
        everyone.put(live)
        ours.put(live)
    first = everyone.pick()
    assert first is not None and ours.pick() is first
    first.mark_used()  # now the other one is the least recently used in both
    assert everyone.pick() is ours.pick() is not first
    (b if first is a else a).set_status(90, True, 1, None)  # ...but its signal dropped
    assert everyone.pick() is ours.pick() is first


def test_a_pick_in_a_large_farm_looks_at_few_phones(checks: list[int]) -> None:
    """The point of the roster: a pick's cost does not grow with the farm."""
    rng = random.Random(3)
    roster = Roster()
    for i in range(5000):
        live = phone(rng, f"p{i:04d}")
        live.enabled, live.daily_quota, live.max_in_flight = True, 10**6, 2
        roster.put(live)
    for n in range(1000):
        live = roster.pick()
        assert live is not None
        live.mark_used()
        live.holding.add(f"m{n}")
        if len(live.holding) == live.max_in_flight:  # a report frees the oldest slot
            live.holding.pop()
    assert checks[0] < 3 * 1000


def test_spent_phones_are_set_aside_until_an_admin_or_the_calendar_brings_them_back(
    calendar: list[int], checks: list[int]
) -> None:
    """A farm mostly at its daily cap: the spent phones are looked at once, not on every
    pick; re-enabled or raised, or the next day, they are picked again."""
    rng = random.Random(4)
    roster = Roster()
    phones = []
    for i in range(1000):
        live = phone(rng, f"p{i:04d}")
        live.enabled, live.max_in_flight = True, 1
        live.daily_quota, live.sent_count = (5, 5) if i >= 10 else (10**6, 0)
        roster.put(live)
        phones.append(live)
    for _ in range(500):
        live = roster.pick()
        assert live is not None and live in phones[:10]
        live.mark_used()
    assert checks[0] < 990 + 3 * 500  # each spent phone once, then about one per pick

    spent = phones[500]
    spent.configure(name=spent.name, enabled=True, daily_quota=6)  # raised by an admin
    spent.set_status(100, True, 4, None)  # and the best signal in the farm
    assert roster.pick() is spent
    spent.configure(name=spent.name, enabled=False, daily_quota=6)
    assert roster.pick() is not spent
    calendar[0] += 1
    back = [p for p in phones[10:] if p is not spent]
    assert roster.pick(exclude={p.device_id for p in phones[:10]}) in back
    assert pick(roster.values()) is roster.pick()
