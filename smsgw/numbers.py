"""Recipient phone numbers: parse, validate and normalise to E.164 with ``phonenumbers``.

``parse_recipient`` is the gate for outgoing messages: it accepts only valid numbers that can
receive SMS (mobile, fixed-line-or-mobile, or of unknown type) and raises ``InvalidNumber`` with a
machine-readable code otherwise. ``describe`` reports on any parseable number, valid or not (for
``GET /phone/validate/{number}``).

Accepted input: digits with common formatting (spaces, dashes, dots, slashes, parentheses), an
optional leading ``+`` or ``00`` international prefix, an optional ``tel:`` prefix. National
numbers need a default region. Letters (vanity numbers, extensions) and non-ASCII digits are
rejected. Parsing costs CPU, so results are cached per (input, region).

Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Final

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

__all__ = [
    "INVALID_NUMBER",
    "MISSING_REGION",
    "NOT_MOBILE",
    "InvalidNumber",
    "NumberInfo",
    "describe",
    "parse_recipient",
]

INVALID_NUMBER: Final = "invalid_number"
NOT_MOBILE: Final = "not_mobile"
MISSING_REGION: Final = "missing_region"

# Longer input is not a phone number; refusing it early keeps the cache keys small.
MAX_INPUT_LENGTH: Final = 64
CACHE_SIZE: Final = 16_384  # about a day of distinct recipients of a mid-size farm; ~12 MB
# Country code and national number together: E.164 allows 15; phonenumbers parses up to 17 + 3.
MAX_DIGITS: Final = 20

# Types that are known not to receive SMS. MOBILE, FIXED_LINE_OR_MOBILE (all of NANP), UNKNOWN
# and PERSONAL_NUMBER (follow-me numbers that may forward to a mobile) are accepted.
_NOT_SMS_CAPABLE: Final = frozenset(
    {
        PhoneNumberType.FIXED_LINE,
        PhoneNumberType.TOLL_FREE,
        PhoneNumberType.PREMIUM_RATE,
        PhoneNumberType.SHARED_COST,
        PhoneNumberType.VOIP,
        PhoneNumberType.PAGER,
        PhoneNumberType.UAN,
        PhoneNumberType.VOICEMAIL,
    }
)

# ASCII digits with visual separators, an optional leading "+" and at least one digit.
_ALLOWED: Final = re.compile(r"\+?[0-9 \-.()/]*[0-9][0-9 \-.()/]*", re.ASCII)


class InvalidNumber(Exception):
    """A recipient that cannot be used; ``code`` is one of the module's error codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True, slots=True)
class NumberInfo:
    """A parsed phone number; for an invalid one the formats are best effort."""

    e164: str  # "+14155552671"
    valid: bool
    country: str | None  # ISO 3166-1 alpha-2 region, e.g. "US"; None if unknown / non-geographic
    country_code: int  # calling code, e.g. 1
    number_type: str  # "mobile", "fixed_line_or_mobile", "toll_free", ..., "unknown"
    # The parsed number; the display formats are made from it only when asked for (a send
    # needs just the E.164 form, and formatting costs as much as validating).
    number: phonenumbers.PhoneNumber = field(repr=False, compare=False)

    @property
    def national(self) -> str:  # "(415) 555-2671"
        return str(phonenumbers.format_number(self.number, PhoneNumberFormat.NATIONAL))

    @property
    def international(self) -> str:  # "+1 415-555-2671"
        return str(phonenumbers.format_number(self.number, PhoneNumberFormat.INTERNATIONAL))


@dataclass(frozen=True, slots=True)
class _Failure:
    code: str
    message: str


def parse_recipient(raw: str, default_region: str | None) -> NumberInfo:
    """Parse ``raw`` as an SMS recipient; ``default_region`` (e.g. "GB") is used for national
    numbers. Raises ``InvalidNumber``: ``invalid_number``, ``not_mobile`` or ``missing_region``.
    """
    info = _parse_cached(raw, _region(default_region))
    if isinstance(info, _Failure):
        raise InvalidNumber(info.code, info.message)
    if not info.valid:
        raise InvalidNumber(INVALID_NUMBER, f"{info.international} is not a valid phone number")
    if info.number_type in _NOT_SMS_CAPABLE_NAMES:
        kind = info.number_type.replace("_", " ")
        raise InvalidNumber(
            NOT_MOBILE, f"{info.international} is a {kind} number and cannot receive SMS"
        )
    return info


