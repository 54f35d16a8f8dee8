"""One owner per message, checked on the wire: late accepts, reconnects, reinstalls and
removed phones. A raw WebSocket plays the phone where timing must be exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from android_client.outbox import MemoryPhoneStore
from smsgw.store.rules import DEVICE_REMOVED_ERROR
from tests.harness import Farm, HubProcess, HubServer, Phone, wait_for

TO = "+12025550999"


class RawPhone:
    """A hand-driven phone: sends exactly the frames a test asks for."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.n = 0

    @classmethod
    async def open(cls, hub: HubServer | HubProcess, token: str, **hello: Any) -> RawPhone:
        ws = await connect(
            hub.url.replace("http://", "ws://") + "/ws/device",
            additional_headers={"Authorization": f"Bearer {token}"},
        )
        phone = cls(ws)
        await phone.send("hello", protocol="1.0", battery=90, signal=4, **hello)
        return phone

    @classmethod
    async def enrolled(cls, hub: HubServer | HubProcess, farm: Farm) -> tuple[Phone, RawPhone]:
        """A freshly enrolled phone whose socket this test drives, past the welcome."""
        phone = await farm.add(connect=False)
        raw = await cls.open(hub, phone.token)
        await raw.expect("welcome")
        return phone, raw

    async def send(self, kind: str, **fields: Any) -> str:
        self.n += 1
        frame_id = f"p{self.n}"
        await self.ws.send(json.dumps({"type": kind, "id": frame_id, **fields}))
        return frame_id

    async def accept(self, offer: dict[str, Any]) -> str:
        """Answer a ``send`` frame with ``accepted``; returns the frame id."""
        return await self.send("accepted", message_id=offer["message_id"], attempt=offer["attempt"])

    async def fail(self, offer: dict[str, Any], code: str, error: str) -> None:
        """Report a retryable failure of a ``send`` frame's message and wait for the ack."""
        await self.send(
            "failed",
            message_id=offer["message_id"],
            attempt=offer["attempt"],
            error_code=code,
            error=error,
            retryable=True,
        )
        await self.expect("ack")

    async def expect(self, kind: str) -> dict[str, Any]:
        while True:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]


async def test_a_late_accept_is_refused_and_the_next_phone_owns_the_message(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _slow, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "once"}))
    offer = await raw.expect("send")
    good = await farm.add(deliver=False, signal=1)  # joins while the raw phone dawdles
    result = (await request).json()
    assert result["status"] == "SENT" and result["device_id"] == good.device_id
    # Now the slow phone accepts its old attempt: the hub must say it is not the owner.
    ref = await raw.accept(offer)
    answer = await raw.expect("ownership")
    assert answer == {**answer, "ref": ref, "owner": False}
    # And its reports about that message change nothing.
    await raw.send("sent", message_id=offer["message_id"], attempt=offer["attempt"])
    await raw.expect("ack")
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert msg["device_id"] == good.device_id and msg["status"] == "SENT"
    assert good.transmitted_ids == [offer["message_id"]]
    await raw.ws.close()


async def test_reconnect_confirms_held_messages_and_refuses_unknown_ones(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 3})
    )
    offer = await raw.expect("send")
    await raw.accept(offer)
    assert (await raw.expect("ownership"))["owner"] is True
    await raw.ws.close()  # connection lost before the radio reported
    r = await request
    assert r.status_code == 202 and r.json()["status"] == "QUEUED"  # still owned, not moved

    again = await RawPhone.open(hub, phone.token, held=[offer["message_id"], "not-mine"])
    await again.expect("welcome")
    answers = [await again.expect("ownership") for _ in range(2)]
    assert {(a["message_id"], a["owner"]) for a in answers} == {
        (offer["message_id"], True),
        ("not-mine", False),
    }
    await again.send("sent", message_id=offer["message_id"], attempt=offer["attempt"])
    await again.expect("ack")
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert msg["status"] == "SENT" and msg["device_id"] == phone.device_id
    await again.ws.close()


