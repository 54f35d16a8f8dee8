"""SMS encoding and segmentation (GSM 03.38 / 3GPP TS 23.038 and TS 23.040).

Decides whether a text goes out in the GSM 7-bit default alphabet or in UCS-2, how many parts
(segments) it takes, and where a multi-part message is cut:

* GSM-7: 160 septets in a single SMS, 153 per part of a concatenated SMS (the 6-octet user
  data header costs 7 septets). Characters of the extension table (``^{}\\[~]|€`` and form feed)
  take two septets, ESC + character, and that pair is never split across two parts.
* UCS-2: 70 UTF-16 code units in a single SMS, 67 per part. A character outside the BMP (most
  emoji) takes two code units; a surrogate pair is never split, and neither is a character from
  the marks, variation selectors, skin tones, ZWJ sequences, keycaps or flag pairs attached to it
  (unless such a cluster alone is longer than a part, then it is cut between code points).
* Smart encoding (optional) replaces look-alike characters (curly quotes, dashes, special spaces,
  accented letters, ...) so that a text stays GSM-7 when they are the only obstacle.

Pure functions, no I/O.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENDED",
    "GSM7_MULTI",
    "GSM7_SINGLE",
    "MAX_SEGMENTS_DEFAULT",
    "SMART_REPLACEMENTS",
    "UCS2_MULTI",
    "UCS2_SINGLE",
    "Encoding",
    "Segmentation",
    "analyse",
    "count_parts",
    "is_gsm7",
]

Encoding = Literal["GSM-7", "UCS-2"]

MAX_SEGMENTS_DEFAULT: Final = 10

GSM7_SINGLE: Final = 160
GSM7_MULTI: Final = 153
UCS2_SINGLE: Final = 70
UCS2_MULTI: Final = 67

# GSM 03.38 default alphabet (0x1B, the escape to the extension table, is not a character).
GSM7_BASIC: Final = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Default alphabet extension table: each one is sent as ESC + character (two septets).
GSM7_EXTENDED: Final = frozenset("\f^{}\\[~]|€")
_GSM7: Final = GSM7_BASIC | GSM7_EXTENDED


def _build_replacements() -> dict[str, str]:
    table: dict[str, str] = {}

    def put(chars: str, replacement: str) -> None:
        for c in chars:
            table[c] = replacement

    put("‘’‚‛′‹›`´ʹʼˈ", "'")  # single quotes, prime, single guillemets, grave/acute accents
    put("“”„‟″«»ʺ", '"')  # double quotes, double prime, guillemets
    put("‐‑‒–—―−⁃", "-")  # hyphens, dashes, minus sign, hyphen bullet
    put("•‣∙◦", "-")  # bullets
    put("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a", " ")
    put("\u202f\u205f\u3000\t", " ")  # narrow/medium maths/ideographic spaces, tab
    put("\u200b\u200c\u200d\u2060\ufeff\u00ad", "")  # zero-width characters, soft hyphen
    put("\u2028\u2029", "\n")  # line and paragraph separators
    put("…", "...")
    put("×", "x")
    put("÷⁄∕", "/")  # division sign, fraction slash, division slash
    put("ˆ", "^")
    put("˜", "~")
    table.update({"½": "1/2", "⅓": "1/3", "⅔": "2/3", "¼": "1/4", "¾": "3/4"})
    # Letters GSM-7 lacks whose base letter or a close cousin is in the table. Accented letters in
    # general (á, ê, õ, ...) lose their marks through NFD; these do not decompose.
    table.update({"ç": "Ç", "ł": "l", "Ł": "L", "đ": "d", "Đ": "D", "œ": "oe", "Œ": "OE"})
    table.update({"ı": "i", "ĸ": "k"})
    # Greek capitals identical in shape to Latin ones (the others are in the GSM-7 table).
    table.update(dict(zip("ΑΒΕΖΗΙΚΜΝΟΡΤΥΧ", "ABEZHIKMNOPTYX", strict=True)))
    return table


# Look-alike replacements applied by smart encoding. Every key is outside GSM-7 and every value
# is GSM-7 (possibly empty: zero-width characters are dropped).
SMART_REPLACEMENTS: Final[dict[str, str]] = _build_replacements()


@dataclass(frozen=True, slots=True)
class Segmentation:
    """How a text is sent: its encoding, its parts and the room left in the last one."""

    encoding: Encoding
    segments: int
    # Unicode code points of ``text`` (not UTF-16 code units, not septets).
    characters: int
    # Septets (GSM-7, escape septets included) or UTF-16 code units (UCS-2) of ``text``.
    units: int
    # Capacity of one part: 160 / 153 (GSM-7) or 70 / 67 (UCS-2) for single / multi-part.
    per_segment: int
    # Units still free in the last part.
    remaining: int
    # The text that is sent (after smart-encoding replacements) and its parts, which join to it.
    text: str
    replaced: tuple[str, ...]
    parts: tuple[str, ...]


def is_gsm7(text: str) -> bool:
    """True if every character of ``text`` is in the GSM-7 default alphabet or its extension."""
    return all(c in _GSM7 for c in text)


def count_parts(text: str) -> int:
    """Number of SMS parts ``text`` takes as is (no smart encoding); an empty text takes one."""
    return analyse(text).segments


def analyse(text: str, *, smart_encoding: bool = False) -> Segmentation:
    """Encoding, part count and split of ``text``.

    With ``smart_encoding`` look-alike characters are replaced when (and only when) that makes the
    whole text GSM-7 without taking more parts than sending it unchanged in UCS-2; otherwise the
    text goes out unchanged and ``replaced`` is empty.
    """
    if is_gsm7(text):
        return _split(text, "GSM-7", ())
    ucs2 = _split(text, "UCS-2", ())
    if smart_encoding:
        converted = _smart_gsm7(text)
        if converted is not None:
            new_text, replaced = converted
            gsm = _split(new_text, "GSM-7", replaced)
            if gsm.segments <= ucs2.segments:
                return gsm
    return ucs2


def _smart_gsm7(text: str) -> tuple[str, tuple[str, ...]] | None:
    """``text`` made GSM-7 through look-alike replacements, or None if it cannot be."""
    out: list[str] = []
    replaced: dict[str, None] = {}
    for cluster in _mark_clusters(text):
        if is_gsm7(cluster):
            out.append(cluster)
            continue
        substitute = _substitute(cluster)
        if substitute is None:
            return None
        out.append(substitute)
        replaced[cluster] = None
    return "".join(out), tuple(replaced)


def _substitute(cluster: str) -> str | None:
    """A GSM-7 stand-in for one non-GSM-7 character with its combining marks, if there is one."""
    composed = unicodedata.normalize("NFC", cluster)
    if is_gsm7(composed):  # e.g. "e" + U+0301 -> "é"
        return composed
    if composed in SMART_REPLACEMENTS:
        return SMART_REPLACEMENTS[composed]
    # An accented letter: drop its marks (á -> a, Ő -> O, Ά -> Α -> A, ç̈ -> ç -> Ç).
    if not unicodedata.category(composed[0]).startswith("L"):
        return None
    base = "".join(c for c in unicodedata.normalize("NFD", composed) if not _is_mark(c))
    if len(base) != 1:
        return None
    if base in _GSM7:
        return base
    return SMART_REPLACEMENTS.get(base)


def _is_mark(c: str) -> bool:
    return unicodedata.category(c) in ("Mn", "Mc", "Me")


def _mark_clusters(text: str) -> Iterator[str]:
    """``text`` cut into characters, each with the combining marks that follow it."""
    start = 0
    for i in range(1, len(text) + 1):
        if i == len(text) or not _is_mark(text[i]):
            yield text[start:i]
            start = i


# --- splitting ------------------------------------------------------------------------------

_ZWJ: Final = "\u200d"
_KEYCAP: Final = "\u20e3"


def _is_regional_indicator(c: str) -> bool:
    return "\U0001f1e6" <= c <= "\U0001f1ff"


def _extends(c: str) -> bool:
    """True if ``c`` belongs to the character before it (it never starts a cluster)."""
    return (
        _is_mark(c)  # combining marks, variation selectors (Mn), enclosing keycap (Me)
        or "\U0001f3fb" <= c <= "\U0001f3ff"  # emoji skin tone modifiers
        or "\U000e0020" <= c <= "\U000e007f"  # tag characters (subdivision flags)
        or c == _ZWJ
    )


def _ucs2_clusters(text: str) -> Iterator[str]:
    """``text`` cut where a part boundary may fall in UCS-2 (a simplified grapheme split).

    Keeps together a character with its marks, variation selectors, skin tone modifiers, tags,
    keycap, the characters joined to it by ZWJ, and the two regional indicators of a flag.
    """
    n = len(text)
    i = 0
    while i < n:
        j = i + 1
        if _is_regional_indicator(text[i]) and j < n and _is_regional_indicator(text[j]):
            j += 1
        while j < n:
            if text[j - 1] == _ZWJ or _extends(text[j]):
                j += 1
            else:
                break
        yield text[i:j]
        i = j


def _gsm7_units(c: str) -> int:
    return 2 if c in GSM7_EXTENDED else 1


def _ucs2_units(s: str) -> int:
    return sum(2 if ord(c) > 0xFFFF else 1 for c in s)


def _atoms(text: str, encoding: Encoding, capacity: int) -> Iterator[tuple[str, int]]:
    """The pieces no part boundary may cut, with their size in units."""
    if encoding == "GSM-7":
        for c in text:  # an extension character is one atom of two septets
            yield c, _gsm7_units(c)
        return
    for cluster in _ucs2_clusters(text):
        size = _ucs2_units(cluster)
        if size <= capacity:
            yield cluster, size
        else:  # too long to keep whole: cut between code points, never inside a surrogate pair
            for c in cluster:
                yield c, _ucs2_units(c)


def _split(text: str, encoding: Encoding, replaced: tuple[str, ...]) -> Segmentation:
    if encoding == "GSM-7":
        single, multi = GSM7_SINGLE, GSM7_MULTI
        units = sum(_gsm7_units(c) for c in text)
    else:
        single, multi = UCS2_SINGLE, UCS2_MULTI
        units = _ucs2_units(text)
    if units <= single:
        parts: tuple[str, ...] = (text,)
        per_segment, last = single, units
    else:
        per_segment = multi
        chunks: list[str] = []
        current: list[str] = []
        last = 0
        for atom, size in _atoms(text, encoding, multi):
            if last + size > multi:
                chunks.append("".join(current))
                current, last = [], 0
            current.append(atom)
            last += size
        chunks.append("".join(current))
        parts = tuple(chunks)
    return Segmentation(
        encoding=encoding,
        segments=len(parts),
        characters=len(text),
        units=units,
        per_segment=per_segment,
        remaining=per_segment - last,
        text=text,
        replaced=replaced,
        parts=parts,
    )
