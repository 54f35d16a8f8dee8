"""Receiving through the modem: +CMTI → AT+CMGR → reassembly → inbound callback → AT+CMGD."""

from __future__ import annotations

from datetime import UTC, datetime

from fake_modem import FakeModem, MakeBackend, Recorder, deliver_pdu, status_report_pdu

from android_client.backend import InboundSms
from android_client.modem import ModemBackend

SENDER = "+4917012345678"
PARTS = ["First part, " * 12 + "end1.", "Second part. " * 11 + "end2.", "Third and last."]
FULL = "".join(PARTS)


def store_parts(modem: FakeModem, parts: list[str], order: list[int], ref: int = 77) -> list[int]:
    """Store the parts (1-based ``order``) of one long SMS; returns their indexes."""
    return [
        modem.receive(*deliver_pdu(SENDER, parts[seq - 1], concat=(ref, len(parts), seq)))
        for seq in order
    ]


async def test_single_sms(modem: FakeModem, backend: ModemBackend, recorder: Recorder) -> None:
    index = modem.receive(*deliver_pdu(SENDER, "Hello from a phone"))
    sms = await recorder.next_inbound()
    assert (sms.sender, sms.body, sms.sim_slot) == (SENDER, "Hello from a phone", 0)
    assert sms.received_at == datetime(2024, 5, 17, 14, 30, 5, tzinfo=UTC)
    assert sms.local_id.startswith("modem-")
    await modem.wait_until(lambda: index in modem.deleted)
    assert f"AT+CMGR={index}" in modem.commands
    assert modem.storage == {}


