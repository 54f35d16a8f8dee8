"""Opaque keyset cursors: the (created_at, id) of the last row a page returned."""

from __future__ import annotations

import base64
from datetime import datetime

from smsgw.clock import iso, parse_iso
from smsgw.errors import ApiError


def encode_cursor(created_at: datetime, row_id: str) -> str:
    return base64.urlsafe_b64encode(f"{iso(created_at)}|{row_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime, str] | None:
    if cursor is None:
        return None
    try:
        stamp, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        when = parse_iso(stamp)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid_cursor", "cursor is not one this API returned") from None
    assert when is not None
    return when, row_id


def next_cursor(rows: list[tuple[datetime, str]], limit: int) -> str | None:
    if len(rows) < limit:
        return None
    return encode_cursor(*rows[-1])
