"""The event outbox contract: events written with the state change, one delivery per
subscriber, nothing for nobody, per-subject order, retries, dead letters, auto-disable.
Runs on every store implementation (the ``store`` fixture of the contract suite)."""

from __future__ import annotations

import json
from datetime import timedelta

from smsgw.clock import new_id, utcnow
from smsgw.store import (
    DeliveryAttempt,
    DeliveryStatus,
    Inbound,
    Message,
    Status,
    Store,
    Webhook,
)
from tests.builders import new_message
from tests.smsgw.store.test_store_contract import add_device, add_message, store

__all__ = ["store"]  # the parametrized fixture, shared with the contract suite


async def add_hook(store: Store, *events: str, url: str = "http://127.0.0.1:9/h") -> Webhook:
    now = utcnow()
    hook = Webhook(
        id=new_id(),
        url=url,
        events=frozenset(events),
        description=None,
        enabled=True,
        secret="whsec_test",
        created_at=now,
        updated_at=now,
    )
    await store.create_webhook(hook)
    return hook


async def due(store: Store, limit: int = 100) -> list[tuple[str, dict[str, object]]]:
    now = utcnow()
    claimed = await store.claim_deliveries(now, now + timedelta(seconds=60), limit)
    return [(d.event_type, json.loads(d.payload)) for d in claimed]


def attempt(n: int, code: int | None = 500) -> DeliveryAttempt:
    return DeliveryAttempt(n, utcnow(), code, None if code == 204 else "HTTP 500", 3)


async def fail(
    store: Store,
    delivery_id: str,
    what: DeliveryAttempt,
    *,
    max_attempts: int,
    disable_after: float = 3600,
) -> tuple[DeliveryStatus, bool] | None:
    """A failed attempt, with a retry time (the store decides whether it is the last)."""
    return await store.finish_delivery(
        delivery_id,
        what,
        succeeded=False,
        retry_at=utcnow(),
        default_max_attempts=max_attempts,
        disable_after=disable_after,
    )


async def deliver_one_message(store: Store, device: str) -> str:
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, device, 0, now, now + timedelta(seconds=5))
    assert await store.accept(msg.id, device, 1, now)
    assert await store.mark_sent(msg.id, device, now)
    assert await store.mark_delivered(msg.id, device, utcnow())
    return msg.id


async def test_nothing_is_written_when_nobody_subscribes(store: Store) -> None:
    device = await add_device(store, "a")
    await deliver_one_message(store, device)
    assert await due(store) == []


async def test_message_events_follow_each_transition_once(store: Store) -> None:
    device = await add_device(store, "a")
    hook = await add_hook(store, "*")
    mid = await deliver_one_message(store, device)
    rows = await store.list_deliveries(hook.id, status=None, after=None, limit=10)
    assert sorted(d.event_type for d in rows) == [
        "message.delivered",
        "message.queued",
        "message.sent",
    ]
    # Only the oldest pending event of a message is claimable at a time, and finishing
    # it releases the next: receivers see one message's events in the order they happened.
    seen = []
    for _ in range(3):
        now = utcnow()
        claimed = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
        assert len(claimed) == 1
        d = claimed[0]
        body = json.loads(d.payload)
        assert body["type"] == d.event_type and body["data"]["message_id"] == mid
        assert body["id"] == d.event_id and "message" not in body["data"]
        seen.append((d.event_type, body["data"]["status"]))
        await store.finish_delivery(
            d.id,
            attempt(1, 204),
            succeeded=True,
            retry_at=None,
            default_max_attempts=3,
            disable_after=60,
        )
    assert seen == [
        ("message.queued", "QUEUED"),
        ("message.sent", "SENT"),
        ("message.delivered", "DELIVERED"),
    ]
    assert await due(store) == []


async def test_a_late_sent_after_delivered_raises_no_event(store: Store) -> None:
    device = await add_device(store, "a")
    await add_hook(store, "message.sent", "message.delivered")
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, device, 0, now, now + timedelta(seconds=5))
    assert await store.accept(msg.id, device, 1, now)
    assert await store.mark_delivered(msg.id, device, now)
    assert await store.mark_sent(msg.id, device, now) is None  # stale: no change
    assert [t for t, _ in await due(store)] == ["message.delivered"]


async def test_subscriptions_filter_by_type_and_follow_updates(store: Store) -> None:
    device = await add_device(store, "a")
    hook = await add_hook(store, "message.failed")
    await deliver_one_message(store, device)
    assert await due(store) == []
    await store.update_webhook(hook.id, utcnow(), events=frozenset({"message.sent"}))
    await deliver_one_message(store, device)
    assert [t for t, _ in await due(store)] == ["message.sent"]
    await store.update_webhook(hook.id, utcnow(), enabled=False)
    await deliver_one_message(store, device)
    assert await due(store) == []
    assert await store.delete_webhook(hook.id)
    assert await store.get_webhook(hook.id) is None
    assert await store.list_deliveries(hook.id, status=None, after=None, limit=10) == []


