"""Routes in the store (smsgw/store/routes.py, docs/routes.md) on every engine: CRUD with
sealed credentials, the claim that makes a route a message's single owner against
phones' offers and accepts, and reports that only move a message forward."""

from __future__ import annotations

from datetime import timedelta

import pytest

from smsgw.clock import new_id, utcnow
from smsgw.store import Conflict, Message, Status, Store
from smsgw.store.records import Route
from tests.smsgw.store.test_store_contract import add_device, add_message, select, store

__all__ = ["store"]


def new_route(name: str = "tw", **kw: object) -> Route:
    now = utcnow()
    route = Route(
        id=new_id(),
        kind="twilio",
        name=name,
        enabled=True,
        credentials={"account_sid": "AC1", "auth_token": "tok"},
        created_at=now,
        updated_at=now,
        price_per_segment=0.0075,
        currency="USD",
        policy={"after_seconds": 5},
    )
    for k, v in kw.items():
        setattr(route, k, v)
    return route


async def test_route_crud_and_unique_name(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    got = await store.get_route(r.id)
    assert got is not None and got.credentials == r.credentials and got.policy == r.policy
    assert (await store.get_route_by_name("tw")) is not None
    with pytest.raises(Conflict):
        await store.create_route(new_route())
    updated = await store.update_route(
        r.id, utcnow(), enabled=False, credentials={"account_sid": "AC2", "auth_token": "t2"}
    )
    assert updated is not None and not updated.enabled
    assert updated.credentials["account_sid"] == "AC2"
    assert [x.name for x in await store.list_routes()] == ["tw"]
    assert await store.delete_route(r.id, utcnow())
    assert await store.get_route(r.id) is None
    assert not await store.delete_route(r.id, utcnow())


async def test_a_route_claim_fences_a_phones_late_accept(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    dev = await add_device(store, "p1")
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, dev, 0, now, now + timedelta(seconds=1))
    # While the phone's offer is live, the route cannot take it.
    assert not await store.claim_for_route(msg.id, r.id, now)
    later = now + timedelta(seconds=2)
    assert await store.claim_for_route(msg.id, r.id, later)
    # The phone's accept of its expired offer (attempt 1) never succeeds now.
    assert not await store.accept(msg.id, dev, 1, later)
    assert await store.mark_sent(msg.id, dev, later) is None
    got = await store.get_message(msg.id, with_attempts=True)
    assert got is not None and got.status is Status.QUEUED
    assert got.route_id == r.id and got.device_id is None and got.attempt == 2
    assert [a.outcome for a in got.attempts] == ["expired", None]
    # A second claim (another node) loses.
    assert not await store.claim_for_route(msg.id, r.id, later)


async def test_a_route_never_takes_what_a_phone_accepted(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    dev = await add_device(store, "p1")
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, dev, 0, now, now + timedelta(seconds=1))
    assert await store.accept(msg.id, dev, 1, now)
    assert not await store.claim_for_route(msg.id, r.id, now + timedelta(seconds=5))


async def test_forced_messages_are_never_due_for_phones(store: Store) -> None:
    r = new_route()
    other = new_route("sns", kind="sns")
    await store.create_route(r)
    await store.create_route(other)
    forced = await add_message(store, route_id=r.id, route_forced=True)
    free = await add_message(store)
    now = utcnow()
    assert [m.id for m in await store.due_messages(now, 10)] == [free.id]
    due = await store.due_for_routes(now, now - timedelta(seconds=60), 10)
    assert [m.id for m in due] == [forced.id]  # the free one is too young
    due = await store.due_for_routes(now, now + timedelta(seconds=1), 10)
    assert {m.id for m in due} == {forced.id, free.id}
    assert not await store.claim_for_route(forced.id, other.id, now)  # bound elsewhere
    assert await store.claim_for_route(forced.id, r.id, now)


async def _claimed(store: Store, route: Route) -> Message:
    msg = await add_message(store, parts=2)
    assert await store.claim_for_route(msg.id, route.id, utcnow())
    return msg


async def test_reports_only_move_forward(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    msg = await _claimed(store, r)
    now = utcnow()
    assert await store.route_accepted(
        msg.id, r.id, "SM1", now, sent=False, cost=0.015, currency="USD"
    )
    # Delivered before sent: delivered (it implies sent); the late sent changes nothing.
    assert await store.route_report(r.id, "SM1", Status.DELIVERED, now)
    assert not await store.route_report(r.id, "SM1", Status.SENT, now)
    assert not await store.route_report(r.id, "SM1", Status.DELIVERED, now)
    assert not await store.route_report(r.id, "SM1", Status.FAILED, now, error_code="30003")
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.DELIVERED and got.sent_at is not None
    assert got.route_message_id == "SM1" and got.cost == pytest.approx(0.015)
    assert await store.route_cost_since(r.id, now - timedelta(hours=1)) == pytest.approx(0.015)


async def test_synchronous_answers(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    now = utcnow()
    sent = await _claimed(store, r)
    assert await store.route_accepted(sent.id, r.id, "mid", now, sent=True)
    got = await store.get_message(sent.id)
    assert got is not None and got.status is Status.SENT
    refused = await _claimed(store, r)
    status = await store.route_refused(
        refused.id, r.id, now, error_code="21211", error="invalid To", retry_at=None
    )
    assert status is Status.FAILED
    got = await store.get_message(refused.id)
    assert got is not None and got.status is Status.FAILED and got.error_code == "21211"
    # Transient: PENDING again, free for anyone (it was not forced).
    busy = await _claimed(store, r)
    status = await store.route_refused(
        busy.id, r.id, now, error_code="20429", error="busy", retry_at=now
    )
    got = await store.get_message(busy.id)
    assert status is Status.PENDING and got is not None and got.route_id is None
    assert busy.id in [m.id for m in await store.due_messages(now, 10)]
    # Forced and transient: PENDING, still bound to the route.
    forced = await add_message(store, route_id=r.id, route_forced=True)
    assert await store.claim_for_route(forced.id, r.id, now)
    await store.route_refused(forced.id, r.id, now, error_code="20429", error="", retry_at=now)
    got = await store.get_message(forced.id)
    assert got is not None and got.status is Status.PENDING and got.route_id == r.id
    assert forced.id not in [m.id for m in await store.due_messages(now, 10)]


async def test_an_unanswered_claim_fails_rather_than_sends_twice(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    msg = await _claimed(store, r)
    now = utcnow()
    assert await store.fail_unanswered_route_sends(now, now - timedelta(seconds=60)) == []
    assert await store.fail_unanswered_route_sends(now, now + timedelta(seconds=1)) == [msg.id]
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.FAILED and got.error_code == "route_unknown"
    # The provider's late answer changes nothing.
    assert not await store.route_accepted(msg.id, r.id, "late", now, sent=True)


async def test_removing_a_route_fails_what_was_bound_to_it(store: Store) -> None:
    r = new_route()
    await store.create_route(r)
    msg = await add_message(store, route_id=r.id, route_forced=True)
    assert await store.delete_route(r.id, utcnow())
    got = await store.get_message(msg.id)
    assert got is not None and got.status is Status.FAILED and got.error_code == "route_removed"


async def test_credentials_are_sealed_with_a_key(store: Store) -> None:
    from smsgw.secretbox import SecretBox

    store.box = SecretBox("k1-" + "a" * 40)
    from dataclasses import replace

    store.dec = replace(store.d.decoder, secret=store.box.open)
    r = new_route()
    await store.create_route(r)
    found = await store.driver.read(lambda: select("SELECT credentials FROM routes"))
    assert "tok" not in found[0][0]
    got = await store.get_route(r.id)
    assert got is not None and got.credentials["auth_token"] == "tok"


async def test_route_credentials_are_sealed_when_a_key_comes(store: Store) -> None:
    """A store opened with a key seals what was stored in clear (as at a hub's start)."""
    from dataclasses import replace

    from smsgw.secretbox import SecretBox

    r = new_route()
    await store.create_route(r)
    store.box = SecretBox("k1-" + "a" * 40)
    store.dec = replace(store.d.decoder, secret=store.box.open)
    report = await store.seal_secrets()
    assert report.rewritten >= 1
    found = await store.driver.read(lambda: select("SELECT credentials FROM routes"))
    assert found[0][0].startswith("enc:") and "tok" not in found[0][0]
    got = await store.get_route(r.id)
    assert got is not None and got.credentials["auth_token"] == "tok"
    await store.seal_secrets(clear=True)
    found = await store.driver.read(lambda: select("SELECT credentials FROM routes"))
    assert "tok" in found[0][0]