async def test_an_owned_message_the_phone_lost_is_sent_again_on_reconnect(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone = await farm.add(deliver=False, send_delay=30.0)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 2})
    assert r.status_code == 202 and r.json()["status"] == "QUEUED"
    mid = r.json()["message_id"]
    await phone.client.kill()
    # The app was reinstalled: same token, empty local store, a radio that works now.
    phone.store = MemoryPhoneStore()
    phone.backend.config.send_delay = 0.0
    await farm.restart(phone)

    async def sent() -> bool:
        return (await api.get(f"/sms/{mid}")).json()["status"] == "SENT"

    await wait_for(sent, what="the re-sent command to go out")
    assert phone.transmitted_ids == [mid]


async def test_removing_a_phone_hands_its_unsent_messages_to_another(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    doomed = await farm.add(deliver=False, send_delay=30.0, signal=4)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 1})
    mid = r.json()["message_id"]
    assert r.json()["status"] == "QUEUED"
    heir = await farm.add(deliver=False, signal=1)
    assert (await api.delete(f"/devices/{doomed.device_id}")).status_code == 204

    async def sent() -> bool:
        return (await api.get(f"/sms/{mid}")).json()["status"] == "SENT"

    await wait_for(sent, what="the heir to send")
    assert heir.transmitted_ids == [mid]
    msg = (await api.get(f"/sms/{mid}")).json()
    assert msg["device_id"] == heir.device_id
    assert [a["outcome"] for a in msg["attempts"]] == ["device_removed", "sent"]


async def test_inbound_duplicates_are_acknowledged_but_stored_once(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _phone, raw = await RawPhone.enrolled(hub, farm)
    sms = {
        "local_id": "L-1",
        "from": "+12025552222",
        "body": "hi",
        "received_at": "2026-11-22T10:00:00Z",
    }
    for _ in range(3):
        ref = await raw.send("inbound", **sms)
        assert (await raw.expect("ack"))["ref"] == ref
    items = (await api.get("/sms/inbound")).json()["items"]
    assert len(items) == 1 and items[0]["local_id"] == "L-1"
    assert items[0]["received_at"].startswith("2026-11-22T10:00:00")
    await raw.ws.close()


async def test_delivered_before_sent_frees_the_slot_and_counts_once(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "m"}))
    offer = await raw.expect("send")
    await raw.accept(offer)
    assert (await raw.expect("ownership"))["owner"] is True
    await raw.send("delivered", message_id=offer["message_id"], attempt=offer["attempt"])
    await raw.expect("ack")
    await raw.send("sent", message_id=offer["message_id"], attempt=offer["attempt"])
    await raw.expect("ack")
    assert (await request).json()["status"] == "DELIVERED"
    device = (await api.get(f"/devices/{phone.device_id}")).json()
    assert device["in_flight"] == 0 and device["sent_today"] == 1
    await raw.ws.close()


async def test_a_stale_failure_report_does_not_cancel_the_current_offer(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone, raw = await RawPhone.enrolled(hub, farm)
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "m", "wait": False})
    first = await raw.expect("send")  # not accepted: times out after 1 s
    second = await raw.expect("send")  # offered again by the outbox
    assert second["attempt"] == first["attempt"] + 1
    # The phone now reports a failure of the *old* attempt (a stale duplicate)...
    await raw.fail(first, "x", "stale")
    # ...and accepts the current one, which must still be on offer to it.
    await raw.accept(second)
    assert (await raw.expect("ownership"))["owner"] is True
    await raw.send("sent", message_id=second["message_id"], attempt=second["attempt"])
    await raw.expect("ack")
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["status"] == "SENT"
    device = (await api.get(f"/devices/{phone.device_id}")).json()
    assert device["in_flight"] == 0
    await raw.ws.close()


async def restarted_with_an_offer(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> tuple[Phone, asyncio.Task[httpx.Response], dict[str, Any], RawPhone]:
    """A dispatch offered to a phone whose app then restarts: the phone, the request, the
    offer its old socket got, and its new socket (hello sent, welcome not yet read)."""
    hub.hub.settings.accept_timeout = 30.0  # what follows must not wait for this
    phone, old = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 20})
    )
    first = await old.expect("send")
    new = await RawPhone.open(hub, phone.token)  # same phone, new socket
    return phone, request, first, new


