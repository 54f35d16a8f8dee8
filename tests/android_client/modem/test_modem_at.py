"""The AT command channel: final result codes, URCs mid-response, the > prompt, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from fake_modem import FakeModem

from android_client.modem.at import AtChannel, AtResponse, Urc, command_prefix
from android_client.modem.errors import AtError, AtTimeout, ChannelClosed


class StubWriter:
    """Stands in for the serial port's writer; tests feed the modem's side by hand."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.written = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.data += data
        self.written.set()

    def close(self) -> None:
        pass

    async def next_write(self) -> None:
        await asyncio.wait_for(self.written.wait(), 1)
        self.written.clear()


class Harness:
    def __init__(self) -> None:
        self.reader = asyncio.StreamReader()
        self.writer = StubWriter()
        self.urcs: list[Urc] = []
        self.channel = AtChannel(
            self.reader,
            self.writer,  # type: ignore[arg-type]
            on_urc=self.urcs.append,
            timeout=1.0,
        )

    async def run(self, coro: Coroutine[Any, Any, AtResponse], *chunks: bytes) -> AtResponse:
        task = asyncio.create_task(coro)
        await self.writer.next_write()
        for chunk in chunks:
            self.channel.feed(chunk)
        return await asyncio.wait_for(task, 1)


@pytest.fixture
async def h() -> Any:
    harness = Harness()
    yield harness
    await harness.channel.aclose()


def test_command_prefix() -> None:
    assert command_prefix("AT+CREG?") == "+CREG"
    assert command_prefix("at+cmgr=3") == "+CMGR"
    assert command_prefix("AT^SYSINFO") == "^SYSINFO"
    assert command_prefix("ATE0") is None


async def test_ok_with_information_lines(h: Harness) -> None:
    response = await h.run(h.channel.command("AT+CSQ"), b"\r\n+CSQ: 21,99\r\n\r\nOK\r\n")
    assert h.writer.data == b"AT+CSQ\r"
    assert response.lines == ("+CSQ: 21,99",)
    assert response.value("+CSQ") == "21,99"


async def test_response_split_over_many_reads(h: Harness) -> None:
    chunks = [bytes([b]) for b in b"\r\n+CSQ: 9,99\r\n\r\nOK\r\n"]
    response = await h.run(h.channel.command("AT+CSQ"), *chunks)
    assert response.value("+CSQ") == "9,99"


async def test_urcs_in_the_middle_of_a_response_are_routed_away(h: Harness) -> None:
    response = await h.run(
        h.channel.command("AT+CPMS?"),
        b'\r\n+CMTI: "SM",3\r\n',
        b'\r\n+CPMS: "SM",3,30,"SM",3,30,"SM",3,30\r\n',
        b"\r\n+CDS: 6\r\n0006D60B9113\r\nRING\r\n",
        b"\r\nOK\r\n",
    )
    assert response.lines == ('+CPMS: "SM",3,30,"SM",3,30,"SM",3,30',)
    assert h.urcs == [
        Urc("+CMTI", '"SM",3'),
        Urc("+CDS", "6", "0006D60B9113"),
        Urc("RING", ""),
    ]


async def test_a_urc_name_that_is_the_command_prefix_is_the_response(h: Harness) -> None:
    response = await h.run(h.channel.command("AT+CREG?"), b"\r\n+CREG: 0,5\r\n\r\nOK\r\n")
    assert response.value("+CREG") == "0,5"
    assert h.urcs == []
    h.channel.feed(b"\r\n+CREG: 1\r\n")  # outside a command: unsolicited
    assert h.urcs == [Urc("+CREG", "1")]


async def test_errors(h: Harness) -> None:
    with pytest.raises(AtError) as info:
        await h.run(h.channel.command("AT+CPIN?"), b"\r\n+CME ERROR: 10\r\n")
    assert (info.value.kind, info.value.code, info.value.text) == ("CME", 10, "SIM not inserted")
    assert "SIM not inserted" in str(info.value)

    with pytest.raises(AtError) as info:
        await h.run(h.channel.command("AT+CMGR=9"), b"\r\n+CMS ERROR: 321\r\n")
    assert (info.value.kind, info.value.code) == ("CMS", 321)
    assert info.value.text == "invalid memory index"

    with pytest.raises(AtError) as info:
        await h.run(h.channel.command("AT+CPIN?"), b"\r\n+CME ERROR: SIM PIN required\r\n")
    assert (info.value.code, info.value.text) == (None, "SIM PIN required")

    with pytest.raises(AtError) as info:
        await h.run(h.channel.command("AT+FOO"), b"\r\nERROR\r\n")
    assert (info.value.kind, info.value.code) == (None, None)


async def test_echo_is_dropped(h: Harness) -> None:
    response = await h.run(h.channel.command("AT+CSQ"), b"AT+CSQ\r\r\n+CSQ: 5,99\r\n\r\nOK\r\n")
    assert response.lines == ("+CSQ: 5,99",)


