"""The store's side of SMSGate's 3rd-party API (smsgw/store/smsgate.py), on every engine:
a message to many recipients as a batch, listed by the aggregate state the app's rule
gives it (the same rule in SQL as in Python, checked over every mix of statuses), the
settings document, revoked tokens, and the new message columns."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest

from smsgw.clock import new_id, utcnow
from smsgw.store import Batch, Message, Status, Store
from smsgw.store.rules import RECIPIENT_STATE, group_state
from smsgw.store.smsgate import SMSGATE, GroupFilter
from smsgw.store.sql import UniqueViolation
from tests.builders import new_message
from tests.smsgw.store.test_store_contract import store  # noqa: F401


async def add_group(
    store: Store,  # noqa: F811
    statuses: list[Status],
    *,
    group_id: str | None = None,
    device: str | None = None,
    at: timedelta = timedelta(0),
) -> tuple[str, list[Message]]:
    gid = group_id or new_id()
    now = utcnow() + at
    messages = [
        new_message(
            status=s,
            batch_id=gid,
            custom_id=gid,
            created_at=now + timedelta(microseconds=i),
            device_id=device if s is not Status.PENDING else None,
            recipient=f"+1202555{i:04d}",
        )
        for i, s in enumerate(statuses)
    ]
    batch = Batch(gid, None, len(messages), 0, now, kind=SMSGATE)
    await store.create_batch(batch, messages)
    return gid, messages


async def test_the_aggregate_state_in_sql_is_the_apps_rule(store: Store) -> None:  # noqa: F811
    """Every mix of 1 to 3 recipient statuses: listing by state finds exactly the groups
    ``group_state`` puts in that state."""
    expected: dict[str, set[str]] = {}
    for n in (1, 2, 3):
        for mix in itertools.combinations_with_replacement(list(Status), n):
            gid, _ = await add_group(store, list(mix))
            state = group_state(RECIPIENT_STATE[s] for s in mix)
            expected.setdefault(state, set()).add(gid)
    assert set(expected) == {"Pending", "Cancelled", "Processed", "Failed", "Delivered", "Sent"}
    for state, ids in expected.items():
        found, total = await store.list_groups(GroupFilter(state=state, limit=100))
        assert {b.id for b, _ in found} == ids, state
        assert total == len(ids)


async def test_groups_are_paged_filtered_and_keep_their_recipients_order(store: Store) -> None:  # noqa: F811
    dev = new_id()
    ids = [
        (await add_group(store, [Status.SENT, Status.PENDING], at=timedelta(seconds=i)))[0]
        for i in range(5)
    ]
    on_dev, _ = await add_group(store, [Status.DELIVERED], device=dev, at=timedelta(seconds=9))
    page, total = await store.list_groups(GroupFilter(limit=2, offset=1))
    assert total == 6 and [b.id for b, _ in page] == [ids[4], ids[3]]
    page, _ = await store.list_groups(GroupFilter(limit=2, newest_first=False))
    assert [b.id for b, _ in page] == ids[:2]
    assert [m.recipient for m in page[0][1]] == ["+12025550000", "+12025550001"]
    page, total = await store.list_groups(GroupFilter(device_id=dev))
    assert total == 1 and page[0][0].id == on_dev
    third = await store.get_group(ids[2])
    assert third is not None
    start = third[0].created_at  # from (inclusive) and to (exclusive), as SMSGate's API
    page, total = await store.list_groups(
        GroupFilter(since=start, until=start + timedelta(seconds=2.5))
    )
    assert [b.id for b, _ in page] == [ids[4], ids[3], ids[2]] and total == 3
    # Only this API's groups: an smsgw batch is not listed, but reads by id.
    plain = Batch(new_id(), "bulk", 1, 0, utcnow())
    await store.create_batch(plain, [new_message(batch_id=plain.id)])
    assert (await store.list_groups(GroupFilter(limit=100)))[1] == 6
    found = await store.get_group(plain.id)
    assert found is not None and found[0].kind == "batch" and len(found[1]) == 1


async def test_a_group_id_is_taken_once_and_a_refused_group_writes_nothing(store: Store) -> None:  # noqa: F811
    gid, _ = await add_group(store, [Status.PENDING])
    with pytest.raises(UniqueViolation):
        await add_group(store, [Status.PENDING, Status.PENDING], group_id=gid)
    found = await store.get_group(gid)
    assert found is not None and len(found[1]) == 1


async def test_content_only_app_phones_send_keeps_its_columns(store: Store) -> None:  # noqa: F811
    data = new_message(data_port=53739, body="AAE=", delivery_report=False)
    secret = new_message(encrypted=True)
    await store.create_message(data)
    await store.create_batch(Batch(new_id(), None, 1, 0, utcnow()), [secret])
    got = await store.get_message(data.id)
    assert got is not None and got.data_port == 53739 and not got.delivery_report
    assert got.app_only and not got.encrypted
    got = await store.get_message(secret.id)
    assert got is not None and got.encrypted and got.delivery_report and got.app_only
    plain = await add_group(store, [Status.PENDING])
    assert not plain[1][0].app_only


async def test_the_settings_document_is_stored_once_then_replaced(store: Store) -> None:  # noqa: F811
    now = utcnow()
    first, second = await asyncio.gather(
        store.hub_setting("doc", {"k": 1}, now), store.hub_setting("doc", {"k": 2}, now)
    )
    assert first == second  # two nodes asking at once agree
    await store.put_hub_setting("doc", {"k": 3, "nested": {"x": True}}, now)
    assert await store.hub_setting("doc", {"k": 4}, now) == {"k": 3, "nested": {"x": True}}


async def test_revoked_tokens_are_remembered_until_they_expire(store: Store) -> None:  # noqa: F811
    now = utcnow()
    await store.revoke_token("a", now + timedelta(hours=1), now)
    await store.revoke_token("a", now + timedelta(hours=1), now)  # twice: no error
    await store.revoke_token("b", now + timedelta(seconds=1), now)
    assert await store.token_revoked("a") and await store.token_revoked("b")
    assert not await store.token_revoked("c")
    await store.revoke_token("c", now + timedelta(hours=1), now + timedelta(seconds=5))
    assert not await store.token_revoked("b")  # expired anyway: forgotten
