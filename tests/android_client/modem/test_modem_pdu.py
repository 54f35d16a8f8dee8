"""SMS PDU encoding and decoding: published vectors, round trips and part boundaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fake_modem import deliver_pdu, status_report_pdu

from android_client import segments
from android_client.modem.pdu import (
    GSM7_BASIC,
    GSM7_EXTENSION,
    DeliveryState,
    Encoding,
    InvalidAddress,
    PduError,
    SmsDeliver,
    SmsStatusReport,
    SmsSubmit,
    TextTooLong,
    decode_gsm7,
    decode_pdu,
    decode_timestamp,
    delivery_state,
    encode_address,
    encode_submit,
    encode_timestamp,
    gsm7_septets,
    join_parts,
    pack_septets,
    split_text,
    unpack_septets,
)

LOREM = (
    "Lorem ipsum dolor sit amet, consectetur adipisicing elit, sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua.Ut enim ad minim veniam, quinostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.Duis aute irure "
    "dolor in reprehenderit in voluptate velit esse cillum doloe eu fugiat nulla "
    "pariatur.Excepteur sint occaecat cupidatat non proident, sunt in culpa qui officia "
    "deserunt mollit anim id est laborum"
)
# python-gsmmodem's concatenated SMS-SUBMIT vectors (first octet 0x45: with TP-RD).
LOREM_PDUS = [
    "0045000B915121551532F40000A0050003000301986F79B90D4AC3E7F53688FC66BFE5A0799A0E0AB7CB"
    "741668FC76CFCB637A995E9783C2E4343C3D4F8FD3EE33A8CC4ED359A079990C22BF41E5747DDE7E9341"
    "F4721BFE9683D2EE719A9C26D7DD74509D0E6287C56F791954A683C86FF65B5E06B5C36777181466A7E3"
    "F5B0AB4A0795DDE936284C06B5D3EE741B642FBBD3E1360B14AFA7DD",
    "0045000B915121551532F40000A0050003000302DE73BABC4E0695F165F9384D0FD3D36F37A8CE6687DB"
    "E337881D16BFE5E939C89D9EA741753A28CC4EC7EB6938A88C0795C3A0F1BBDD7E93DFA0F1DB3D2FC7EB"
    "61BA8B584FCF41E13ABD0C4ACBEBF23288FC66BFE5A0B41B242FC3E56574D94D2ECBD37450DA0DB2BFD9"
    "75383D4C2F83EC65769A0E2ACFE765D038CD66D7DB20F29BFD2E83CA",
    "0045000B915121551532F400008C050003000303EA2073FD9C0ED341EE3A9B1D06C1C3F274985E97BB8A"
    "F871194E2FD7E5A079DA4D07BDC7E370791CA683C675789A1CA687E920F7DB0D82CBDF6972D94D6781E6"
    "75371D947683C675363C0C8AD7D3A0B7D99C1EA7C32072795E96D7DD7450FBCD66A7E9A0B03BDD06A5C9"
    "A0F29C0E6287C56F79BD0D",
]


def tz(hours: float) -> timezone:
    return timezone(timedelta(hours=hours))


def submit(pdu: str) -> SmsSubmit:
    sms = decode_pdu(pdu)
    assert isinstance(sms, SmsSubmit)
    return sms


def deliver(pdu: str, length: int | None = None) -> SmsDeliver:
    sms = decode_pdu(pdu, length)
    assert isinstance(sms, SmsDeliver)
    return sms


def roundtrip(text: str) -> list[SmsSubmit]:
    return [submit(p.pdu) for p in encode_submit("+4915112345678", text, concat_reference=42)]


# -- alphabet --------------------------------------------------------------------------------


def test_alphabet_matches_the_hub_segment_counter() -> None:
    assert len(GSM7_BASIC) == 128
    basic = frozenset(GSM7_BASIC) - {"\x1b"}
    assert basic == segments.GSM7_BASIC
    assert frozenset(GSM7_EXTENSION) == segments.GSM7_EXTENDED


def test_gsm7_pack_vectors() -> None:
    # python-gsmmodem vectors: text → packed septets.
    vectors = {
        "123": bytes([49, 217, 12]),
        "Hello World!": bytes([200, 50, 155, 253, 6, 93, 223, 114, 54, 57, 4]),
        "[{abc}]~": bytes([27, 222, 6, 21, 22, 143, 55, 169, 141, 111, 211, 3]),
        "{åΦΓΛΩΠΨΣΘ€}": bytes([27, 212, 67, 50, 161, 84, 44, 23, 76, 102, 83, 222, 164, 0]),
    }
    for text, packed in vectors.items():
        septets = gsm7_septets(text)
        assert pack_septets(septets) == packed
        assert decode_gsm7(unpack_septets(packed, len(septets))) == text


def test_unknown_extension_code_shows_the_basic_character() -> None:
    assert decode_gsm7([0x1B, 0x41, 0x42]) == "AB"
    assert decode_gsm7([0x41, 0x1B]) == "A"  # a trailing lone escape is dropped


def test_non_gsm_characters_are_refused_for_gsm7() -> None:
    with pytest.raises(PduError):
        gsm7_septets("ç")  # only capital Ç is in the default alphabet


# -- SMS-SUBMIT ------------------------------------------------------------------------------


def test_hellohello_vector() -> None:
    [part] = encode_submit("+46708251358", "hellohello", status_report=False)
    assert part.pdu == "0011000B916407281553F80000AA0AE8329BFD4697D9EC37"
    assert part.tpdu_length == 23  # AT+CMGS=23: the SMSC octet is not counted


def test_submit_without_validity_period_vector() -> None:
    [part] = encode_submit("+27820001111", "Hello World!", status_report=False, validity=None)
    assert part.pdu == "0001000B917228001011F100000CC8329BFD065DDF72363904"


def test_ucs2_submit_with_smsc_vector() -> None:
    [part] = encode_submit(
        "+123456789", "世界您好\uff01", smsc="+44000000000", status_report=False, validity=0xF4
    )
    assert part.pdu == "07914400000000F01100099121436587F90008F40A4E16754C60A8597DFF01"
    assert part.tpdu_length == len(bytes.fromhex(part.pdu)) - 8


def test_concatenated_submit_vectors() -> None:
    parts = encode_submit(
        "+15125551234", LOREM, status_report=False, validity=None, concat_reference=0
    )
    assert len(parts) == 3
    for part, expected in zip(parts, LOREM_PDUS, strict=True):
        assert part.pdu == "0041" + expected[4:]  # same PDU without TP-RD (0x04)


def test_status_report_is_requested_by_default() -> None:
    [part] = encode_submit("+4915112345678", "hi")
    first = bytes.fromhex(part.pdu)[1]
    assert first & 0x20
    assert submit(part.pdu).status_report
    assert not submit(encode_submit("+49151", "hi", status_report=False)[0].pdu).status_report


def test_international_and_national_numbers() -> None:
    assert encode_address("+27829135934").hex().upper() == "0B917228195339F4"
    assert encode_address("+9876543210").hex().upper() == "0A918967452301"
    national = encode_address("0171 123-4567")
    assert national.hex().upper() == "0B811017214365F7"  # type 0x81: unknown / national
    assert submit(encode_submit("0171 1234567", "x")[0].pdu).recipient == "01711234567"
    assert submit(encode_submit("+4915112345678", "x")[0].pdu).recipient == "+4915112345678"


@pytest.mark.parametrize("bad", ["", "+", "hello", "+49 151 abc", "1" * 21, "+49+151"])
def test_invalid_numbers_are_refused(bad: str) -> None:
    with pytest.raises(InvalidAddress):
        encode_submit(bad, "hi")


def test_gsm7_part_boundaries() -> None:
    assert split_text("a" * 160) == (Encoding.GSM7, ["a" * 160])
    encoding, parts = split_text("a" * 161)
    assert encoding is Encoding.GSM7
    assert [len(p) for p in parts] == [153, 8]
    assert [len(p) for p in split_text("a" * 306)[1]] == [153, 153]
    assert [len(p) for p in split_text("a" * 307)[1]] == [153, 153, 1]
    # Extension characters take two septets: 80 of them are 160 septets, one SMS.
    assert split_text("€" * 80)[1] == ["€" * 80]
    assert len(split_text("€" * 80 + "a")[1]) == 2


def test_escape_sequence_never_straddles_two_parts() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the euro sign would need septets 153 and 154
    _, parts = split_text(text)
    assert parts == ["a" * 152, "€" + "b" * 10]
    decoded = roundtrip(text)
    assert [s.text for s in decoded] == parts
    assert join_parts([s.text for s in decoded]) == text


def test_ucs2_part_boundaries() -> None:
    assert split_text("я" * 70) == (Encoding.UCS2, ["я" * 70])
    assert [len(p) for p in split_text("я" * 71)[1]] == [67, 4]
    # An emoji is a surrogate pair: 35 of them fill a single SMS exactly.
    assert split_text("😀" * 35)[1] == ["😀" * 35]
    assert len(split_text("😀" * 35 + "a")[1]) == 2


def test_surrogate_pair_never_straddles_two_parts() -> None:
    text = "я" * 66 + "😀" + "end"  # the emoji would need code units 67 and 68
    _, parts = split_text(text)
    assert parts == ["я" * 66, "😀end"]
    decoded = roundtrip(text)
    assert [s.encoding for s in decoded] == [Encoding.UCS2, Encoding.UCS2]
    assert join_parts([s.text for s in decoded]) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello",
        "Price: 5€ [special] {offer} ~ | \\ ^",
        "Grüße aus Köln, ça va? ñ",
        "Emoji 😀👍🏽 and ✓",
        "x" * 1000,
        "€" * 200,
        "Ω" + "😀" * 200,
        "line1\nline2\r\nline3",
    ],
)
def test_submit_round_trip(text: str) -> None:
    decoded = roundtrip(text)
    assert join_parts([s.text for s in decoded]) == text
    assert all(s.recipient == "+4915112345678" for s in decoded)
    if len(decoded) > 1:
        concats = [s.concat for s in decoded]
        assert all(c is not None and c.reference == 42 for c in concats)
        assert [c.seq for c in concats if c] == list(range(1, len(decoded) + 1))
        assert {c.total for c in concats if c} == {len(decoded)}
    else:
        assert decoded[0].concat is None


def test_part_counts_agree_with_the_hub() -> None:
    for text in ["a" * 160, "a" * 161, "я" * 70, "я" * 200, "😀" * 100, LOREM]:
        assert len(encode_submit("+1555", text)) == segments.count_parts(text)


def test_every_part_fits_in_140_octets() -> None:
    for text in ["a" * 1000, "€" * 500, "я" * 500, "😀" * 300, "a😀" * 200]:
        for part in encode_submit("+4915112345678", text, smsc="+4917000000"):
            # first, MR, 9-octet address, PID, DCS, VP, UDL: 15 octets before the user data
            assert part.tpdu_length - 15 <= 140


def test_too_long_text_is_refused() -> None:
    with pytest.raises(TextTooLong):
        encode_submit("+1555", "a" * (153 * 255 + 1))
    assert len(encode_submit("+1555", "a" * (153 * 255))) == 255


# -- SMS-DELIVER -----------------------------------------------------------------------------


def test_deliver_vectors() -> None:
    sms = deliver("06917228195339040B917228214365F700003130805120618005D4F29C2E03")
    assert sms.smsc == "+2782913593"
    assert sms.sender == "+27821234567"
    assert sms.timestamp == datetime(2013, 3, 8, 15, 2, 16, tzinfo=tz(2))
    assert sms.text == "Test2"
    assert sms.encoding is Encoding.GSM7
    assert sms.concat is None

    sms = deliver(
        "07915892000000F0040B915892214365F700007040213252242331493A283D0795C3F33C88FE06C9CB61"
        "32885EC6D341EDF27C1E3E97E7207B3A0C0A5241E377BB1D7693E72E"
    )
    assert sms.smsc == "+85290000000"
    assert sms.timestamp == datetime(2007, 4, 12, 23, 25, 42, tzinfo=tz(8))
    assert sms.text == "It is easy to read text messages via AT commands."

    sms = deliver("06917228195339040B917228214365F70000313062315352800A800D8A5E98D337A910")
    assert sms.text == "@{tést}!"


def test_classic_deliver_hellohello() -> None:
    sms = deliver("07917283010010F5040BC87238880900F10000993092516195800AE8329BFD4697D9EC37")
    assert sms.smsc == "+27381000015"
    assert sms.sender == "27838890001"
    assert sms.text == "hellohello"
    assert sms.timestamp == datetime(1999, 3, 29, 15, 16, 59, tzinfo=tz(2))


def test_deliver_with_concatenation_header_vector() -> None:
    sms = deliver(
        "0591721891F1400781721881F800003160526104848059050003C30101916536FB1DCABEEB2074D85E06"
        "4941B19CAB060319A5C522289C96D3D3ED32286C0FA7D96131BBEC024941B19CAB0603DDD36C36A88C87"
        "A7E565D0DB0D82C55EB0DB4B068BCD5C20"
    )
    assert sms.sender == "2781188"
    assert sms.smsc == "+2781191"
    assert sms.text == (
        "Hello!You have R 19.50 FREE airtime available. R 19.50 will expire on 01/07/2013. "
    )
    assert sms.concat is not None
    assert (sms.concat.reference, sms.concat.total, sms.concat.seq) == (0xC3, 1, 1)


def test_alphanumeric_senders() -> None:
    # Address fields from python-gsmmodem's vectors.
    for field, name in [("0ED04669D0397C26A7", "FRANCOIS"), ("14D0E10D6FE3DBA036A94D19", "a[]{}€")]:
        # first octet, sender, PID, DCS, time stamp, UDL 5, "Hello" packed
        tpdu = "04" + field + "00" + "00" + "42502161034580" + "05" + "C8329BFD06"
        sms = deliver("00" + tpdu)
        assert sms.sender == name
        assert sms.alphanumeric_sender
    pdu, length = deliver_pdu("MyBank", "Your code is 1234")
    sms = deliver(pdu, length)
    assert (sms.sender, sms.text) == ("MyBank", "Your code is 1234")


def test_timestamp_time_zones() -> None:
    assert decode_timestamp(bytes.fromhex("51117200000080")) == datetime(2015, 11, 27, tzinfo=tz(2))
    assert decode_timestamp(bytes.fromhex("7040213252242B")) == datetime(
        2007, 4, 12, 23, 25, 42, tzinfo=tz(-8)
    )
    assert decode_timestamp(bytes.fromhex("00000000000000")) is None  # month 0: invalid
    for when in [
        datetime(2024, 2, 29, 23, 59, 59, tzinfo=tz(5.75)),
        datetime(2030, 1, 1, tzinfo=tz(-3.5)),
        datetime(2024, 6, 1, 12, tzinfo=UTC),
    ]:
        assert decode_timestamp(encode_timestamp(when)) == when


def test_deliver_ucs2_and_8bit() -> None:
    pdu, length = deliver_pdu("+4917000000", "Привет 😀")
    sms = deliver(pdu, length)
    assert (sms.encoding, sms.text) == (Encoding.UCS2, "Привет 😀")
    pdu, length = deliver_pdu("+4917000000", "", data=b"\x00\xffbinary")
    sms = deliver(pdu, length)
    assert sms.encoding is Encoding.DATA8
    assert sms.data == b"\x00\xffbinary"


@pytest.mark.parametrize("concat16", [False, True])
def test_deliver_concatenation_info(concat16: bool) -> None:
    for ucs2 in (False, True):
        pdu, length = deliver_pdu(
            "+4917000000", "part two", concat=(300 if concat16 else 7, 3, 2), concat16=concat16,
            ucs2=ucs2,
        )  # fmt: skip
        sms = deliver(pdu, length)
        assert sms.text == "part two"
        assert sms.concat is not None
        assert (sms.concat.reference, sms.concat.total, sms.concat.seq) == (
            300 if concat16 else 7,
            3,
            2,
        )


def test_split_surrogate_pair_is_joined_again() -> None:
    # Some senders cut UCS-2 parts by code units; the halves only make sense together.
    raw = "ab😀".encode("utf-16-be")
    first, second = raw[:6], raw[6:]
    texts = []
    for seq, chunk in enumerate((first, second), start=1):
        udh = bytes([5, 0, 3, 9, 2, seq])
        tpdu = bytes.fromhex("440B919471000000F00008") + encode_timestamp(
            datetime(2024, 1, 1, tzinfo=UTC)
        )
        tpdu += bytes([len(udh) + len(chunk)]) + udh + chunk
        texts.append(deliver("00" + tpdu.hex()).text)
    assert join_parts(texts) == "ab😀"
    assert join_parts(["\ud83d"]) == "\ufffd"  # a lone half becomes the replacement character


# -- SMS-STATUS-REPORT -----------------------------------------------------------------------


def test_status_report_vector() -> None:
    report = decode_pdu("0006D60B911326880736F4111011719551401110117195714000")
    assert isinstance(report, SmsStatusReport)
    assert report.message_reference == 214
    assert report.recipient == "+31628870634"
    assert report.timestamp == datetime(2011, 1, 11, 17, 59, 15, tzinfo=tz(1))
    assert report.discharge_time == datetime(2011, 1, 11, 17, 59, 17, tzinfo=tz(1))
    assert report.state is DeliveryState.DELIVERED


def test_status_report_without_smsc_field() -> None:
    pdu, length = status_report_pdu(77, "+4915112345678", 0x46)
    report = decode_pdu(pdu, length)  # +CDS: <length> equals the PDU: no SMSC field
    assert isinstance(report, SmsStatusReport)
    assert (report.message_reference, report.recipient) == (77, "+4915112345678")
    assert report.state is DeliveryState.FAILED
    pdu, length = status_report_pdu(78, "+4915112345678", smsc="+4917000000")
    report = decode_pdu(pdu, length)
    assert isinstance(report, SmsStatusReport)
    assert (report.smsc, report.message_reference) == ("+4917000000", 78)


@pytest.mark.parametrize(
    ("status", "state"),
    [
        (0x00, DeliveryState.DELIVERED),
        (0x01, DeliveryState.DELIVERED),
        (0x02, DeliveryState.DELIVERED),
        (0x20, DeliveryState.PENDING),
        (0x25, DeliveryState.PENDING),
        (0x40, DeliveryState.FAILED),
        (0x46, DeliveryState.FAILED),
        (0x60, DeliveryState.FAILED),
        (0x65, DeliveryState.FAILED),
        (0xFF, DeliveryState.FAILED),
    ],
)
def test_status_byte(status: int, state: DeliveryState) -> None:
    assert delivery_state(status) is state


# -- robustness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "zz", "AFSDSDF LJJFKLDJKLFJ", "0043010C910661345542F60008A0050003000301306F3044", "0004"],
)
def test_malformed_pdus_raise_pdu_error(bad: str) -> None:
    with pytest.raises(PduError):
        decode_pdu(bad)


def test_user_data_length_beyond_the_data_is_tolerated() -> None:
    # python-gsmmodem: a UCS-2 PDU whose UDL claims more octets than it carries.
    sms = decode_pdu("0041010C910661345542F60008A0050003000301306F3044")
    assert isinstance(sms, SmsSubmit)
    assert sms.text == "はい"
    assert sms.concat is not None and sms.concat.total == 3


def test_the_modem_splits_as_the_hub_previews() -> None:
    """One segmentation on both sides: an emoji with its skin-tone modifier at a part
    boundary stays whole in the modem's parts, as in POST /sms/preview."""
    text = "Эмодзи на границе: " + "ж" * 46 + "👋🏽" + "ок" * 10
    _, parts = split_text(text)
    assert parts == list(segments.analyse(text).parts)
    assert parts[1].startswith("👋🏽")  # not "…ж👋" + "🏽ок…"
    decoded = roundtrip(text)
    assert join_parts([s.text for s in decoded]) == text
