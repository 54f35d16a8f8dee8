"""The pure part of SMSGate's 3rd-party API (smsgw/thirdparty.py, the group rules of
smsgw/store/rules.py): the app's aggregation rule, the ``states`` timeline, SMSGate's
webhook envelope and signature, the settings document. No hub, no sockets."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from android_sms_gateway.webhooks import SmsReceivedPayload

from smsgw.clock import utcnow
from smsgw.events import EventType, inbound_data, make_event, message_data
from smsgw.store import Inbound, Status, Webhook
from smsgw.store.rules import group_history, group_state
from smsgw.thirdparty import (
    EVENT_SOURCES,
    check_settings,
    envelope,
    merge_settings,
    message_state,
    signed_headers,
)
from tests.builders import new_message


@pytest.mark.parametrize(
    ("recipients", "state"),
    [
        # smsgate-wire.md §3.5, in its order: the first line that holds wins.
        (["Pending", "Delivered"], "Pending"),
        (["Cancelling", "Cancelled", "Processed"], "Cancelling"),
        (["Cancelled", "Processed", "Failed"], "Cancelled"),
        (["Processed", "Sent", "Failed"], "Processed"),
        (["Failed", "Failed"], "Failed"),
        (["Delivered", "Delivered"], "Delivered"),
        (["Delivered", "Failed"], "Sent"),  # neither all Failed nor all Delivered
        (["Sent", "Delivered"], "Sent"),
        (["Sent"], "Sent"),
    ],
)
def test_the_apps_aggregation_rule(recipients: list[str], state: str) -> None:
    assert group_state(recipients) == state


def test_the_states_timeline_is_when_the_whole_first_reached_each_state() -> None:
    t0 = utcnow()

    def at(seconds: float) -> Any:
        return t0 + timedelta(seconds=seconds)

    fast = new_message(status=Status.DELIVERED, created_at=t0, queued_at=at(1), sent_at=at(2),
                       delivered_at=at(3))  # fmt: skip
    slow = new_message(status=Status.SENT, created_at=t0, queued_at=at(4), sent_at=at(5))
    assert group_history([fast, slow]) == {
        "Pending": t0,
        # fast Processed at 1 s, but slow is still Pending: the whole is Pending until 4 s.
        "Processed": at(4),
        "Sent": at(5),  # fast Delivered + slow Sent: Sent
    }
    # A message offered again after its phone was lost is Pending, whatever it passed.
    again = new_message(status=Status.PENDING, created_at=t0, queued_at=at(1))
    assert group_history([again]) == {"Pending": t0}
    gone = new_message(status=Status.CANCELLED, created_at=t0, cancelled_at=at(2))
    assert group_history([gone]) == {"Pending": t0, "Cancelled": at(2)}


def test_a_message_state_has_smsgates_shape() -> None:
    t0 = utcnow()
    a = new_message(recipient="+1", status=Status.FAILED, error="boom", created_at=t0,
                    failed_at=t0 + timedelta(seconds=1), device_id="d1")  # fmt: skip
    b = new_message(recipient="+2", status=Status.QUEUED, created_at=t0, device_id="d1",
                    queued_at=t0 + timedelta(seconds=2))  # fmt: skip
    s = message_state("g", [a, b])
    assert s["state"] == "Processed" and s["deviceId"] == "d1" and s["isHashed"] is False
    assert s["recipients"] == [
        {"phoneNumber": "+1", "state": "Failed", "error": "boom"},
        {"phoneNumber": "+2", "state": "Processed"},
    ]
    assert s["textMessage"] == {"text": "hi"}
    data = new_message(data_port=9, body="AA==")
    assert message_state("d", [data])["dataMessage"] == {"data": "AA==", "port": 9}
    otp = new_message(sensitive=True)
    assert "textMessage" not in message_state("o", [otp])  # an OTP's code is never shown


def _hook(event: str, hook_id: str = "h1") -> Webhook:
    now = utcnow()
    return Webhook(hook_id, "http://x/", frozenset(), None, True, "s", now, now,
                   format="smsgate", event_name=event)  # fmt: skip


def test_the_envelope_of_each_event_and_its_signature() -> None:
    now = utcnow()
    msg = new_message(status=Status.SENT, recipient="+12025550100", device_id="dev1",
                      sent_at=now, batch_id="order-42", parts=2, sim_slot=1)  # fmt: skip
    event = make_event(EventType.MESSAGE_SENT, msg.id, message_data(msg), now)
    body = envelope(_hook("sms:sent"), event.type, event.payload, "delivery-1")
    sent = json.loads(body)
    assert list(sent) == ["id", "webhookId", "event", "deviceId", "payload"]
    assert sent["id"] == "delivery-1" and sent["event"] == "sms:sent" and sent["deviceId"] == "dev1"
    assert sent["payload"]["messageId"] == "order-42"  # the API's id, not the recipient's
    assert sent["payload"]["partsCount"] == 2 and sent["payload"]["simNumber"] == 2
    assert sent["payload"]["phoneNumber"] == "+12025550100"
    # The same stored event gives the same bytes on every retry.
    assert envelope(_hook("sms:sent"), event.type, event.payload, "delivery-1") == body
    failed = new_message(status=Status.FAILED, error="no signal", failed_at=now)
    event = make_event(EventType.MESSAGE_FAILED, failed.id, message_data(failed), now)
    payload = json.loads(envelope(_hook("sms:failed"), event.type, event.payload, "d2"))["payload"]
    assert payload["reason"] == "no signal" and payload["messageId"] == failed.id
    sms = Inbound("in-1", "dev1", "l1", "+12025550199", "hi <there>", 0, now, now)
    event = make_event(EventType.SMS_RECEIVED, sms.id, inbound_data(sms), now)
    received = json.loads(envelope(_hook("sms:received"), event.type, event.payload, "d3"))
    parsed = SmsReceivedPayload.from_dict(received["payload"])  # as SMSGate's client reads it
    assert parsed.message == "hi <there>" and parsed.sender == "+12025550199"
    headers = signed_headers("key", body, 1767254400.7)
    assert headers["X-Timestamp"] == "1767254400"
    expected = hmac.new(b"key", body + b"1767254400", hashlib.sha256).hexdigest()
    assert headers["X-Signature"] == expected


def test_only_smsgates_ten_event_names_are_known() -> None:
    assert len(EVENT_SOURCES) == 10 and "sms:batch:received" not in EVENT_SOURCES


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"nope": {}},
        {"webhooks": []},
        {"webhooks": {"signing_key": 1}},
        {"webhooks": {"internet_required": "yes"}},
        {"webhooks": {"retry_count": False}},  # a boolean is not a number
        {"webhooks": {"signing_key": ""}},
        {"ping": {"interval_seconds": 1.5}},
    ],
)
def test_bad_settings_are_refused(doc: Any) -> None:
    with pytest.raises(ValueError):
        check_settings(doc)


def test_settings_are_merged_section_by_section() -> None:
    current = {"webhooks": {"signing_key": "a", "retry_count": 1}, "ping": {"interval_seconds": 5}}
    patch = check_settings(
        {"webhooks": {"retry_count": 2, "internet_required": None}, "logs": None}
    )
    assert merge_settings(current, patch) == {
        "webhooks": {"signing_key": "a", "retry_count": 2},
        "ping": {"interval_seconds": 5},
    }
