"""Time and id helpers shared by the hub, so every timestamp has one format and one source."""

from __future__ import annotations

import os
import random
import secrets
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    """Timezone-aware now; stored as ISO-8601 UTC text so SQLite and PostgreSQL sort alike."""
    return datetime.now(UTC)


_today: tuple[int, str] = (-1, "")


def today() -> str:
    """The UTC date as ISO text, recomputed only when the day changes (hot path)."""
    global _today
    day = int(time.time() // 86400)
    if day != _today[0]:
        _today = (day, datetime.now(UTC).date().isoformat())
    return _today[1]


def iso(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# Ids must be unique, not secret: a PRNG seeded from the OS (and reseeded in a forked
# child, so two processes never share a sequence) costs a tenth of os.urandom, whose
# syscall also hands the GIL to the database writer thread in the middle of a request.
_id_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _id_random.seed(os.urandom(32)))


def new_id() -> str:
    """A UUIDv7-style id: 48 bits of milliseconds, then random bits.

    Time-ordered ids keep B-tree inserts at the right edge of the index, and building the
    string directly is several times cheaper than ``str(uuid.uuid4())``.
    """
    ms = time.time_ns() // 1_000_000
    rand = _id_random.getrandbits(76)
    value = (ms << 80) | (0x7 << 76) | (rand & ((1 << 76) - 1))
    value = (value & ~(0xC << 60)) | (0x8 << 60)  # RFC 4122 variant bits
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_secret(prefix: str, nbytes: int = 24) -> str:
    return f"{prefix}{secrets.token_urlsafe(nbytes)}"
