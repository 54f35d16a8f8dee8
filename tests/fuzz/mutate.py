"""Random frames for the live fuzzers, from a seeded ``random.Random`` (a live run
interleaves with the network, so hypothesis' shrinking would not reproduce it anyway;
the seed and the counts are printed instead).

``Mutator.text()`` is one text frame as a buggy or hostile phone might send it: a valid
frame of the wire definition, about a message the hub really dispatched or not, then
often broken (a field dropped or of the wrong type, a huge number, odd Unicode, an
unknown field or type), sometimes cut short, nested too deep, or not JSON at all.
``raw_frame`` builds WebSocket frames byte by byte, for what a well-behaved client
library refuses to send (invalid UTF-8, reserved opcodes and bits, unmasked frames,
oversize control frames, a continuation with nothing to continue).
"""

from __future__ import annotations

import json
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

from android_client import wire

ODD_STRINGS = ["", "\x00", "\ud800", "²", "٣.0", "\u202e", "😀" * 20, "a" * 70, "\\u0000"]
HUGE = [2**31 - 1, 2**31, 2**63, -(2**63) - 1, 10**30, 10**400, -1, 0, 1.5, float("inf")]


class Mutator:
    def __init__(self, rng: random.Random, known_ids: list[str]) -> None:
        self.rng = rng
        self.known_ids = known_ids  # messages the hub dispatched: real targets for reports

    # -- values ---------------------------------------------------------------------------

    def odd(self) -> Any:
        r = self.rng
        choice = r.randrange(8)
        if choice == 0:
            return r.choice(ODD_STRINGS)
        if choice == 1:
            return r.choice(HUGE)
        if choice == 2:
            return None
        if choice == 3:
            return r.choice([True, False])
        if choice == 4:
            return [self.odd() for _ in range(r.randrange(3))]
        if choice == 5:
            return {self.word(): self.odd() for _ in range(r.randrange(3))}
        if choice == 6:
            return "".join(chr(r.randrange(0x20, 0x2FFFF)) for _ in range(r.randrange(1, 30)))
        return r.randrange(-1000, 1000)

    def word(self) -> str:
        return "".join(self.rng.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(6))

    def message_id(self) -> str:
        if self.known_ids and self.rng.random() < 0.7:
            return self.rng.choice(self.known_ids)
        return self.rng.choice(["ghost", "", "m" * 64, "00000000-0000-0000-0000-000000000000"])

    def value(self, spec: wire.Spec, attr: str) -> Any:
        r = self.rng
        if attr == "message_id":
            return self.message_id()
        if attr == "attempt":
            return r.randint(1, 4)
        if spec.kind is str:
            high = int(spec.high) if spec.high is not None else 40
            low = int(spec.low) if spec.low is not None else 0
            size = r.randint(low, min(high, 40))
            return "".join(r.choice("abc+0123456789 é") for _ in range(size))
        if spec.kind is bool:
            return r.random() < 0.5
        if spec.kind is int:
            low = int(spec.low) if spec.low is not None else 0
            high = int(spec.high) if spec.high is not None else 1000
            return r.randint(low, min(high, 1000))
        if spec.kind is float:
            return r.uniform(0, 100)
        if spec.kind is datetime:
            moment = datetime.now(UTC) - timedelta(seconds=r.randrange(86_400))
            return moment.isoformat()
        items = spec.items
        if isinstance(items, dict):
            return [
                {k: self.value(s, k) for k, s in items.items() if s.required or r.random() < 0.5}
                for _ in range(r.randrange(3))
            ]
        return [self.message_id() for _ in range(r.randrange(4))]

    # -- frames ---------------------------------------------------------------------------

    def frame(self, kind: str | None = None) -> dict[str, Any]:
        """A frame the wire definition accepts (``kind``: one of the phone's types)."""
        r = self.rng
        kind = kind or r.choice([k for k in wire.PHONE_FRAMES if k != "hello"] * 3 + ["hello"])
        out: dict[str, Any] = {"type": kind, "id": f"f{r.randrange(10**9)}"}
        for attr, spec in wire.PHONE_FRAMES[kind].items():
            if spec.required or r.random() < 0.5:
                out[spec.name or attr] = self.value(spec, attr)
        if kind == "hello":
            out["protocol"] = "1.0"
        return out

    def broken(self, frame: dict[str, Any]) -> dict[str, Any]:
        r = self.rng
        out = dict(frame)
        for _ in range(r.randint(1, 3)):
            how = r.randrange(6)
            keys = list(out)
            if how == 0 and keys:
                out.pop(r.choice(keys))
            elif how in (1, 2) and keys:
                out[r.choice(keys)] = self.odd()
            elif how == 3:
                out[self.word()] = self.odd()
            elif how == 4:
                out["type"] = r.choice(["launch", "HELLO", "", None, 7, ["sent"], {"a": 1}])
            else:
                out["id"] = r.choice([*ODD_STRINGS, None, 12, "x" * 65])
        return out

    def text(self) -> str:
        """One text frame's content."""
        r = self.rng
        roll = r.random()
        if roll < 0.35:
            return json.dumps(self.frame())
        if roll < 0.75:
            if r.random() < 0.5:  # escaped: "\ud800" reaches the hub's JSON parser
                return json.dumps(self.broken(self.frame()))
            # Written as UTF-8, where a lone surrogate cannot be (a text frame that is
            # not UTF-8 is another test): replaced.
            text = json.dumps(self.broken(self.frame()), ensure_ascii=False)
            return text.encode(errors="replace").decode()
        if roll < 0.85:
            text = json.dumps(self.frame())
            return text[: r.randrange(len(text))]  # cut short
        if roll < 0.9:
            opener = r.choice(["[", '{"a":', '{"type":'])
            return (opener * r.choice([100, 1_000, 20_000]))[:60_000]  # deep, under 64 KiB
        if roll < 0.95:
            return json.dumps(self.odd())
        return "".join(chr(r.randrange(0x20, 0x7F)) for _ in range(r.randrange(200)))


def raw_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    rng: random.Random | None = None,
) -> bytes:
    """One WebSocket frame as bytes (RFC 6455 §5.2), whatever it breaks."""
    head = bytes([(0x80 if fin else 0) | (rsv & 0x7) << 4 | (opcode & 0xF)])
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = bytes((rng or random.Random()).randrange(256) for _ in range(4))
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + body
