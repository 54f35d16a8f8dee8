"""The store's side of app phones (smsgw/app_phones.py), on every engine: the pull that is
the phone's accept, racing the offer's timeout and other phones; pinned messages taken by
a phone without a stream; what a pull hands back; app registration tokens."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from smsgw.clock import new_id, utcnow
from smsgw.store import AppToken, Status, Store
from tests.smsgw.store.test_store_contract import add_device, add_message, store  # noqa: F401


async def test_a_pull_takes_what_is_on_offer_to_it_and_nothing_else(store: Store) -> None:  # noqa: F811
    app, agent = await add_device(store, "app"), await add_device(store, "agent")
    mine, theirs, loose = [await add_message(store) for _ in range(3)]
    now = utcnow()
    lease = now + timedelta(seconds=5)
    assert await store.offer(mine.id, app, 0, now, lease)
    assert await store.offer(theirs.id, agent, 0, now, lease)
    claimed, held = await store.app_pull(app, now, pinned=10, limit=100)
    assert claimed == [(mine.id, 1)]
    assert [m.id for m in held] == [mine.id]
    got = await store.get_message(mine.id, with_attempts=True)
    assert got is not None and got.status is Status.QUEUED and got.device_id == app
    assert got.attempts[0].accepted_at == now
    # The pull is the accept: the agent's accept of its own offer still works, and a
    # repeated pull claims nothing new but hands back what the phone holds.
    assert await store.accept(theirs.id, agent, 1, now)
    claimed, held = await store.app_pull(app, now, pinned=10, limit=100)
    assert claimed == [] and [m.id for m in held] == [mine.id]
    # Taken in hand (Processed): no longer handed back.
    assert await store.mark_processed(mine.id, app, now)
    assert not await store.mark_processed(mine.id, app, now)
    assert not await store.mark_processed(theirs.id, app, now)  # not its own
    assert await store.app_pull(app, now, pinned=10, limit=100) == ([], [])
    loose_now = await store.get_message(loose.id)
    assert loose_now is not None and loose_now.status is Status.PENDING


async def test_a_pull_after_the_lease_ran_out_gets_nothing(store: Store) -> None:  # noqa: F811
    app = await add_device(store, "app")
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, app, 0, now, now + timedelta(seconds=2))
    later = now + timedelta(seconds=3)
    assert await store.app_pull(app, later, pinned=0, limit=100) == ([], [])
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.PENDING


async def test_a_pull_racing_the_timeout_either_claims_or_gets_nothing(store: Store) -> None:  # noqa: F811
    """The dispatcher's release at the timeout and the phone's pull, run together many
    times: exactly one of them wins each message, and the database agrees with it."""
    app = await add_device(store, "app")
    now = utcnow()
    outcomes = set()
    for i in range(30):
        msg = await add_message(store)
        assert await store.offer(msg.id, app, 0, now, now + timedelta(seconds=5))
        pull = store.app_pull(app, now, pinned=0, limit=100)
        release = store.release_offer(msg.id, app, 1, "timeout", now, now, 10)
        if i % 2:  # either may reach the database first
            (claimed, _held), released = await asyncio.gather(pull, release)
        else:
            released, (claimed, _held) = await asyncio.gather(release, pull)
        outcomes.add(bool(claimed))
        got = await store.get_message(msg.id)
        assert got is not None
        if claimed:
            assert claimed == [(msg.id, 1)] and released is None
            assert got.status is Status.QUEUED and got.device_id == app
            assert await store.mark_processed(msg.id, app, now)
        else:
            assert released is Status.PENDING
            assert got.status is Status.PENDING and got.device_id is None
    assert outcomes == {True, False}  # both orders were exercised


async def test_pinned_messages_go_to_the_pull_of_their_phone_only(store: Store) -> None:  # noqa: F811
    app, other = await add_device(store, "app"), await add_device(store, "other")
    now = utcnow()
    low = await add_message(store, pinned_device_id=app, priority=0)
    high = await add_message(store, pinned_device_id=app, priority=5)
    later = await add_message(store, pinned_device_id=app, next_attempt_at=now + timedelta(hours=1))
    expired = await add_message(store, pinned_device_id=app, expires_at=now - timedelta(seconds=1))
    elsewhere = await add_message(store, pinned_device_id=other)
    claimed, held = await store.app_pull(app, now, pinned=1, limit=100)
    assert claimed == [(high.id, 1)]  # the limit, highest priority first
    claimed, held = await store.app_pull(app, now, pinned=5, limit=100)
    assert claimed == [(low.id, 1)]
    assert [m.id for m in held] == [high.id, low.id]
    for m in (later, expired, elsewhere):
        got = await store.get_message(m.id)
        assert got is not None and got.status is Status.PENDING and got.device_id is None
    got = await store.get_message(low.id, with_attempts=True)
    assert got is not None and [(a.device_id, a.accepted_at) for a in got.attempts] == [(app, now)]
    # A pinned message on offer (the phone has a stream) is the offer's, not the pull's.
    msg = await add_message(store, pinned_device_id=app)
    assert await store.offer(msg.id, app, 0, now, now + timedelta(seconds=5))
    claimed, _ = await store.app_pull(app, now, pinned=5, limit=100)
    assert claimed == [(msg.id, 1)]


async def test_concurrent_pulls_of_two_phones_never_share_a_message(store: Store) -> None:  # noqa: F811
    """Two phones pulling pinned work at once, and a dispatcher offering the same messages
    to a third: each message ends with at most one owner."""
    a, b, c = [await add_device(store, x) for x in ("a", "b", "c")]
    now = utcnow()
    msgs = [await add_message(store, pinned_device_id=a if i % 2 else b) for i in range(20)]
    results = await asyncio.gather(
        store.app_pull(a, now, pinned=20, limit=100),
        store.app_pull(b, now, pinned=20, limit=100),
        *(store.offer(m.id, c, 0, now, now + timedelta(seconds=5)) for m in msgs),
    )
    claimed_a = {mid for mid, _ in results[0][0]}
    claimed_b = {mid for mid, _ in results[1][0]}
    offered_c = {m.id for m, ok in zip(msgs, results[2:], strict=True) if ok}
    assert not (claimed_a & claimed_b) and not (claimed_a & offered_c)
    assert not (claimed_b & offered_c)
    for m in msgs:
        got = await store.get_message(m.id)
        assert got is not None
        if m.id in claimed_a | claimed_b:
            assert got.status is Status.QUEUED
            assert got.device_id == (a if m.id in claimed_a else b)
            assert m.pinned_device_id == got.device_id
        elif m.id in offered_c:
            assert got.status is Status.PENDING and got.device_id == c


async def test_app_tokens_expire_and_are_revoked(store: Store) -> None:  # noqa: F811
    now = utcnow()
    live = AppToken(id=new_id(), name="a", prefix="apt_live", created_at=now, expires_at=None)
    timed = AppToken(
        id=new_id(),
        name=None,
        prefix="apt_timed",
        created_at=now,
        expires_at=now + timedelta(seconds=60),
    )
    await store.create_app_token(live, "hash-live")
    await store.create_app_token(timed, "hash-timed")
    found = await store.app_token_by_prefix("apt_live", now)
    assert found is not None and found[0].id == live.id and found[1] == "hash-live"
    assert await store.app_token_by_prefix("apt_timed", now) is not None
    assert await store.app_token_by_prefix("apt_timed", now + timedelta(seconds=61)) is None
    assert await store.revoke_app_token(live.id, now)
    assert not await store.revoke_app_token(live.id, now)
    assert await store.app_token_by_prefix("apt_live", now) is None
    assert [t.id for t in await store.list_app_tokens()] == [timed.id]
    await store.app_token_used(timed.id, now)
    [listed] = await store.list_app_tokens()
    assert listed.last_used_at == now
