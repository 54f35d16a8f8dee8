"""Opt-out keywords: an inbound STOP (or a variant) opts the sender out, START opts back in."""

from __future__ import annotations

import re

STOP_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
START_WORDS = frozenset({"START", "UNSTOP"})
_NOISE = re.compile(r"[\s.!,;:'\"]+")


def keyword(body: str) -> str | None:
    """``"stop"``, ``"start"`` or None. Only a message that *is* the keyword counts
    ("stop." or " Stop " yes, "please don't stop" no), as carriers do."""
    word = _NOISE.sub("", body).upper()
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    return None