async def test_offers_to_a_replaced_session_fail_over_at_once(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _phone, request, first, new = await restarted_with_an_offer(hub, api, farm)
    await new.expect("welcome")
    again = await asyncio.wait_for(new.expect("send"), 5)  # well before the 30 s timeout
    assert again["message_id"] == first["message_id"] and again["attempt"] == 2
    await new.accept(again)
    assert (await new.expect("ownership"))["owner"] is True
    await new.send("sent", message_id=again["message_id"], attempt=again["attempt"])
    assert (await request).json()["status"] == "SENT"
    await new.ws.close()


async def test_an_accept_resent_on_a_new_socket_races_the_replacement_and_one_wins(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    """The app restarts with an offer in hand and re-sends its accept on the new socket,
    right behind its hello: the replacement ends the old session's offer while the accept
    claims it. Whichever the hub takes, the message has one owner and goes out once."""
    phone, request, first, new = await restarted_with_an_offer(hub, api, farm)
    ref = await new.accept(first)  # no wait for the welcome: both frames land together
    answer = await new.expect("ownership")
    assert answer["ref"] == ref
    if answer["owner"]:  # the accept won: attempt 1 is the phone's, nothing is re-offered
        sent = first
    else:  # the replacement won: the offer ended, and the new socket gets attempt 2
        sent = await asyncio.wait_for(new.expect("send"), 5)
        assert sent["message_id"] == first["message_id"] and sent["attempt"] == 2
        await new.accept(sent)
        assert (await new.expect("ownership"))["owner"] is True
    await new.send("sent", message_id=sent["message_id"], attempt=sent["attempt"])
    result = (await request).json()
    assert result["status"] == "SENT" and result["device_id"] == phone.device_id
    msg = (await api.get(f"/sms/{first['message_id']}")).json()
    accepted = [a["attempt"] for a in msg["attempts"] if a["accepted_at"] is not None]
    assert accepted == [sent["attempt"]]  # one owner, ever
    assert [a["attempt"] for a in msg["attempts"]] == list(range(1, sent["attempt"] + 1))
    await new.ws.close()


async def test_an_accept_resent_after_the_replacement_re_offered_is_refused(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    """The other order of the race above, forced: the replacement has ended the offer and
    offered attempt 2 before the stale accept of attempt 1 arrives."""
    _phone, request, first, new = await restarted_with_an_offer(hub, api, farm)
    again = await asyncio.wait_for(new.expect("send"), 5)
    assert again["attempt"] == 2
    await new.accept(first)
    assert (await new.expect("ownership"))["owner"] is False
    await new.accept(again)
    assert (await new.expect("ownership"))["owner"] is True
    await new.send("sent", message_id=again["message_id"], attempt=2)
    assert (await request).json()["status"] == "SENT"
    msg = (await api.get(f"/sms/{first['message_id']}")).json()
    assert [(a["attempt"], a["accepted_at"] is not None) for a in msg["attempts"]] == [
        (1, False),
        (2, True),
    ]
    await new.ws.close()


# -- a new message is written once, with its first phone's accept ---------------------


async def test_a_new_message_is_stored_with_the_phones_accept(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "m"}))
    offer = await raw.expect("send")
    mid = offer["message_id"]
    # On offer to a phone of this hub, it is not written yet (nobody outside knows its id)...
    assert (await api.get(f"/sms/{mid}")).status_code == 404
    await raw.send("accepted", message_id=mid, attempt=offer["attempt"])
    assert (await raw.expect("ownership"))["owner"] is True
    # ...and is there, the phone's, by the time the phone hears that it owns it.
    msg = (await api.get(f"/sms/{mid}")).json()
    assert msg["status"] == "QUEUED" and msg["device_id"] == _phone.device_id
    assert [(a["attempt"], a["accepted_at"] is not None) for a in msg["attempts"]] == [(1, True)]
    await raw.send("sent", message_id=mid, attempt=offer["attempt"])
    result = (await request).json()
    assert result["status"] == "SENT" and result["message_id"] == mid
    await raw.ws.close()


async def test_a_phone_declining_an_unstored_offer_is_recorded_and_the_next_phone_sends(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _refuser, raw = await RawPhone.enrolled(hub, farm)
    good = await farm.add(deliver=False, signal=1)  # worse signal: offered second
    request = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "m"}))
    offer = await raw.expect("send")
    await raw.fail(offer, "no_sim", "SIM not ready")
    result = (await request).json()
    assert result["status"] == "SENT" and result["device_id"] == good.device_id
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert [(a["device_id"], a["outcome"], a["error_code"]) for a in msg["attempts"]] == [
        (_refuser.device_id, "failed_retryable", "no_sim"),
        (good.device_id, "sent", None),
    ]
    await raw.ws.close()


