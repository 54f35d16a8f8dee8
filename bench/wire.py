"""The client side of RFC 6455, as little of it as the bench's phones need.

``websockets``' asyncio client costs its one-core load process more than a reconnect
storm costs the hub (a profile of 10,000 phones reconnecting: 1.2 ms of the load core per
phone, 0.8 ms of the hub's), so the storm measured the load generator. This is the wire
format alone, sans I/O: the upgrade request, masked frames out, frames in.

What it leaves out, because neither the hub nor the bench's relay sends it: extensions,
subprotocols, fragmented messages. A ping is answered; a close is answered and ends the
stream. Anything else unexpected raises ``WireError``.
"""

from __future__ import annotations

import base64
import hashlib
import random
import struct

__all__ = ["ClientCodec", "WireError", "frame", "upgrade_request"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, CLOSE, PING, PONG = 0x1, 0x8, 0x9, 0xA
# Masking keys must be unpredictable to the peer's intermediaries, not secret: a PRNG is
# enough here, and cheaper than a system call per frame.
_rng = random.Random()


class WireError(Exception):
    """The server broke the handshake or the framing."""


def upgrade_request(host: str, path: str, headers: dict[str, str]) -> tuple[bytes, bytes]:
    """The HTTP upgrade request and the ``Sec-WebSocket-Accept`` value it must get back."""
    key = base64.b64encode(_rng.randbytes(16))
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked frame (a client must mask every frame it sends)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = _rng.randbytes(4)
    # XOR of the payload with the key repeated, as two integers: byte i meets byte i.
    repeated = (mask * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")
    return head + mask + masked.to_bytes(n, "little")


class ClientCodec:
    """Bytes from the server in; text messages and bytes to answer with out."""

    def __init__(self, accept: bytes) -> None:
        self._accept = accept
        self._buffer = b""
        self.open = False  # the 101 arrived
        self.closed = False  # a close frame arrived (and was answered)

    def receive(self, data: bytes) -> tuple[list[str], bytes]:
        if self.closed:
            return [], b""  # the closing handshake is done on our side: ignore the rest
        buf = self._buffer + data if self._buffer else data
        texts: list[str] = []
        reply = b""
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buf
                return texts, reply
            self._check_response(buf[:end])
            self.open = True
            buf = buf[end + 4 :]
        pos, size = 0, len(buf)
        while not self.closed and size - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if second & 0x80:
                raise WireError("a server frame must not be masked")
            if not first & 0x80 or first & 0x70:
                raise WireError("fragmented frames and extensions are not expected")
            n, start = second & 0x7F, pos + 2
            if n == 126:
                if size - start < 2:
                    break
                (n,) = struct.unpack_from("!H", buf, start)
                start += 2
            elif n == 127:
                if size - start < 8:
                    break
                (n,) = struct.unpack_from("!Q", buf, start)
                if n >> 63:
                    raise WireError("a 64-bit frame length with its top bit set")
                start += 8
            if size - start < n:
                break
            payload, pos = buf[start : start + n], start + n
            opcode = first & 0x0F
            if opcode == TEXT:
                texts.append(payload.decode())
            elif opcode == PING:
                reply += frame(PONG, payload)
            elif opcode == CLOSE:
                self.closed = True
                reply += frame(CLOSE, payload[:2])
            elif opcode != PONG:
                raise WireError(f"unexpected opcode {opcode}")
        self._buffer = buf[pos:]
        return texts, reply

    def _check_response(self, head: bytes) -> None:
        status, *fields = head.decode("latin-1").split("\r\n")
        if not status.startswith("HTTP/1.1 101"):
            raise WireError(f"upgrade refused: {status}")
        headers = {}
        for line in fields:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("upgrade", "").lower() != "websocket":
            raise WireError("no Upgrade: websocket in the response")
        if "upgrade" not in (t.strip() for t in headers.get("connection", "").lower().split(",")):
            raise WireError("no Connection: upgrade in the response")
        if headers.get("sec-websocket-accept", "").encode() != self._accept:
            raise WireError("wrong Sec-WebSocket-Accept")