async def test_unicode_and_alphanumeric_sender(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    modem.receive(*deliver_pdu("MyBank", "Ваш код: 1234 😀"))
    sms = await recorder.next_inbound()
    assert (sms.sender, sms.body) == ("MyBank", "Ваш код: 1234 😀")


async def test_concatenated_out_of_order(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    indexes = store_parts(modem, PARTS, [3, 1, 2])
    sms = await recorder.next_inbound()
    assert sms.body == FULL
    assert sms.sender == SENDER
    await modem.wait_until(lambda: sorted(modem.deleted) == sorted(indexes))
    assert recorder.inbound.empty()


async def test_two_long_sms_interleaved(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    other = ["Other message " * 11, "is here."]
    modem.receive(*deliver_pdu(SENDER, PARTS[1], concat=(1, 3, 2)))
    modem.receive(*deliver_pdu(SENDER, other[1], concat=(2, 2, 2)))
    modem.receive(*deliver_pdu(SENDER, PARTS[0], concat=(1, 3, 1)))
    modem.receive(*deliver_pdu(SENDER, other[0], concat=(2, 2, 1)))
    assert (await recorder.next_inbound()).body == "".join(other)
    modem.receive(*deliver_pdu(SENDER, PARTS[2], concat=(1, 3, 3)))
    assert (await recorder.next_inbound()).body == FULL


async def test_concatenated_ucs2_with_16_bit_reference(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    parts = ["Привет " * 9 + "😀", "и пока 👋"]
    for seq in (2, 1):
        modem.receive(*deliver_pdu(SENDER, parts[seq - 1], concat=(4660, 2, seq), concat16=True))
    assert (await recorder.next_inbound()).body == "".join(parts)


async def test_incomplete_set_is_forwarded_marked_after_timeout(
    modem: FakeModem, make_backend: MakeBackend, recorder: Recorder
) -> None:
    await make_backend(reassembly_timeout=0.3)
    indexes = store_parts(modem, PARTS, [1, 3])
    sms = await recorder.next_inbound()
    assert sms.body == PARTS[0] + "[part 2/3 missing]" + PARTS[2]
    await modem.wait_until(lambda: sorted(modem.deleted) == sorted(indexes))


async def test_sms_stored_before_start_are_read(
    modem: FakeModem, make_backend: MakeBackend, recorder: Recorder
) -> None:
    first = modem.receive(*deliver_pdu(SENDER, "while you were away"), notify=False)
    store_parts(modem, [*PARTS[:2], "!"], [2, 3, 1])  # notify: +CMTI before anyone listens
    await make_backend()
    bodies = {(await recorder.next_inbound()).body for _ in range(2)}
    assert bodies == {"while you were away", PARTS[0] + PARTS[1] + "!"}
    await modem.wait_until(lambda: modem.storage == {})
    assert first in modem.deleted


async def test_nothing_is_read_until_someone_listens(
    modem: FakeModem, make_backend: MakeBackend, recorder: Recorder
) -> None:
    backend = await make_backend(listen=False)
    index = modem.receive(*deliver_pdu(SENDER, "wait for me"))
    await backend.status()  # a round trip through the modem, after the +CMTI
    assert not any(c.startswith(("AT+CMGR", "AT+CMGL")) for c in modem.commands)
    assert index in modem.storage  # the SIM keeps it meanwhile
    recorder.attach(backend)
    assert (await recorder.next_inbound()).body == "wait for me"
    await modem.wait_until(lambda: index in modem.deleted)


async def test_same_sms_read_twice_has_the_same_local_id(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    pdu = deliver_pdu(SENDER, "only once please")
    modem.receive(*pdu)
    first = await recorder.next_inbound()
    modem.receive(*pdu)  # e.g. the agent died before AT+CMGD and reads it again
    again = await recorder.next_inbound()
    assert first.local_id == again.local_id
    modem.receive(*deliver_pdu(SENDER, "another one"))
    assert (await recorder.next_inbound()).local_id != first.local_id


async def test_sms_is_kept_when_the_callback_fails(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    failures = 0

    async def flaky(sms: InboundSms) -> None:
        nonlocal failures
        failures += 1
        raise RuntimeError("store is full")

    backend.set_inbound_callback(flaky)
    index = modem.receive(*deliver_pdu(SENDER, "keep me"))
    await modem.wait_until(lambda: f"AT+CMGR={index}" in modem.commands)
    await backend.status()
    assert failures == 1
    assert index in modem.storage and index not in modem.deleted


async def test_forwarded_sms_that_could_not_be_deleted_is_not_forwarded_again(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    modem.fail_deletes = 1
    index = modem.receive(*deliver_pdu(SENDER, "once"))
    assert (await recorder.next_inbound()).body == "once"
    await modem.wait_until(lambda: modem.commands.count(f"AT+CMGD={index}") == 1)
    assert index in modem.storage
    modem.unsolicited("RDY")  # modem restart: the agent configures it and reads the storage
    await modem.wait_until(lambda: index in modem.deleted)
    assert recorder.inbound.empty()


async def test_direct_cmt_delivery(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    pdu, length = deliver_pdu(SENDER, "flash!")
    modem.unsolicited(f'+CMT: "",{length}', pdu)
    assert (await recorder.next_inbound()).body == "flash!"


async def test_stored_status_report_with_cdsi(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    await backend.send_sms("m1", "+4915112345678", "hi", None)
    pdu, length = status_report_pdu(modem.sent[0].mr, "+4915112345678", smsc="+4917000000")
    index = modem.receive(pdu, length, notify=False)
    modem.unsolicited(f'+CDSI: "SR",{index}')
    assert await recorder.next_delivery() == "m1"
    await modem.wait_until(lambda: index in modem.deleted)


async def test_undecodable_sms_is_dropped_and_others_still_arrive(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    broken = modem.receive("07911326040000F0040B9113", 20)
    modem.receive(*deliver_pdu(SENDER, "still fine"))
    assert (await recorder.next_inbound()).body == "still fine"
    await modem.wait_until(lambda: broken in modem.deleted)


async def test_garbage_between_notifications(
    modem: FakeModem, backend: ModemBackend, recorder: Recorder
) -> None:
    modem.garbage(b"\r\n+CMTI: \r\n+CMTI: garbage\r\n\xff\xff\r\n+CDS: 12\r\nNOTHEX\r\n")
    modem.receive(*deliver_pdu(SENDER, "after the noise"))
    assert (await recorder.next_inbound()).body == "after the noise"