async def test_a_deadline_during_an_unstored_offer_answers_with_a_stored_message(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    _phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 0.3})
    )
    offer = await raw.expect("send")  # and no answer before the deadline
    r = await request
    assert r.status_code == 202
    # A 202 names a message that is stored: the client can look it up, cancel it...
    msg = (await api.get(f"/sms/{r.json()['message_id']}")).json()
    assert msg["status"] == "PENDING" and msg["attempts"][0]["outcome"] == "timeout"
    # ...and the phone's late accept of that offer is refused; the outbox offers it again.
    await raw.accept(offer)
    assert (await raw.expect("ownership"))["owner"] is False
    again = await raw.expect("send")
    assert again["message_id"] == offer["message_id"] and again["attempt"] == 2
    await raw.send("accepted", message_id=again["message_id"], attempt=2)
    assert (await raw.expect("ownership"))["owner"] is True
    await raw.ws.close()


def fail_inserts_once(
    monkeypatch: pytest.MonkeyPatch, hub: HubServer, *, accepted: bool
) -> list[str]:
    """Make the store's next insert of a message on offer fail inside its transaction,
    after ``create_message`` has set the message up (as a disk error would): the insert
    with the phone's accept (``accepted``) or the one of an offer that ended."""
    store = hub.hub.store
    insert = store._insert_offered
    failed: list[str] = []

    def insert_or_fail(
        m: Any, device_id: str, accepted_at: Any, now: Any
    ) -> Generator[Any, Any, bool]:
        if (accepted_at is not None) == accepted and not failed:
            failed.append(m.id)
            raise OSError("disk I/O error")
        return (yield from insert(m, device_id, accepted_at, now))

    monkeypatch.setattr(store, "_insert_offered", insert_or_fail)
    return failed


async def test_a_failed_write_of_the_accept_leaves_no_owner_and_the_message_goes_out(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = fail_inserts_once(monkeypatch, hub, accepted=True)
    _phone, raw = await RawPhone.enrolled(hub, farm)
    good = await farm.add(deliver=False, signal=1)
    request = asyncio.create_task(api.post("/sms/dispatch", json={"to": TO, "message": "m"}))
    offer = await raw.expect("send")
    await raw.accept(offer)
    # The phone is never told it owns it (the session ends on the failed write)...
    with pytest.raises(ConnectionClosed):
        await raw.expect("ownership")
    # ...and the message, written as the offer that ended (PENDING, not the QUEUED the
    # failed write was setting up), goes to the next phone.
    result = (await request).json()
    assert failed == [offer["message_id"]]
    assert result["status"] == "SENT" and result["device_id"] == good.device_id
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert [a["outcome"] for a in msg["attempts"]] == ["disconnected", "sent"]
    assert good.transmitted_ids == [offer["message_id"]]


async def test_a_failed_write_when_the_offer_ends_fails_the_request_and_refuses_the_phone(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    failed = fail_inserts_once(monkeypatch, hub, accepted=False)
    _phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 0.3})
    )
    offer = await raw.expect("send")  # no answer: the offer ends, and its write fails
    r = await request
    assert r.status_code == 500 and failed == [offer["message_id"]]
    # Nothing was stored and the client was told so: the phone must not own it either.
    await raw.accept(offer)
    assert (await raw.expect("ownership"))["owner"] is False
    assert (await api.get(f"/sms/{offer['message_id']}")).status_code == 404
    assert not hub.hub.dispatcher._unstored
    device = (await api.get(f"/devices/{_phone.device_id}")).json()
    assert device["in_flight"] == 0
    await raw.ws.close()