async def test_garbage_does_not_break_the_channel(h: Harness) -> None:
    h.channel.feed(b"\xff\xfe\x00\x80garbage\r\n\r\n\x1b[0m\n")  # outside a command: dropped
    response = await h.run(h.channel.command("AT+CSQ"), b"\r\n\xf0\x9f\r\n+CSQ: 5,99\r\n\r\nOK\r\n")
    assert response.value("+CSQ") == "5,99"
    assert h.urcs == []


async def test_pdu_prompt_then_ctrl_z(h: Harness) -> None:
    task = asyncio.create_task(h.channel.send_pdu(5, "0011AABB"))
    await h.writer.next_write()
    assert h.writer.data == b"AT+CMGS=5\r"
    h.channel.feed(b"\r\n")
    h.channel.feed(b"> ")  # no line end after the prompt
    await h.writer.next_write()
    assert h.writer.data.endswith(b"0011AABB\x1a")
    h.channel.feed(b'\r\n+CMTI: "SM",1\r\n\r\n+CMGS: 42\r\n\r\nOK\r\n')
    response = await asyncio.wait_for(task, 1)
    assert response.value("+CMGS") == "42"
    assert h.urcs == [Urc("+CMTI", '"SM",1')]


async def test_error_instead_of_prompt(h: Harness) -> None:
    with pytest.raises(AtError) as info:
        await h.run(h.channel.send_pdu(5, "00"), b"\r\n+CMS ERROR: 304\r\n")
    assert info.value.code == 304
    assert b"\x1a" not in h.writer.data  # the PDU was never written


async def test_send_error_after_prompt(h: Harness) -> None:
    task = asyncio.create_task(h.channel.send_pdu(5, "0011"))
    await h.writer.next_write()
    h.channel.feed(b"\r\n> ")
    await h.writer.next_write()
    h.channel.feed(b"\r\n+CMS ERROR: 42\r\n")
    with pytest.raises(AtError) as info:
        await asyncio.wait_for(task, 1)
    assert (info.value.code, info.value.text) == (42, "congestion")


async def test_timeout_then_late_answer_is_dropped(h: Harness) -> None:
    with pytest.raises(AtTimeout):
        await h.channel.command("AT+CSQ", timeout=0.05)
    h.channel.feed(b"\r\n+CSQ: 1,99\r\n\r\nOK\r\n")  # too late: belongs to nobody
    response = await h.run(h.channel.command("AT"), b"\r\nOK\r\n")
    assert response.lines == ()


async def test_timeout_while_waiting_for_the_pdu_prompt_cancels_it(h: Harness) -> None:
    task = asyncio.create_task(h.channel.send_pdu(5, "0011", timeout=0.2))
    await h.writer.next_write()
    h.channel.feed(b"\r\n> ")
    with pytest.raises(AtTimeout):
        await task
    assert h.writer.data.endswith(b"\x1b")  # ESC leaves the prompt instead of a half message


async def test_port_closed_fails_the_pending_and_later_commands(h: Harness) -> None:
    task = asyncio.create_task(h.channel.command("AT+CSQ"))
    await h.writer.next_write()
    h.reader.feed_eof()
    with pytest.raises(ChannelClosed):
        await asyncio.wait_for(task, 1)
    assert h.channel.closed
    with pytest.raises(ChannelClosed):
        await h.channel.command("AT")


async def test_urc_handler_failure_is_contained(h: Harness) -> None:
    def boom(urc: Urc) -> None:
        raise RuntimeError("handler bug")

    h.channel.on_urc = boom
    h.channel.feed(b"\r\nRING\r\n")
    response = await h.run(h.channel.command("AT"), b"\r\nOK\r\n")
    assert response.lines == ()


# -- over a real pseudo-terminal ------------------------------------------------------------


async def test_on_a_pty_with_echo_and_reset(modem: FakeModem) -> None:
    urcs: list[Urc] = []
    channel = await AtChannel.open(modem.port, on_urc=urcs.append, timeout=1.0)
    try:
        response = await channel.command("AT+CSQ")  # echo is still on
        assert response.lines == ("+CSQ: 20,99",)
        await channel.command("ATE0")
        modem.silent = True
        with pytest.raises(AtTimeout):
            await channel.command("AT+CSQ", timeout=0.2)
        with pytest.raises(AtTimeout):
            await channel.reset(timeout=0.3)
        modem.silent = False
        await channel.reset(timeout=1.0)
        modem.unsolicited("RING")
        assert (await channel.command("AT+CSQ")).value("+CSQ") == "20,99"
        assert urcs == [Urc("RING", "")]  # read before the answer that followed it
    finally:
        await channel.aclose()


async def test_open_a_missing_port_is_a_clear_error() -> None:
    with pytest.raises(ChannelClosed, match="cannot open /dev/nonexistent-modem"):
        await AtChannel.open("/dev/nonexistent-modem")