def describe(raw: str, default_region: str | None) -> NumberInfo:
    """What ``raw`` is, valid or not. Raises ``InvalidNumber`` only if it cannot be parsed at
    all (``invalid_number``, or ``missing_region`` for a national number without a region).
    """
    info = _parse_cached(raw, _region(default_region))
    if isinstance(info, _Failure):
        raise InvalidNumber(info.code, info.message)
    return info


def _type_name(number_type: int) -> str:
    return str(PhoneNumberType.to_string(number_type)).lower()


_NOT_SMS_CAPABLE_NAMES: Final = frozenset(_type_name(t) for t in _NOT_SMS_CAPABLE)


def _region(default_region: str | None) -> str | None:
    """The region in upper case, or None if missing or unknown to phonenumbers."""
    if not default_region:
        return None
    region = default_region.strip().upper()
    return region if region in phonenumbers.SUPPORTED_REGIONS else None


@lru_cache(maxsize=CACHE_SIZE)
def _parse_cached(raw: str, region: str | None) -> NumberInfo | _Failure:
    # Failures are cached as values (lru_cache does not cache exceptions); the callers raise a
    # fresh InvalidNumber each time.
    if len(raw) > MAX_INPUT_LENGTH:
        return _Failure(INVALID_NUMBER, "too long to be a phone number")
    text = " ".join(raw.split())  # any Unicode whitespace (e.g. no-break space) becomes one space
    if text[:4].lower() == "tel:":
        text = text[4:].lstrip()
    if not _ALLOWED.fullmatch(text):
        return _Failure(
            INVALID_NUMBER,
            "a phone number may contain only digits, spaces, - . ( ) / and a leading +",
        )
    international = text.startswith("+") or text.startswith("00")
    digits = sum(c.isdigit() for c in text) - (2 if text.startswith("00") else 0)
    if digits > MAX_DIGITS:
        return _Failure(INVALID_NUMBER, "too long to be a phone number")
    if not international and region is None:
        return _Failure(
            MISSING_REGION, "national number without a country code and no default region"
        )
    candidates = [text if region or text[0] == "+" else "+" + text[2:]]
    if region and text.startswith("00"):
        # Where the region's international prefix is not 00 (e.g. US 011), read 00 as "+".
        candidates.append("+" + text[2:])
    first: phonenumbers.PhoneNumber | _Failure | None = None
    for candidate in candidates:
        try:
            number = phonenumbers.parse(candidate, region)
        except NumberParseException as exc:
            if first is None:
                first = _Failure(INVALID_NUMBER, _parse_error(exc))
            continue
        number_type = phonenumbers.number_type(number)
        if number_type != PhoneNumberType.UNKNOWN:
            return _info(number, number_type)
        if not isinstance(first, phonenumbers.PhoneNumber):
            first = number
    assert first is not None
    return first if isinstance(first, _Failure) else _info(first)


def _parse_error(exc: NumberParseException) -> str:
    messages = {
        NumberParseException.INVALID_COUNTRY_CODE: "unknown country calling code",
        NumberParseException.NOT_A_NUMBER: "not a phone number",
        NumberParseException.TOO_SHORT_AFTER_IDD: "too short to be a phone number",
        NumberParseException.TOO_SHORT_NSN: "too short to be a phone number",
        NumberParseException.TOO_LONG: "too long to be a phone number",
    }
    return messages.get(exc.error_type, "not a phone number")


def _info(number: phonenumbers.PhoneNumber, number_type: int | None = None) -> NumberInfo:
    # A number is valid exactly when it has a type (number_type() returns UNKNOWN for an
    # invalid one; is_valid_number() asks the same metadata the same question), so the
    # type, which is wanted anyway, decides validity: a third of an uncached parse saved.
    if number_type is None:
        number_type = phonenumbers.number_type(number)
    valid = number_type != PhoneNumberType.UNKNOWN
    country_code = int(number.country_code or 0)
    country: str | None
    if valid:
        country = phonenumbers.region_code_for_number(number)
    else:  # best effort: the calling code's region when only one region uses it
        regions = phonenumbers.region_codes_for_country_code(country_code)
        country = regions[0] if len(regions) == 1 else None
    if country in (None, "ZZ", phonenumbers.REGION_CODE_FOR_NON_GEO_ENTITY):
        country = None
    return NumberInfo(
        e164=phonenumbers.format_number(number, PhoneNumberFormat.E164),
        valid=valid,
        country=country,
        country_code=country_code,
        number_type=_type_name(number_type),
        number=number,
    )