async def test_a_phone_removed_during_an_unstored_offer_cannot_own_the_message(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = hub.hub.registry
    tell = registry.tell_nodes

    async def slow_tell(news: Any) -> None:
        # The removal is committed, but the phone's socket stays open a little longer, as
        # it does on a cluster while the broker carries the news to the phone's node.
        await asyncio.sleep(0.3)
        await tell(news)

    monkeypatch.setattr(registry, "tell_nodes", slow_tell)
    phone, raw = await RawPhone.enrolled(hub, farm)
    request = asyncio.create_task(
        api.post("/sms/dispatch", json={"to": TO, "message": "m", "timeout": 2})
    )
    offer = await raw.expect("send")
    removal = asyncio.create_task(api.delete(f"/devices/{phone.device_id}"))
    await wait_for(
        lambda: store_says_removed(hub, phone.device_id), what="the removal to be committed"
    )
    await raw.accept(offer)
    assert (await raw.expect("ownership"))["owner"] is False
    assert (await removal).status_code == 204
    r = await request
    assert r.status_code == 202
    # Stored, for another phone: on offer to nobody, not owned by the removed one.
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert msg["status"] == "PENDING" and msg["device_id"] is None
    good = await farm.add(deliver=False)
    await wait_for(lambda: good.transmitted_ids == [offer["message_id"]], what="the new phone")


async def store_says_removed(hub: HubServer, device_id: str) -> bool:
    return await hub.hub.store.get_device(device_id) is None  # removed phones are not listed


async def test_a_hub_killed_during_an_unstored_offer_leaves_the_phone_nothing_to_own(
    tmp_path: Path,
) -> None:
    hub = await HubProcess(tmp_path / "hub.db").start()
    farm = Farm(lambda: hub.url)
    try:
        phone, raw = await RawPhone.enrolled(hub, farm)
        async with hub.client() as api:
            request = asyncio.create_task(
                api.post("/sms/dispatch", json={"to": TO, "message": "m"})
            )
            offer = await raw.expect("send")
            hub.kill()  # the request was never answered: the client knows no message
            with pytest.raises(httpx.HTTPError):
                await request
        hub = await HubProcess(tmp_path / "hub.db").start(port=hub.port)
        raw = await RawPhone.open(hub, phone.token)
        await raw.expect("welcome")
        await raw.accept(offer)
        assert (await raw.expect("ownership"))["owner"] is False  # so it does not send it
        async with hub.client() as api:
            assert (await api.get(f"/sms/{offer['message_id']}")).status_code == 404
            assert (await api.get("/sms/")).json()["items"] == []
        await raw.ws.close()
    finally:
        await farm.close()
        await hub.stop()


async def test_a_message_pinned_to_a_phone_removed_during_its_unstored_offer_fails(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    phone, raw = await RawPhone.enrolled(hub, farm)
    body = {"device_id": phone.device_id, "to": TO, "message": "m", "timeout": 3}
    request = asyncio.create_task(api.post("/sms/send", json=body))
    offer = await raw.expect("send")
    assert (await api.delete(f"/devices/{phone.device_id}")).status_code == 204
    # As a removal fails a stored message pinned to the phone: at once, and visibly.
    r = await request
    assert r.status_code == 200
    assert r.json()["status"] == "FAILED" and r.json()["error"] == DEVICE_REMOVED_ERROR
    msg = (await api.get(f"/sms/{offer['message_id']}")).json()
    assert msg["status"] == "FAILED" and msg["error_code"] == "device_removed"
    assert not hub.hub.dispatcher._unstored