async def test_cancel_expire_inbound_otp_and_device_events(store: Store) -> None:
    await add_hook(store, "*")
    device = await add_device(store, "a")
    cancelled = await add_message(store)
    assert (await store.cancel_message(cancelled.id, utcnow())) is not None
    expired = await add_message(store, expires_at=utcnow() - timedelta(seconds=1))
    assert await store.expire_messages(utcnow()) == [expired.id]
    now = utcnow()
    inbound = Inbound("", device, "local-1", "+12025550100", "hello", None, now, now)
    assert await store.store_inbound(inbound)
    assert not await store.store_inbound(inbound)  # a duplicate raises nothing
    # The battery crossing below the line raises battery_low once, not on every report.
    await store.device_online(
        device,
        sims=[],
        app_version="1",
        fcm_token=None,
        battery=50,
        charging=False,
        signal=3,
        network=None,
        now=now,
    )
    for level in (12, 10):
        await store.record_device_status(
            device, battery=level, charging=False, signal=3, network=None, now=utcnow()
        )
    await store.record_device_status(
        device, battery=9, charging=False, signal=3, network=None, now=utcnow(), offline=True
    )
    types = [t for t, _ in await due(store)]
    assert sorted(types) == [
        "device.online",  # device events share one subject: only the oldest is due
        "message.cancelled",
        "message.failed",
        "sms.received",
    ]
    [(_, failed)] = [e for e in await _all_events(store) if e[0] == "message.failed"]
    assert failed["data"]["error_code"] == "expired"  # type: ignore[index]
    device_events = [t for t, _ in await _all_events(store) if t.startswith("device.")]
    assert device_events == ["device.online", "device.battery_low", "device.offline"]


async def _all_events(store: Store) -> list[tuple[str, dict[str, object]]]:
    hooks = await store.list_webhooks()
    found = []
    for h in hooks:
        rows = await store.list_deliveries(h.id, status=None, after=None, limit=500)
        found += [(d.created_at, d.id, d.event_type, json.loads(d.payload)) for d in rows]
    return [(t, p) for _, _, t, p in sorted(found, key=lambda r: (r[0], r[1]))]


async def test_retry_then_dead_then_replay(store: Store) -> None:
    hook = await add_hook(store, "message.cancelled")
    msg = await add_message(store)
    await store.cancel_message(msg.id, utcnow())
    now = utcnow()
    [d] = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
    # Leased: a second worker does not get it.
    assert await store.claim_deliveries(utcnow(), now + timedelta(seconds=60), 10) == []
    status = await fail(store, d.id, attempt(1), max_attempts=2)
    assert status == (DeliveryStatus.PENDING, False)
    now = utcnow()
    [again] = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
    assert again.id == d.id and again.attempts == 1 and again.payload == d.payload
    status = await fail(store, d.id, attempt(2), max_attempts=2)
    assert status == (DeliveryStatus.DEAD, False)
    dead = await store.list_deliveries(hook.id, status=DeliveryStatus.DEAD, after=None, limit=5)
    assert [x.id for x in dead] == [d.id]
    assert [a.attempt for a in dead[0].history] == [1, 2]
    assert dead[0].history[0].status_code == 500
    replayed = await store.replay_delivery(d.id, utcnow())
    assert replayed is not None and replayed.status is DeliveryStatus.PENDING
    now = utcnow()
    [third] = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
    assert third.id == d.id
    # A replay is one more attempt: failing again makes it dead again, not retried.
    status = await fail(store, d.id, attempt(3), max_attempts=2)
    assert status == (DeliveryStatus.DEAD, False)
    assert await store.replay_delivery("nope", utcnow()) is None
    assert await store.purge_deliveries(utcnow() + timedelta(seconds=1)) == 1
    assert await store.get_delivery(d.id) is None


async def test_an_endpoint_failing_long_enough_is_disabled_and_re_enabled(
    store: Store,
) -> None:
    hook = await add_hook(store, "message.cancelled")
    for _ in range(2):
        await store.cancel_message((await add_message(store)).id, utcnow())
    now = utcnow()
    first, second = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
    result = await fail(store, first.id, attempt(1), max_attempts=5, disable_after=0.05)
    assert result == (DeliveryStatus.PENDING, False)
    later = DeliveryAttempt(1, utcnow() + timedelta(seconds=1), 500, "HTTP 500", 1)
    result = await fail(store, second.id, later, max_attempts=5, disable_after=0.05)
    assert result == (DeliveryStatus.PENDING, True)
    off = await store.get_webhook(hook.id)
    assert off is not None and not off.enabled and off.disabled_reason
    assert off.disabled_at is not None and off.failing_since is not None
    # Disabled: its pending deliveries wait, and new events are not queued for it.
    assert await due(store) == []
    await store.cancel_message((await add_message(store)).id, utcnow())
    assert len(await store.list_deliveries(hook.id, status=None, after=None, limit=10)) == 2
    on = await store.update_webhook(hook.id, utcnow(), enabled=True)
    assert on is not None and on.enabled and on.failing_since is None and on.disabled_at is None
    assert len(await due(store)) == 2


