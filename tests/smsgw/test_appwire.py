"""The stock app's wire format without sockets (smsgw/appwire.py): dates both ways, the
message the app reads, the reports it writes, its events and its signatures."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from smsgw.appwire import (
    KEEPALIVE,
    AppState,
    PushEvent,
    ReceivedSms,
    StateReport,
    app_time,
    failure_code,
    mobile_message,
    parse_app_time,
    sign,
    signature_valid,
    sse_event,
)
from tests.builders import new_message


def test_dates_go_out_with_exactly_three_fraction_digits_in_utc() -> None:
    at = datetime(2026, 1, 1, 15, 30, 0, 123456, tzinfo=timezone(timedelta(hours=7)))
    assert app_time(at) == "2026-01-01T08:30:00.123Z"
    assert app_time(datetime(2026, 1, 1, tzinfo=UTC)) == "2026-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-13T16:49:17.357+07:00", datetime(2024, 5, 13, 9, 49, 17, 357000, tzinfo=UTC)),
        ("2024-05-13T16:49:17.357Z", datetime(2024, 5, 13, 16, 49, 17, 357000, tzinfo=UTC)),
        ("2024-05-13T16:49:17Z", datetime(2024, 5, 13, 16, 49, 17, tzinfo=UTC)),
        ("2024-05-13T16:49:17", datetime(2024, 5, 13, 16, 49, 17, tzinfo=UTC)),
        ("2024-05-13T16:49:17.357-0500", datetime(2024, 5, 13, 21, 49, 17, 357000, tzinfo=UTC)),
        # Android before 7 writes a negative offset as "+-5:00".
        ("2024-05-13T16:49:17.357+-5:00", datetime(2024, 5, 13, 21, 49, 17, 357000, tzinfo=UTC)),
        ("2024-05-13T16:49:17.123456789Z", datetime(2024, 5, 13, 16, 49, 17, 123456, tzinfo=UTC)),
    ],
)
def test_dates_come_in_as_the_app_writes_them(text: str, expected: datetime) -> None:
    assert parse_app_time(text) == expected


@pytest.mark.parametrize("bad", ["", "yesterday", "2024-05-13", "2024-13-40T00:00:00Z", "5"])
def test_a_bad_date_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_app_time(bad)


def test_a_message_as_the_app_reads_it() -> None:
    msg = new_message(body="hi <b>", sim_slot=1, priority=100)
    item = mobile_message(msg)
    assert item["id"] == msg.id and item["phoneNumbers"] == [msg.recipient]
    assert item["message"] == item["textMessage"]["text"] == "hi <b>"
    assert item["simNumber"] == 2 and item["priority"] == 100
    assert item["validUntil"] == app_time(msg.expires_at) and item["state"] == "Pending"
    assert "ttl" not in item and "scheduleAt" not in item
    plain = mobile_message(new_message(priority=-300))
    assert "simNumber" not in plain and plain["priority"] == -128  # a signed byte


def test_a_report_gives_the_recipients_state() -> None:
    report = StateReport.model_validate(
        {
            "id": "m1",
            "state": "Sent",
            "recipients": [
                {"phoneNumber": "+1 (202) 555-0101", "state": "Delivered"},
                {"phoneNumber": "+12025550102", "state": "Failed", "error": "boom"},
            ],
            "states": {"Pending": "2026-01-01T15:00:01.101+07:00"},
        }
    )
    assert report.state_of("+12025550101") == (AppState.DELIVERED, None)
    assert report.state_of("+12025550102") == (AppState.FAILED, "boom")
    assert report.state_of("+12025550199") == (AppState.SENT, None)
    single = StateReport.model_validate(
        {"id": "m", "state": "Sent", "recipients": [{"phoneNumber": "2025550101", "state": "Sent"}]}
    )
    assert single.state_of("+12025550101") == (AppState.SENT, None)  # reformatted by the app
    for bad in (
        {"id": "m", "state": "Sent", "recipients": []},
        {"id": "m", "state": "Gone", "recipients": [{"phoneNumber": "1", "state": "Sent"}]},
        {
            "id": "m",
            "state": "Sent",
            "recipients": [{"phoneNumber": "1", "state": "Sent"}],
            "states": {"Sent": "noon"},
        },
    ):
        with pytest.raises(ValidationError):
            StateReport.model_validate(bad)


def test_failure_codes_from_the_apps_error_text() -> None:
    assert failure_code(AppState.FAILED, "Send result: RESULT_ERROR_NO_SERVICE (x)") == (
        "error_no_service",
        "Send result: RESULT_ERROR_NO_SERVICE (x)",
    )
    assert failure_code(AppState.FAILED, "TTL expired")[0] == "expired"
    assert failure_code(AppState.FAILED, None) == ("app_failed", "the app reported a failure")
    assert failure_code(AppState.CANCELLED, None)[0] == "cancelled_on_phone"


def test_events_are_framed_for_okhttp_sse() -> None:
    assert sse_event(PushEvent.MESSAGE_ENQUEUED) == b"event: MessageEnqueued\ndata: null\n\n"
    assert sse_event(PushEvent.MESSAGE_CANCELLED, {"messageId": "x"}) == (
        b'event: MessageCancelled\ndata: {"messageId":"x"}\n\n'
    )
    assert KEEPALIVE.startswith(b":") and KEEPALIVE.endswith(b"\n\n")


def test_signatures_over_the_raw_body_and_timestamp() -> None:
    body = b'{"id":"a","payload":{"message":"\\u003cb\\u003e"}}'
    expected = hmac.new(b"key12345", body + b"1767254400", hashlib.sha256).hexdigest()
    assert sign("key12345", body, "1767254400") == expected
    assert signature_valid("key12345", body, "1767254400", expected.upper())
    assert not signature_valid("key12345", body, "1767254401", expected)
    assert not signature_valid("other", body, "1767254400", expected)
    assert not signature_valid("key12345", body.replace(b"\\u003c", b"<"), "1767254400", expected)


def test_a_received_sms_payload() -> None:
    sms = ReceivedSms.model_validate(
        {"message": "hi", "receivedAt": "2026-01-01T15:00:01.101+07:00", "phoneNumber": "+1"}
    )
    assert sms.from_number == "+1"
    with pytest.raises(ValidationError):
        ReceivedSms.model_validate({"message": "hi", "receivedAt": "soon"})
