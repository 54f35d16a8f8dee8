"""bench/wire.py against websockets' own server side (sans I/O): the bench's phones must
speak real RFC 6455, or the hub would be measured against a client it never meets."""

from __future__ import annotations

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from bench.wire import TEXT, ClientCodec, WireError, frame, upgrade_request


def handshake() -> tuple[ServerProtocol, ClientCodec]:
    server = ServerProtocol()
    request, accept = upgrade_request("127.0.0.1:9", "/ws/device", {"Authorization": "Bearer t"})
    server.receive_data(request)
    [event] = server.events_received()
    assert isinstance(event, Request) and event.headers["Authorization"] == "Bearer t"
    server.send_response(server.accept(event))
    client = ClientCodec(accept)
    texts, reply = client.receive(b"".join(server.data_to_send()))
    assert client.open and texts == [] and reply == b""
    return server, client


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_frames_both_ways_at_every_length_encoding(size: int) -> None:
    server, client = handshake()
    text = ("é" * size)[: size // 2] + "x" * (size - size // 2)
    server.receive_data(frame(TEXT, text.encode()))  # masked: the server insists
    [got] = server.events_received()
    assert isinstance(got, Frame) and got.opcode is Opcode.TEXT and got.data.decode() == text
    server.send_text(text.encode())
    wire = b"".join(server.data_to_send())
    # In pieces, as TCP may deliver it: nothing until the frame is whole.
    texts: list[str] = []
    for i in range(0, len(wire), 7):
        more, reply = client.receive(wire[i : i + 7])
        texts += more
        assert reply == b""
    assert texts == [text]
    server.send_text(text.encode())
    wire = b"".join(server.data_to_send())
    assert client.receive(wire[:-1]) == ([], b"")  # one byte short: not yet
    assert client.receive(wire[-1:]) == ([text], b"")


def test_several_frames_in_one_read_and_the_upgrade_response_with_them() -> None:
    server = ServerProtocol()
    request, accept = upgrade_request("h", "/", {})
    server.receive_data(request)
    [event] = server.events_received()
    assert isinstance(event, Request)
    server.send_response(server.accept(event))
    server.send_text(b"one")
    server.send_text(b"two")
    client = ClientCodec(accept)
    texts, _ = client.receive(b"".join(server.data_to_send()))
    assert client.open and texts == ["one", "two"]


def test_ping_is_answered_and_close_is_echoed() -> None:
    server, client = handshake()
    server.send_ping(b"hi")
    server.send_close(1001, "bye")
    texts, reply = client.receive(b"".join(server.data_to_send()))
    assert texts == [] and client.closed
    server.receive_data(reply)
    pong, close = server.events_received()
    assert isinstance(pong, Frame) and pong.opcode is Opcode.PONG and pong.data == b"hi"
    assert isinstance(close, Frame) and close.opcode is Opcode.CLOSE
    assert Close.parse(close.data).code == 1001
    assert client.receive(b"\x81\x01x") == ([], b"")  # after the close: nothing more


def test_a_refused_upgrade_or_a_wrong_accept_is_an_error() -> None:
    _, accept = upgrade_request("h", "/", {})
    with pytest.raises(WireError, match="401"):
        ClientCodec(accept).receive(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
    with pytest.raises(WireError, match="Accept"):
        ClientCodec(accept).receive(
            upgrade + b"Connection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n"
        )
    with pytest.raises(WireError, match="Connection"):
        ClientCodec(accept).receive(upgrade + b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    with pytest.raises(WireError, match="Upgrade"):
        ClientCodec(accept).receive(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )


def test_a_masked_frame_from_the_server_is_an_error() -> None:
    _, client = handshake()
    with pytest.raises(WireError, match="masked"):
        client.receive(frame(TEXT, b"x"))  # a client's frame, sent back at it
