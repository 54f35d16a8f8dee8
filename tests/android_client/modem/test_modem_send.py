"""Sending through the modem: PDUs on the wire, message references, errors, recovery."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import pytest
from fake_modem import FakeModem, MakeBackend, Recorder, status_report_pdu

from android_client.modem import ModemBackend
from android_client.modem.pdu import Encoding, join_parts
from android_client.state import SqlitePhoneStore

TO = "+4915112345678"
LONG_GSM = "The quick brown fox jumps over the lazy dog. " * 9  # 405 septets: 3 parts
LONG_UCS2 = "Привет, мир! 😀 " * 10  # 160 UTF-16 units: 3 parts


def received_text(modem: FakeModem, first: int = 0) -> str:
    return join_parts([s.sms.text for s in modem.sent[first:]])


def report(modem: FakeModem, mr: int, status: int = 0x00, to: str = TO) -> None:
    modem.status_report(*status_report_pdu(mr, to, status))


async def test_single_gsm7(modem: FakeModem, backend: ModemBackend) -> None:
    result = await backend.send_sms("m1", TO, "Hello {world} 5€", None)
    assert (result.ok, result.parts) == (True, 1)
    [sent] = modem.sent
    assert sent.sms.recipient == TO
    assert sent.sms.text == "Hello {world} 5€"
    assert sent.sms.encoding is Encoding.GSM7
    assert sent.sms.status_report
    assert sent.sms.concat is None


async def test_national_number(modem: FakeModem, backend: ModemBackend) -> None:
    assert (await backend.send_sms("m1", "0151 12345678", "hi", 0)).ok
    assert modem.sent[0].sms.recipient == "015112345678"


@pytest.mark.parametrize(
    ("text", "encoding"), [(LONG_GSM, Encoding.GSM7), (LONG_UCS2, Encoding.UCS2)]
)
async def test_multipart(
    modem: FakeModem, backend: ModemBackend, text: str, encoding: Encoding
) -> None:
    result = await backend.send_sms("m1", TO, text, None)
    assert (result.ok, result.parts) == (True, 3)
    assert received_text(modem) == text
    concats = [s.sms.concat for s in modem.sent]
    assert [c.seq for c in concats if c] == [1, 2, 3]
    assert len({c.reference for c in concats if c}) == 1
    assert {s.sms.encoding for s in modem.sent} == {encoding}


async def test_long_messages_get_different_concatenation_references(
    modem: FakeModem, backend: ModemBackend
) -> None:
    await backend.send_sms("m1", TO, LONG_GSM, None)
    await backend.send_sms("m2", TO, LONG_GSM, None)
    refs = [s.sms.concat.reference for s in modem.sent if s.sms.concat]
    assert refs[0] == refs[2]
    assert refs[0] != refs[3]


async def test_status_report_is_matched_by_reference(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    modem.next_mr = 200
    await backend.send_sms("m1", TO, "one", None)
    await backend.send_sms("m2", "+4917099999999", "two", None)
    report(modem, 201, to="+4917099999999")
    assert await recorder.next_delivery() == "m2"
    report(modem, 200)
    assert await recorder.next_delivery() == "m1"


async def test_multipart_is_delivered_when_every_part_is(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    await backend.send_sms("long", TO, LONG_GSM, None)
    await backend.send_sms("short", TO, "x", None)
    mrs = [s.mr for s in modem.sent]
    report(modem, mrs[2])
    report(modem, mrs[0])
    report(modem, mrs[3])  # "short": its callback proves the earlier reports were handled
    assert await recorder.next_delivery() == "short"
    report(modem, mrs[1])
    assert await recorder.next_delivery() == "long"


async def test_still_trying_then_delivered(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    await backend.send_sms("m1", TO, "hi", None)
    mr = modem.sent[0].mr
    report(modem, mr, 0x21)  # recipient busy, service centre still trying
    report(modem, mr, 0x00)
    assert await recorder.next_delivery() == "m1"
    assert recorder.delivered.empty()


async def test_permanent_failure_report_becomes_a_final_failure(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    failures: list[tuple[str, str, str]] = []

    async def failed(message_id: str, code: str, error: str) -> None:
        failures.append((message_id, code, error))

    backend.set_delivery_failure_callback(failed)
    await backend.send_sms("bad", TO, "hi", None)
    await backend.send_sms("good", TO, "hi", None)
    report(modem, modem.sent[0].mr, 0x46)  # validity period expired
    report(modem, modem.sent[1].mr)
    with caplog.at_level(logging.WARNING, logger="android_client.modem"):
        assert await recorder.next_delivery() == "good"
    assert recorder.delivered.empty()
    assert "bad as NOT delivered" in caplog.text
    assert "validity period expired" in caplog.text
    assert [(m, c) for m, c, _ in failures] == [("bad", "delivery_failed_0x46")]
    assert "validity period expired" in failures[0][2]


async def test_report_for_unknown_reference_or_recipient_is_ignored(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    await backend.send_sms("m1", TO, "hi", None)
    mr = modem.sent[0].mr
    report(modem, (mr + 50) % 256)
    report(modem, mr, to="+4917011111111")  # same reference, another recipient: stale
    await backend.send_sms("m2", TO, "hi", None)
    report(modem, modem.sent[1].mr)
    assert await recorder.next_delivery() == "m2"
    assert recorder.delivered.empty()


async def test_delivery_is_reported_after_send_returns(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    # A network that reports delivery before the modem finished answering AT+CMGS.
    modem.auto_status = 0x00
    order: list[str] = []

    async def on_delivery(message_id: str) -> None:
        order.append(f"delivered {message_id}")
        await recorder.on_delivery(message_id)

    backend.set_delivery_callback(on_delivery)
    assert (await backend.send_sms("m1", TO, "hi", None)).ok
    order.append("sent m1")
    assert await recorder.next_delivery() == "m1"
    assert order == ["sent m1", "delivered m1"]


async def test_no_status_report_requested_when_disabled(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    backend = await make_backend(delivery_reports=False)
    await backend.send_sms("m1", TO, "hi", None)
    assert not modem.sent[0].sms.status_report


@pytest.mark.parametrize(
    ("code", "error_code", "retryable"),
    [
        (42, "cms_42", True),  # congestion
        (38, "cms_38", True),  # network out of order
        (500, "cms_500", True),  # unknown error
        (330, "cms_330", True),  # SMSC address unknown: another phone may have one
        (1, "invalid_number", False),  # unassigned number
        (195, "invalid_number", False),
        (96, "cms_96", False),  # invalid mandatory information
    ],
)
async def test_cms_errors(
    modem: FakeModem, backend: ModemBackend, code: int, error_code: str, retryable: bool
) -> None:
    modem.fail_next_send(code)
    result = await backend.send_sms("m1", TO, "hi", None)
    assert (result.ok, result.error_code, result.retryable) == (False, error_code, retryable)
    assert f"+CMS ERROR {code}" in (result.error or "")
    assert (await backend.send_sms("m2", TO, "hi", None)).ok  # the modem is still usable


async def test_failure_in_the_middle_of_a_long_message(
    modem: FakeModem, backend: ModemBackend
) -> None:
    await backend.send_sms("warmup", TO, "x", None)
    modem.sent.clear()
    modem.send_failures = []
    original = modem._submit
    calls = 0

    def fail_second(length: int, pdu: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            modem.fail_next_send(42)
        original(length, pdu)

    modem._submit = fail_second  # type: ignore[method-assign]
    result = await backend.send_sms("m1", TO, LONG_GSM, None)
    assert (result.ok, result.error_code, result.retryable, result.parts) == (
        False,
        "cms_42",
        True,
        1,
    )


async def test_invalid_number_never_reaches_the_modem(
    modem: FakeModem, backend: ModemBackend
) -> None:
    result = await backend.send_sms("m1", "call me maybe", "hi", None)
    assert (result.ok, result.error_code, result.retryable) == (False, "invalid_number", False)
    assert not any(c.startswith("AT+CMGS") for c in modem.commands)


async def test_other_sim_slot_is_refused(modem: FakeModem, backend: ModemBackend) -> None:
    result = await backend.send_sms("m1", TO, "hi", 1)
    assert (result.ok, result.error_code, result.retryable) == (False, "no_such_sim", True)


async def test_garbage_from_the_modem_is_ignored(modem: FakeModem, backend: ModemBackend) -> None:
    modem.garbage(b"\r\n\xff\xfe\x00NO\x80ISE\r\n^RSSI: 17\r\n~~~~\r\n+WHAT: 1\r\n")
    assert (await backend.send_sms("m1", TO, "hi", None)).ok
    modem.garbage(b"\x00\x00\r\n")
    assert (await backend.status()).signal == 4
    assert modem.sent[0].sms.text == "hi"


async def test_silent_modem_times_out_and_backend_recovers(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    backend = await make_backend(command_timeout=0.3, send_timeout=0.3, heal_interval=0.1)
    modem.silent = True
    result = await backend.send_sms("m1", TO, "hi", None)
    # It never prompted for the SMS: nothing left, another phone may send it.
    assert (result.ok, result.error_code, result.retryable) == (False, "modem_timeout", True)
    assert backend.unavailable() is not None  # offers are refused while it is reset
    status = await backend.status()  # still silent: no signal, no exception
    assert (status.signal, status.network) == (0, None)
    result = await backend.send_sms("m2", TO, "hi", None)
    assert (result.ok, result.error_code, result.retryable) == (False, "modem_unavailable", True)

    modem.silent = False
    commands_before = len(modem.commands)
    await modem.wait_until(lambda: backend.unavailable() is None)  # the background reset
    result = await backend.send_sms("m3", TO, "back again", None)
    assert result.ok
    assert [s.sms.text for s in modem.sent] == ["back again"]
    assert "ATE0" in modem.commands[commands_before:]  # configured again after the reset
    assert (await backend.status()).signal == 4


async def test_modem_restart_is_noticed(modem: FakeModem, backend: ModemBackend) -> None:
    modem.echo, modem.pdu_mode, modem.cnmi = True, False, None  # what a power cycle does
    modem.unsolicited("RDY")
    await modem.wait_until(lambda: modem.cnmi is not None)
    assert (await backend.send_sms("m1", TO, "hi", None)).ok
    assert modem.pdu_mode
    assert modem.cnmi == "2,1,0,1,0"


async def test_closed_port_is_reopened(modem: FakeModem, backend: ModemBackend) -> None:
    channel = backend._channel
    assert channel is not None
    await channel.aclose()  # as if the USB serial device had vanished for a moment
    result = await backend.send_sms("m1", TO, "reopened", None)
    assert result.ok
    assert backend._channel is not channel
    assert modem.sent[-1].sms.text == "reopened"


async def test_a_modem_that_hangs_after_taking_an_sms_is_final_and_hands_back_the_rest(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    """The network took the SMS, then the modem went silent: the send is final
    (send_unconfirmed: retrying would reach the recipient twice), the messages queued
    behind it come back at once (nothing of them left, another phone sends them) instead
    of each waiting through a reset, and the modem shows no signal until it answers."""
    backend = await make_backend(command_timeout=0.3, send_timeout=0.5, heal_interval=0.1)
    modem.hang_after_submit = True
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(backend.send_sms(f"m{i}", TO, f"text {i}", None) for i in range(4))
    )
    took = loop.time() - started
    first, *queued = results
    assert (first.ok, first.error_code, first.retryable) == (False, "send_unconfirmed", False)
    assert [s.sms.text for s in modem.sent] == ["text 0"]  # it did leave
    assert [(r.error_code, r.retryable, r.parts) for r in queued] == [
        ("modem_unavailable", True, 0)
    ] * 3
    assert took < 2.0, took  # not a reset each: 0.5 s for the hang, then at once
    assert (await backend.status()).signal == 0 and backend.unavailable() is not None
    modem.silent = False
    await modem.wait_until(lambda: backend.unavailable() is None)
    assert (await backend.send_sms("m9", TO, "after", None)).ok


async def test_an_unconfirmed_send_can_be_handed_back_when_chosen(
    modem: FakeModem, make_backend: MakeBackend
) -> None:
    backend = await make_backend(send_timeout=0.3, command_timeout=0.3, retry_unconfirmed=True)
    modem.hang_after_submit = True
    result = await backend.send_sms("m1", TO, "hi", None)
    assert (result.error_code, result.retryable) == ("send_unconfirmed", True)


async def test_a_status_report_after_a_restart_finds_its_message(
    modem: FakeModem, make_backend: MakeBackend, recorder: Recorder, tmp_path: Path
) -> None:
    """References are kept in the agent's state database: the modem's report of a message
    sent before the agent restarted is matched (a multi-part one when every part is), and
    references older than the network keeps an SMS are dropped."""
    state = SqlitePhoneStore(tmp_path / "state.db")
    first = await make_backend(state=state)
    modem.next_mr = 10
    assert (await first.send_sms("m1", TO, "one", None)).ok
    assert (await first.send_sms("m2", TO, "x" * 200, None)).ok  # two parts: 11, 12
    await first.aclose()
    state.close()

    state = SqlitePhoneStore(tmp_path / "state.db")  # the agent starts again
    second = await make_backend(state=state)
    report(modem, 11)
    report(modem, 10)
    assert await recorder.next_delivery() == "m1"
    report(modem, 12)
    assert await recorder.next_delivery() == "m2"
    assert state.get_meta(ModemBackend.OUTGOING_KEY) is None  # nothing left to wait for
    await second.aclose()

    # An entry older than SMS validity is not waited for.
    old = [{"id": "m9", "to": TO, "total": 1, "delivered": 0, "untracked": False,
            "pending": [20], "at": time.time() - 6 * 86400}]  # fmt: skip
    state.set_meta(ModemBackend.OUTGOING_KEY, json.dumps(old))
    third = await make_backend(state=state)
    report(modem, 20)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(recorder.next_delivery(), 0.3)
    await third.aclose()
    state.close()
