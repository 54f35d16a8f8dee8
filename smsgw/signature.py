"""Webhook signatures: ``X-Smsgw-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]``.

``v1`` is HMAC-SHA256 of ``"<t>.<raw body>"`` under the endpoint's secret. While a secret
is being rotated the hub sends one ``v1`` per valid secret, so a receiver holding either
one verifies. ``verify`` is what receivers (and our tests) run; the README shows the same
steps for people who do not use this package.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

HEADER = "X-Smsgw-Signature"
TOLERANCE = 300  # seconds: reject older (replayed) or far-future timestamps


class SignatureError(ValueError):
    """The header is missing, malformed, too old, or signed with another secret."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return mac.hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in secrets)])


def verify(
    header: str | None,
    body: bytes,
    secret: str,
    *,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a signature header against ``secret``; returns its timestamp."""
    if not header:
        raise SignatureError("no signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, _, value = item.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("malformed signature header")
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        raise SignatureError("timestamp outside the tolerance")
    expected = sign(secret, timestamp, body)
    # Compare against every v1 (rotation), each in constant time.
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("no signature matches the secret")
    return timestamp
