"""Unit tests of PhoneProtocol: the device-side rules, with no socket and no radio."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from android_client.backend import DeviceStatus, InboundSms, SendResult, SimInfo
from android_client.outbox import HeldCommand, MemoryPhoneStore
from android_client.protocol import (
    Accept,
    Action,
    Emit,
    PhoneProtocol,
    Transmit,
    Welcomed,
)

STATUS = DeviceStatus(battery=77, charging=True, signal=2, network="LTE")


def make(store: MemoryPhoneStore | None = None, **kw: Any) -> PhoneProtocol:
    return PhoneProtocol(store or MemoryPhoneStore(), id_prefix="t", **kw)


def frames(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.frame for a in actions if isinstance(a, Emit)]


def send(mid: str, attempt: int = 1, sim_slot: int | None = None) -> dict[str, Any]:
    return {
        "type": "send",
        "id": f"s-{mid}-{attempt}",
        "message_id": mid,
        "attempt": attempt,
        "to": "+15550001",
        "body": "hello",
        "sim_slot": sim_slot,
        "parts": 1,
        "expires_at": None,
    }


def ownership(mid: str, owner: bool, attempt: int = 1, ref: str | None = None) -> dict[str, Any]:
    return {
        "type": "ownership",
        "id": "o",
        "ref": ref,
        "message_id": mid,
        "attempt": attempt,
        "owner": owner,
    }


def welcome(p: PhoneProtocol) -> list[Action]:
    return p.receive(
        {
            "type": "welcome",
            "id": "w",
            "ref": p.hello_id,
            "device_id": "d1",
            "heartbeat_interval": 5,
        }
    )


def ack(ref: str) -> dict[str, Any]:
    return {"type": "ack", "id": "a", "ref": ref}


def offer_and_accept(p: PhoneProtocol, mid: str, attempt: int = 1) -> dict[str, Any]:
    assert p.receive(send(mid, attempt)) == [Accept(mid, attempt)]
    [accepted] = frames(p.accept(mid, attempt))
    return accepted


def own(p: PhoneProtocol, mid: str, attempt: int = 1) -> HeldCommand:
    offer_and_accept(p, mid, attempt)
    [action] = p.receive(ownership(mid, True, attempt))
    assert isinstance(action, Transmit)
    return action.command


def test_hello_lists_held_commands_and_status() -> None:
    store = MemoryPhoneStore()
    store.put_held(HeldCommand("m1", 1, "+1", "b", None))
    p = make(store, app_version="x-1")
    hello = p.hello(STATUS, [SimInfo(0, "Acme"), SimInfo(1)])
    assert hello == {
        "type": "hello",
        "id": hello["id"],
        "protocol": "1.0",
        "app_version": "x-1",
        "battery": 77,
        "charging": True,
        "signal": 2,
        "network": "LTE",
        "sims": [{"slot": 0, "carrier": "Acme"}, {"slot": 1}],
        "held": ["m1"],
    }
    assert p.hello_id == hello["id"]


def test_frame_ids_are_unique() -> None:
    p = make()
    ids = {p.hello(STATUS, [])["id"]} | {p.heartbeat(STATUS)["id"] for _ in range(50)}
    assert len(ids) == 51


def test_welcome_opens_the_session() -> None:
    p = make()
    p.hello(STATUS, [])
    assert welcome(p) == [Welcomed("d1", 5.0)]
    assert p.device_id == "d1"


def test_send_is_stored_then_accepted_after_the_delay() -> None:
    p = make()
    assert p.receive(send("m1")) == [Accept("m1", 1)]
    held = p.store.get_held("m1")
    assert held is not None and held.state == "accepted" and held.to == "+15550001"
    [accepted] = frames(p.accept("m1", 1))
    assert accepted == {"type": "accepted", "id": accepted["id"], "message_id": "m1", "attempt": 1}


def test_duplicate_send_is_dropped() -> None:
    p = make()
    p.receive(send("m1", 1))
    assert p.receive(send("m1", 1)) == []
    held = p.store.get_held("m1")
    assert held is not None and held.attempt == 1


def test_the_same_message_offered_again_under_a_new_attempt_replaces_the_old_one() -> None:
    """The hub gave up on attempt 1 (its offer timed out) and offers the message to this
    phone again: the phone accepts attempt 2, and its delayed accept of attempt 1 is not
    sent (it would be disowned). An owned message is not taken again."""
    store = MemoryPhoneStore()
    p = make(store)
    welcome(p)
    assert p.receive(send("m1", 1)) == [Accept("m1", 1)]
    assert p.receive(send("m1", 2)) == [Accept("m1", 2)]
    assert p.accept("m1", 1) == []  # the old attempt's accept delay ran out: nothing
    (accepted,) = frames(p.accept("m1", 2))
    assert accepted["attempt"] == 2
    assert p.receive(send("m1", 2)) == []  # the same offer again
    assert p.receive(send("m1", 1)) == []  # an older one
    p.receive(ownership("m1", True, attempt=2))
    assert store.get_held("m1") is not None and store.get_held("m1").state == "owned"  # type: ignore[union-attr]
    assert p.receive(send("m1", 3)) == []  # owned: never transmitted twice


def test_not_accepting_ignores_sends_entirely() -> None:
    p = make(accepting=lambda: False)
    assert p.receive(send("m1")) == []
    assert p.store.held() == [] and p.store.reports() == []


def test_send_for_a_missing_sim_is_refused_as_retryable() -> None:
    p = make()
    p.hello(STATUS, [SimInfo(0)])
    [failed] = frames(p.receive(send("m1", 3, sim_slot=1)))
    assert failed["type"] == "failed" and failed["message_id"] == "m1"
    assert failed["attempt"] == 3 and failed["retryable"] is True
    assert failed["error_code"] == "no_sim"
    assert p.store.held() == []
    assert p.store.reports() == [failed]  # kept until acked, like any report


def test_transmits_only_after_owner_true() -> None:
    p = make()
    accepted = offer_and_accept(p, "m1")
    assert p.store.get_held("m1").state == "accepted"  # type: ignore[union-attr]
    actions = p.receive(ownership("m1", True, ref=accepted["id"]))
    assert actions == [Transmit(HeldCommand("m1", 1, "+15550001", "hello", None, "owned"))]
    assert p.store.get_held("m1").state == "owned"  # type: ignore[union-attr]


def test_owner_false_drops_the_message_without_transmitting() -> None:
    p = make()
    offer_and_accept(p, "m1")
    assert p.receive(ownership("m1", False)) == []
    assert p.store.get_held("m1") is None
    assert p.accept("m1", 1) == []  # a pending accept no longer fires
    assert p.receive(ownership("m1", True)) == []  # unknown now: nothing to transmit


def test_owner_false_for_a_newer_attempt_drops_too() -> None:
    p = make()
    offer_and_accept(p, "m1", 1)
    assert p.receive(ownership("m1", False, attempt=2)) == []
    assert p.store.get_held("m1") is None


def test_stale_ownership_for_an_older_attempt_is_ignored() -> None:
    p = make()
    store = p.store
    store.put_held(HeldCommand("m1", 3, "+1", "b", None))
    assert p.receive(ownership("m1", False, attempt=2)) == []
    assert p.receive(ownership("m1", True, attempt=2)) == []
    assert store.get_held("m1") is not None


def test_a_second_owner_true_does_not_transmit_twice() -> None:
    p = make()
    own(p, "m1")
    assert p.receive(ownership("m1", True)) == []  # still on the radio
    p.transmitted("m1", 1, SendResult(ok=True, parts=1))
    assert p.receive(ownership("m1", True)) == []  # already transmitted


def test_owned_left_over_from_a_crash_is_transmitted_again() -> None:
    store = MemoryPhoneStore()
    store.put_held(HeldCommand("m1", 2, "+1", "b", None, "owned"))
    p = make(store)  # fresh process: nothing in flight
    [action] = p.receive(ownership("m1", True, attempt=2))
    assert isinstance(action, Transmit) and action.command.attempt == 2


def test_sent_report_kept_and_resent_until_acked() -> None:
    p = make()
    own(p, "m1")
    [sent] = frames(p.transmitted("m1", 1, SendResult(ok=True, parts=2)))
    assert sent == {"type": "sent", "id": sent["id"], "message_id": "m1", "attempt": 1, "parts": 2}
    assert p.store.get_held("m1").state == "transmitted"  # type: ignore[union-attr]

    for _ in range(2):  # every reconnect re-sends it, with the same id
        p.disconnected()
        p.hello(STATUS, [])
        assert frames(welcome(p)) == [sent]

    assert p.receive(ack(sent["id"])) == []
    assert p.store.reports() == []
    assert p.store.get_held("m1") is None  # reported: no longer held
    p.hello(STATUS, [])
    assert frames(welcome(p)) == []


def test_failed_report_carries_the_error() -> None:
    p = make()
    own(p, "m1")
    result = SendResult(ok=False, error_code="radio_off", error="no service", retryable=True)
    [failed] = frames(p.transmitted("m1", 1, result))
    assert failed["type"] == "failed"
    assert (failed["error_code"], failed["error"], failed["retryable"]) == (
        "radio_off",
        "no service",
        True,
    )


def test_delivered_report_after_the_sent_report_was_acked() -> None:
    p = make()
    own(p, "m1", attempt=4)
    [sent] = frames(p.transmitted("m1", 4, SendResult(ok=True)))
    p.receive(ack(sent["id"]))
    [delivered] = frames(p.delivered("m1"))
    assert delivered["type"] == "delivered" and delivered["attempt"] == 4
    assert p.store.reports() == [delivered]
    p.receive(ack(delivered["id"]))
    assert p.store.reports() == []
    assert p.delivered("m1") == []  # one delivery report per message


def test_delivery_failure_after_sent_is_a_final_failed_report() -> None:
    p = make()
    own(p, "m1", attempt=2)
    [sent] = frames(p.transmitted("m1", 2, SendResult(ok=True)))
    p.receive(ack(sent["id"]))
    [failed] = frames(p.delivery_failed("m1", "delivery_failed_0x46", "expired"))
    assert failed["type"] == "failed" and failed["attempt"] == 2
    assert (failed["error_code"], failed["retryable"]) == ("delivery_failed_0x46", False)
    assert p.store.reports() == [failed]  # kept until the hub acknowledges it
    assert p.delivery_failed("m1", "x", "y") == []  # once per message


def test_inbound_kept_until_acked() -> None:
    p = make()
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    [frame] = frames(p.inbound(InboundSms("loc-1", "+15559999", "hi there", when, 1)))
    assert frame == {
        "type": "inbound",
        "id": frame["id"],
        "local_id": "loc-1",
        "from": "+15559999",
        "body": "hi there",
        "received_at": "2030-01-02T03:04:05+00:00",
        "sim_slot": 1,
    }
    p.hello(STATUS, [])
    assert frames(welcome(p)) == [frame]
    p.receive(ack(frame["id"]))
    assert p.store.inbound() == []


def test_ack_of_unknown_ref_is_harmless() -> None:
    p = make()
    assert p.receive(ack("nope")) == []


def test_permanent_error_drops_the_report_transient_keeps_it() -> None:
    p = make()
    own(p, "m1")
    [sent] = frames(p.transmitted("m1", 1, SendResult(ok=True)))
    p.receive({"type": "error", "id": "e", "ref": sent["id"], "code": "busy", "message": "x"})
    assert p.store.reports() == [sent]
    p.receive({"type": "error", "id": "e", "ref": sent["id"], "code": "invalid_frame"})
    assert p.store.reports() == []


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        json.dumps({"type": "surprise", "id": "x"}),
        json.dumps({"type": "send", "id": "x", "message_id": "m1"}),  # missing fields
        json.dumps({"type": "ownership", "id": "x", "message_id": "m1", "attempt": "one"}),
    ],
)
def test_bad_hub_frames_are_ignored(text: str) -> None:
    p = make()
    assert p.receive_text(text) == []
    assert p.store.held() == []


def test_a_delivery_report_after_a_restart_carries_the_sent_attempt(tmp_path: Any) -> None:
    """The attempt of a sent message is kept in the agent's database until its delivery
    report, so a report that comes after the agent restarted is still sent, and right."""
    from android_client.state import SqlitePhoneStore

    with SqlitePhoneStore(tmp_path / "s.db") as store:
        p = make(store)
        welcome(p)
        p.receive(send("m1", 3))
        p.accept("m1", 3)
        p.receive(ownership("m1", True, attempt=3))
        (report,) = frames(p.transmitted("m1", 3, SendResult(ok=True)))
        p.receive({"type": "ack", "id": "a", "ref": report["id"]})
        assert store.get_held("m1") is None  # forgotten once acked ...
    with SqlitePhoneStore(tmp_path / "s.db") as store:
        (delivered,) = frames(make(store).delivered("m1"))  # ... but not its attempt
        assert (delivered["type"], delivered["attempt"]) == ("delivered", 3)
        assert store.sent_attempt("m1") is None  # reported: forgotten now
        assert make(store).delivered("m1") == []


def test_what_is_kept_for_late_reports_ages_out() -> None:
    store = MemoryPhoneStore()
    p = make(store, clock=lambda: 1_000_000.0)
    p._remember_sent("old", 1)
    p2 = make(store, clock=lambda: 1_000_000.0 + 6 * 86400)
    p2._remember_sent("new", 2)
    assert store.sent_attempt("old") is None and store.sent_attempt("new") == 2
