"""The store's side of the dashboard, on every engine: sign-in sessions (expiry, sign-out,
a revoked key's sessions gone with it), a recipient's messages, a message's webhook
deliveries, and the hourly counts and failovers of the overview."""

from __future__ import annotations

from datetime import timedelta

from smsgw.auth import issue_api_key
from smsgw.clock import new_id, utcnow
from smsgw.store import Status, Store, UiSession
from smsgw.store.records import MessageFilter
from tests.smsgw.store.test_events_contract import add_hook, deliver_one_message
from tests.smsgw.store.test_store_contract import add_device, add_message, store

__all__ = ["store"]


def session(key_id: str | None, ttl: float = 60.0) -> UiSession:
    now = utcnow()
    return UiSession(
        id_hash=new_id(),
        key_id=key_id,
        env_key="envhash" if key_id is None else None,
        csrf="tok",
        created_at=now,
        expires_at=now + timedelta(seconds=ttl),
    )


async def test_sessions_expire_end_and_go_with_their_key(store: Store) -> None:
    _, key = await issue_api_key(store, "k", frozenset({"read"}), utcnow())
    mine, env, short = session(key.id), session(None), session(key.id, ttl=1)
    for s in (mine, env, short):
        await store.create_ui_session(s)
    now = utcnow()
    assert await store.ui_session(mine.id_hash, now) == mine
    assert await store.ui_session(env.id_hash, now) == env
    assert await store.ui_session(short.id_hash, now + timedelta(seconds=2)) is None
    assert await store.ui_session("unknown", now) is None
    # Sign-out removes the session, and expired ones with it.
    await store.end_ui_session(env.id_hash, now + timedelta(seconds=2))
    assert await store.ui_session(env.id_hash, now) is None
    assert await store.ui_session(short.id_hash, now) is None
    assert await store.ui_session(mine.id_hash, now) == mine
    # Revoking the key ends its sessions in the same write.
    other = session(key.id)
    await store.create_ui_session(other)
    assert await store.revoke_api_key(key.id, now)
    assert await store.ui_session(mine.id_hash, now) is None
    assert await store.ui_session(other.id_hash, now) is None


async def test_a_recipients_messages(store: Store) -> None:
    a = [await add_message(store, recipient="+12025550001") for _ in range(3)]
    await add_message(store, recipient="+12025550002")
    found = await store.list_messages(MessageFilter(recipient="+12025550001", limit=2))
    newest_first = sorted(a, key=lambda m: (m.created_at, m.id), reverse=True)
    assert [m.id for m in found] == [m.id for m in newest_first[:2]]
    assert await store.list_messages(MessageFilter(recipient="+19999999999")) == []


async def test_a_messages_webhook_deliveries(store: Store) -> None:
    await add_hook(store, "message.sent", "message.delivered")
    await add_hook(store, "message.delivered", url="http://127.0.0.1:9/other")
    device = await add_device(store, "hw-d")
    message_id = await deliver_one_message(store, device)
    other_id = await deliver_one_message(store, device)
    found = await store.subject_deliveries(message_id)
    kinds = sorted(d.event_type for d in found)
    assert kinds == ["message.delivered", "message.delivered", "message.sent"]
    assert all(other_id not in d.payload for d in found)
    assert [d.created_at for d in found] == sorted(d.created_at for d in found)


async def test_hourly_counts_and_failovers(store: Store) -> None:
    a, b = await add_device(store, "hw-a"), await add_device(store, "hw-b")
    now = utcnow()
    failed_over = await add_message(store)
    assert await store.offer(failed_over.id, a, 0, now, now + timedelta(seconds=5))
    status = await store.release_offer(failed_over.id, a, 1, "timeout", now, None, 5)
    assert status is Status.PENDING
    assert await store.offer(failed_over.id, b, 1, now, now + timedelta(seconds=5))
    await add_message(store, created_at=now - timedelta(hours=3))
    s = await store.stats(now - timedelta(hours=24), now + timedelta(seconds=1))
    assert s.failovers == 1
    hour = now.strftime("%Y-%m-%dT%H")
    earlier = (now - timedelta(hours=3)).strftime("%Y-%m-%dT%H")
    assert s.by_hour[hour] == {"PENDING": 1}
    assert s.by_hour[earlier] == {"PENDING": 1}
    assert sum(sum(c.values()) for c in s.by_hour.values()) == 2