async def test_rotation_keeps_the_old_secret_until_the_grace_ends(store: Store) -> None:
    hook = await add_hook(store, "*")
    until = utcnow() + timedelta(hours=1)
    rotated = await store.rotate_webhook_secret(hook.id, "whsec_new", until, utcnow())
    assert rotated is not None
    assert (rotated.secret, rotated.previous_secret) == ("whsec_new", "whsec_test")
    assert rotated.previous_secret_until == until
    assert await store.rotate_webhook_secret("nope", "x", until, utcnow()) is None


async def test_callback_url_gets_the_message_events(store: Store) -> None:
    device = await add_device(store, "a")
    msg = await add_message(store, callback_url="http://127.0.0.1:9/cb")
    now = utcnow()
    assert await store.offer(msg.id, device, 0, now, now + timedelta(seconds=5))
    assert await store.accept(msg.id, device, 1, now)
    got = await store.get_message(msg.id)
    assert got is not None and got.callback_url == "http://127.0.0.1:9/cb"
    now = utcnow()
    [d] = await store.claim_deliveries(now, now + timedelta(seconds=60), 10)
    assert (d.webhook_id, d.url, d.event_type) == (None, "http://127.0.0.1:9/cb", "message.queued")
    assert got.status is Status.QUEUED


async def test_a_message_stored_with_its_accept_is_what_create_and_accept_leave(
    store: Store,
) -> None:
    """create_message(offer_to=, accepted_at=) writes in one transaction exactly what an
    insert on offer followed by the phone's accept writes: row, attempt and event."""
    device = await add_device(store, "a")
    await add_hook(store, "*")
    now = utcnow()
    lease = now + timedelta(seconds=5)
    two_writes, one_write = new_message(created_at=now), new_message(created_at=now)
    await store.create_message(two_writes, offer_to=device, lease_until=lease)
    assert await store.accept(two_writes.id, device, 1, now)
    await store.create_message(one_write, offer_to=device, lease_until=lease, accepted_at=now)
    # Idempotent like accept, and the phone's reports apply as usual.
    assert await store.accept(one_write.id, device, 1, now)

    def view(m: Message | None) -> dict[str, object]:
        assert m is not None
        return {
            **{k: getattr(m, k) for k in ("status", "device_id", "attempt", "lease_until")},
            **{k: getattr(m, k) for k in ("queued_at", "updated_at")},
            "attempts": [(a.attempt, a.device_id, a.accepted_at, a.ended_at) for a in m.attempts],
        }

    got = [await store.get_message(m.id, with_attempts=True) for m in (two_writes, one_write)]
    assert view(got[0]) == view(got[1])
    assert view(got[1])["status"] is Status.QUEUED and view(got[1])["lease_until"] is None
    events = {body["data"]["message_id"]: (kind, body["data"]) for kind, body in await due(store)}
    kind, data = events[one_write.id]
    assert kind == "message.queued"
    assert data == {**events[two_writes.id][1], "message_id": one_write.id}
    assert await store.mark_sent(one_write.id, device, now) == one_write.recipient


async def test_a_webhook_removed_behind_a_stale_cache_costs_the_change_nothing(
    store: Store,
) -> None:
    """Another node removed the webhook a moment ago and this node's cache has not heard
    yet (NOTIFY is on its way): the state change stands, with no delivery for the gone
    endpoint. Before, its delivery row broke the webhook foreign key and failed the
    change itself, a phone's accept or report with it."""
    device = await add_device(store, "a")
    hook = await add_hook(store, "message.queued", "message.sent")
    other = await add_hook(store, "message.sent")
    assert await store.delete_webhook(hook.id)
    store._subs.set(hook.id, hook.url, hook.events, True)  # the stale cache
    msg = await add_message(store)
    now = utcnow()
    assert await store.offer(msg.id, device, 0, now, now + timedelta(seconds=5))
    assert await store.accept(msg.id, device, 1, now)
    assert await store.mark_sent(msg.id, device, now) == msg.recipient
    claimed = await store.claim_deliveries(utcnow(), utcnow() + timedelta(seconds=60), 10)
    assert [(d.webhook_id, d.event_type) for d in claimed] == [(other.id, "message.sent")]
