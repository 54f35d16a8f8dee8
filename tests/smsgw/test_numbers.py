"""Recipient phone numbers: parsing, validation, SMS capability, bad input."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from smsgw import numbers
from smsgw.numbers import InvalidNumber, NumberInfo, describe, parse_recipient

FULLWIDTH = {ord(d): ord(d) + 0xFEE0 for d in "0123456789"}


@pytest.mark.parametrize(
    ("raw", "region", "e164", "country", "number_type"),
    [
        ("+1 202-555-0123", None, "+12025550123", "US", "fixed_line_or_mobile"),
        ("+44 7400 123456", None, "+447400123456", "GB", "mobile"),
        ("+49 1512 3456789", None, "+4915123456789", "DE", "mobile"),
        ("+33 6 12 34 56 78", None, "+33612345678", "FR", "mobile"),
        ("+91 98765 43210", None, "+919876543210", "IN", "mobile"),
        ("+234 803 123 4567", None, "+2348031234567", "NG", "mobile"),
        ("+55 11 91234-5678", None, "+5511912345678", "BR", "mobile"),
        # national numbers with a default region
        ("(202) 555-0123", "US", "+12025550123", "US", "fixed_line_or_mobile"),
        ("07400 123456", "GB", "+447400123456", "GB", "mobile"),
        ("01512 3456789", "DE", "+4915123456789", "DE", "mobile"),
        ("06 12 34 56 78", "FR", "+33612345678", "FR", "mobile"),
        ("098765 43210", "IN", "+919876543210", "IN", "mobile"),
        ("0803 123 4567", "NG", "+2348031234567", "NG", "mobile"),
        ("(11) 91234-5678", "BR", "+5511912345678", "BR", "mobile"),
    ],
)
def test_valid_mobile_numbers(
    raw: str, region: str | None, e164: str, country: str, number_type: str
) -> None:
    info = parse_recipient(raw, region)
    assert info.valid
    assert (info.e164, info.country, info.number_type) == (e164, country, number_type)
    assert info.international.startswith(f"+{info.country_code} ")
    assert describe(raw, region) == info


def test_number_info_fields() -> None:
    info = parse_recipient("+1 415 555 2671", None)
    assert info == NumberInfo(
        e164="+14155552671",
        valid=True,
        country="US",
        country_code=1,
        number_type="fixed_line_or_mobile",
        number=info.number,
    )
    assert (info.national, info.international) == ("(415) 555-2671", "+1 415-555-2671")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.e164 = "+1"  # type: ignore[misc]


def test_us_numbers_are_fixed_line_or_mobile_and_accepted() -> None:
    for raw in ["+1 650 253 0000", "+1 212 555 0100", "+1 415 555 2671"]:
        assert parse_recipient(raw, None).number_type == "fixed_line_or_mobile"


@pytest.mark.parametrize(
    "raw",
    [
        "+12025550123",
        "+1 202 555 0123",
        "+1-202-555-0123",
        "+1.202.555.0123",
        "+1 (202) 555-0123",
        "+1 202/555/0123",
        "  +1 202 555 0123  ",
        "\u00a0+1\u00a0202\u00a0555\u00a00123",
        "\t+1 202 555 0123\n",
        "001 202 555 0123",
        "0012025550123",
        "tel:+1-202-555-0123",
        "TEL:+12025550123",
        "tel: +1 202 555 0123",
    ],
)
def test_common_formatting_is_accepted(raw: str) -> None:
    assert parse_recipient(raw, None).e164 == "+12025550123"


def test_leading_00_with_a_region() -> None:
    # GB's own international prefix is 00.
    assert parse_recipient("0049 1512 3456789", "GB").e164 == "+4915123456789"
    # The US prefix is 011; 00 is still read as an international prefix.
    assert parse_recipient("0044 7400 123456", "US").e164 == "+447400123456"
    assert parse_recipient("011 44 7400 123456", "US").e164 == "+447400123456"


def test_international_number_ignores_default_region() -> None:
    assert parse_recipient("+44 7400 123456", "US").country == "GB"
    assert parse_recipient("+44 7400 123456", "DE").e164 == "+447400123456"


def test_region_is_case_insensitive() -> None:
    assert parse_recipient("07400 123456", "gb").e164 == "+447400123456"
    assert parse_recipient("07400 123456", " GB ").e164 == "+447400123456"


def test_same_national_digits_differ_by_region() -> None:
    assert parse_recipient("0803 123 4567", "NG").country_code == 234
    with pytest.raises(InvalidNumber):
        parse_recipient("0803 123 4567", "DE")


# --- rejections -------------------------------------------------------------------------------


def assert_rejected(raw: str, region: str | None, code: str) -> InvalidNumber:
    with pytest.raises(InvalidNumber) as caught:
        parse_recipient(raw, region)
    assert caught.value.code == code
    assert caught.value.message
    return caught.value


@pytest.mark.parametrize(
    ("raw", "number_type"),
    [
        ("+44 20 7946 0018", "fixed_line"),  # London
        ("020 7946 0018", "fixed_line"),  # same, national (region GB below)
        ("+49 30 123456", "fixed_line"),  # Berlin
        ("+33 1 42 68 53 00", "fixed_line"),  # Paris
        ("+1 800 555 0199", "toll_free"),
        ("+1 (888) 555-0100", "toll_free"),
        ("+44 800 123 4567", "toll_free"),
        ("+800 1234 5678", "toll_free"),  # international freephone, no region
        ("+1 900 555 0199", "premium_rate"),
        ("+44 909 876 5432", "premium_rate"),
        ("+44 56 1234 5678", "voip"),
    ],
)
def test_numbers_that_cannot_receive_sms(raw: str, number_type: str) -> None:
    error = assert_rejected(raw, "GB", "not_mobile")
    assert number_type.replace("_", " ") in error.message
    info = describe(raw, "GB")  # describe still reports them
    assert info.valid and info.number_type == number_type


def test_non_geographic_number_has_no_country() -> None:
    info = describe("+800 1234 5678", None)
    assert (info.country, info.country_code) == (None, 800)


@pytest.mark.parametrize("region", [None, "", "XX", "ZZ"])
def test_national_number_without_usable_region(region: str | None) -> None:
    assert_rejected("07400 123456", region, "missing_region")
    assert_rejected("(202) 555-0123", region, "missing_region")
    with pytest.raises(InvalidNumber) as caught:
        describe("07400 123456", region)
    assert caught.value.code == "missing_region"


@pytest.mark.parametrize(
    "raw",
    [
        "",
        " ",
        "abc",
        "+",
        "++1",
        "++12025550123",
        "+-",
        "()",
        "00",
        "tel:",
        "+1 202 555 0123 ext 5",  # extensions make no sense for SMS
        "+1 202 555 0123 x5",
        "+1-800-FLOWERS",  # vanity letters are not accepted
        "1" * 30,
        "+" + "1" * 30,
        "+1" + "2" * 17,
        "9" * 1000,
        "+1 202 555 0123;ext=5",
        "+1 202 555 0123\x00",
        "+1 202 555 +0123",
        "+٤٤٧٤٠٠١٢٣٤٥٦",  # Arabic-Indic digits
        "+" + "447400123456".translate(FULLWIDTH),  # fullwidth digits
        "+⁴⁴⁷⁴⁰⁰¹²³⁴⁵⁶",  # superscripts
        "①②③",
        "+44 7400 123456 😀",
        "+999 1234 5678",  # unassigned country calling code
        "+1 555 1234",  # parseable but not valid
        "+44 7700 900123",  # parseable, in an unassigned range
        "+44 12",
    ],
)
def test_garbage_is_invalid_number(raw: str) -> None:
    assert_rejected(raw, None, "invalid_number")
    assert_rejected(raw, "US", "invalid_number")


def test_invalid_number_exception() -> None:
    error = InvalidNumber("invalid_number", "not a phone number")
    assert isinstance(error, Exception)
    assert (error.code, error.message) == ("invalid_number", "not a phone number")
    assert "not a phone number" in str(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, copy.message) == (error.code, error.message)


# --- describe ---------------------------------------------------------------------------------


def test_describe_invalid_but_parseable_number() -> None:
    info = describe("+1 555 1234", None)
    assert not info.valid
    assert info.e164 == "+15551234"
    assert info.country_code == 1
    assert info.number_type == "unknown"
    assert info.country is None  # +1 is shared by many regions


def test_describe_invalid_number_in_single_region_calling_code() -> None:
    info = describe("+49 123", None)
    assert (info.valid, info.country, info.country_code, info.e164) == (False, "DE", 49, "+49123")


def test_describe_invalid_national_number_with_region() -> None:
    info = describe("07700 900123", "GB")
    assert not info.valid
    assert info.e164 == "+447700900123"
    assert info.national == "07700 900123"


@pytest.mark.parametrize("raw", ["", "abc", "+", "++1", "1" * 30, "+999 1234 5678", "+٤٤"])
def test_describe_unparseable_raises_invalid_number(raw: str) -> None:
    with pytest.raises(InvalidNumber) as caught:
        describe(raw, "US")
    assert caught.value.code == "invalid_number"


# --- cache ------------------------------------------------------------------------------------


def test_results_are_cached_per_input_and_region() -> None:
    numbers._parse_cached.cache_clear()
    first = parse_recipient("+44 7400 123456", None)
    assert parse_recipient("+44 7400 123456", None) is first
    parse_recipient("07400 123456", "GB")
    for _ in range(3):  # failures are cached too, and raise a fresh exception every time
        with pytest.raises(InvalidNumber):
            parse_recipient("abc", None)
    errors = []
    for _ in range(2):
        try:
            parse_recipient("+1 800 555 0199", None)
        except InvalidNumber as exc:
            errors.append(exc)
    assert errors[0] is not errors[1]
    info = numbers._parse_cached.cache_info()
    assert info.maxsize == numbers.CACHE_SIZE
    assert info.currsize == 4
    assert info.hits == 4


def test_validity_is_phonenumbers_own_for_every_region_and_random_digits() -> None:
    """``describe`` takes a number's validity from its type (one metadata walk fewer):
    it must agree with ``phonenumbers.is_valid_number`` everywhere, valid or not."""
    import random

    import phonenumbers

    samples = [
        example
        for region in sorted(phonenumbers.SUPPORTED_REGIONS)
        for kind in range(12)
        if (example := phonenumbers.example_number_for_type(region, kind)) is not None
    ]
    rng = random.Random(7)
    codes = sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)
    for _ in range(3000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 12)))
        try:
            samples.append(phonenumbers.parse(f"+{rng.choice(codes)}{digits}", None))
        except phonenumbers.NumberParseException:
            continue
    valid = 0
    for number in samples:
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        info = describe(e164, None)
        assert info.valid == phonenumbers.is_valid_number(number), e164
        valid += info.valid
    assert 0 < valid < len(samples)  # both kinds were checked
