"""SMS encoding and segmentation (GSM 03.38 / 3GPP TS 23.038, 23.040) and smart encoding."""

from __future__ import annotations

import dataclasses

import pytest

from android_client.segments import (
    GSM7_BASIC,
    GSM7_EXTENDED,
    MAX_SEGMENTS_DEFAULT,
    SMART_REPLACEMENTS,
    Segmentation,
    analyse,
    count_parts,
    is_gsm7,
)

EMOJI = "😀"  # U+1F600: a surrogate pair in UTF-16
FAMILY = "👨\u200d👩\u200d👧"  # ZWJ sequence: 8 UTF-16 code units
FLAG = "🇬🇧"  # two regional indicators: 4 code units
THUMBS = "👍🏽"  # emoji + skin tone modifier: 4 code units


def gsm_septets(s: str) -> int:
    return sum(2 if c in GSM7_EXTENDED else 1 for c in s)


def utf16_units(s: str) -> int:
    return len(s.encode("utf-16-le", "surrogatepass")) // 2


def check_invariants(seg: Segmentation) -> None:
    """What must hold for every analysis, whatever the text."""
    assert "".join(seg.parts) == seg.text
    assert seg.segments == len(seg.parts) >= 1
    assert seg.characters == len(seg.text)
    size = gsm_septets if seg.encoding == "GSM-7" else utf16_units
    assert seg.units == size(seg.text)
    if seg.encoding == "GSM-7":
        assert is_gsm7(seg.text)
        assert seg.per_segment == (160 if seg.segments == 1 else 153)
    else:
        assert seg.per_segment == (70 if seg.segments == 1 else 67)
    for part in seg.parts:
        assert size(part) <= seg.per_segment
        # No part starts with a low surrogate / ends with a high one (Python str holds code
        # points, so this checks no code point was cut in two).
        assert not any(0xD800 <= ord(c) <= 0xDFFF for c in part)
    if seg.segments > 1:
        assert all(part for part in seg.parts)
    assert seg.remaining == seg.per_segment - size(seg.parts[-1])
    assert 0 <= seg.remaining <= seg.per_segment


# --- GSM-7 ------------------------------------------------------------------------------------


def test_gsm7_tables() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points minus ESC
    assert set(GSM7_EXTENDED) == set("\f^{}\\[~]|€")
    assert not GSM7_BASIC & GSM7_EXTENDED
    assert is_gsm7("Hello @£$¥ èéùìò Ç Øø Åå ΔΦΓΛΩΠΨΣΘΞ ÆæßÉ ¡¿ ÄÖÑÜ§ äöñüà\r\n")
    assert is_gsm7("{[~]}|\\^€\f")
    assert is_gsm7("")
    for c in "ç`áâêíóúõ\tЖ😀–’…\u00a0":
        assert not is_gsm7(c), c


@pytest.mark.parametrize(
    ("length", "segments", "per_segment", "remaining"),
    [
        (0, 1, 160, 160),
        (1, 1, 160, 159),
        (160, 1, 160, 0),
        (161, 2, 153, 145),
        (306, 2, 153, 0),
        (307, 3, 153, 152),
        (153 * 10, 10, 153, 0),
        (153 * 10 + 1, 11, 153, 152),
    ],
)
def test_gsm7_boundaries(length: int, segments: int, per_segment: int, remaining: int) -> None:
    seg = analyse("a" * length)
    assert (seg.encoding, seg.segments, seg.per_segment, seg.remaining) == (
        "GSM-7",
        segments,
        per_segment,
        remaining,
    )
    assert seg.units == seg.characters == length
    check_invariants(seg)


def test_gsm7_multipart_split_points() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(307))
    seg = analyse(text)
    assert [len(p) for p in seg.parts] == [153, 153, 1]
    assert seg.parts[0] == text[:153] and seg.parts[1] == text[153:306]


def test_extension_characters_take_two_septets() -> None:
    seg = analyse("€" * 80)
    assert (seg.segments, seg.characters, seg.units, seg.remaining) == (1, 80, 160, 0)
    seg = analyse("€" * 81)
    assert (seg.segments, seg.characters, seg.units) == (2, 81, 162)
    check_invariants(seg)
    seg = analyse("a" * 159 + "[")  # 161 septets although 160 characters
    assert (seg.segments, seg.units) == (2, 161)


def test_only_extension_characters() -> None:
    text = "{}[]|~^\\€\f" * 20  # 200 chars, 400 septets
    seg = analyse(text)
    assert seg.encoding == "GSM-7"
    assert (seg.characters, seg.units) == (200, 400)
    # 153 is odd: each part holds 76 pairs (152 septets) and wastes one septet.
    assert [gsm_septets(p) for p in seg.parts] == [152, 152, 96]
    assert seg.segments == 3
    check_invariants(seg)


def test_extension_character_at_part_boundary_moves_to_next_part() -> None:
    text = "a" * 152 + "€" + "b" * 10  # the escape would be septet 153, the € septet 154
    seg = analyse(text)
    assert seg.parts == ("a" * 152, "€" + "b" * 10)
    assert seg.remaining == 153 - 12
    check_invariants(seg)


def test_extension_character_fitting_exactly_stays() -> None:
    text = "a" * 151 + "€" + "b" * 10  # escape + € are septets 152 and 153
    seg = analyse(text)
    assert seg.parts == ("a" * 151 + "€", "b" * 10)
    check_invariants(seg)


def test_moved_escape_can_add_a_part() -> None:
    # 306 septets would be exactly 2 parts, but the € cannot straddle the boundary.
    text = "a" * 152 + "€" + "b" * 152
    seg = analyse(text)
    assert seg.units == 306
    assert seg.segments == 3
    assert seg.parts == ("a" * 152, "€" + "b" * 151, "b")
    assert count_parts(text) == 3
    check_invariants(seg)


def test_single_part_keeps_extension_at_end() -> None:
    seg = analyse("a" * 158 + "€")
    assert (seg.segments, seg.units, seg.remaining) == (1, 160, 0)


# --- UCS-2 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "segments", "per_segment", "remaining"),
    [
        (1, 1, 70, 69),
        (70, 1, 70, 0),
        (71, 2, 67, 63),
        (134, 2, 67, 0),
        (135, 3, 67, 66),
        (67 * 5, 5, 67, 0),
    ],
)
def test_ucs2_boundaries(length: int, segments: int, per_segment: int, remaining: int) -> None:
    seg = analyse("ж" * length)
    assert (seg.encoding, seg.segments, seg.per_segment, seg.remaining) == (
        "UCS-2",
        segments,
        per_segment,
        remaining,
    )
    assert seg.units == seg.characters == length
    check_invariants(seg)


def test_one_non_gsm_character_switches_everything_to_ucs2() -> None:
    seg = analyse("a" * 69 + "ç")
    assert (seg.encoding, seg.segments, seg.units) == ("UCS-2", 1, 70)
    seg = analyse("a" * 70 + "ç")
    assert (seg.encoding, seg.segments) == ("UCS-2", 2)
    # Extension characters are one code unit each in UCS-2.
    seg = analyse("€" * 69 + "ж")
    assert (seg.encoding, seg.units, seg.segments) == ("UCS-2", 70, 1)


def test_emoji_count_two_units() -> None:
    seg = analyse(EMOJI)
    assert (seg.encoding, seg.characters, seg.units, seg.remaining) == ("UCS-2", 1, 2, 68)
    assert analyse(EMOJI * 35).segments == 1
    seg = analyse(EMOJI * 36)
    assert (seg.segments, seg.units, seg.characters) == (2, 72, 36)
    check_invariants(seg)


def test_emoji_at_part_boundary_is_not_split() -> None:
    text = "ж" * 66 + EMOJI + "ж" * 10  # the emoji would take units 67 and 68
    seg = analyse(text)
    assert seg.parts == ("ж" * 66, EMOJI + "ж" * 10)
    assert seg.remaining == 67 - 12
    check_invariants(seg)


def test_emoji_only_multipart() -> None:
    seg = analyse(EMOJI * 40)  # 80 units; 67 is odd so 33 emoji (66 units) per part
    assert [len(p) for p in seg.parts] == [33, 7]
    check_invariants(seg)


def test_zwj_sequence_is_not_split() -> None:
    text = "ж" * 63 + FAMILY + "ж" * 5
    seg = analyse(text)
    assert seg.parts == ("ж" * 63, FAMILY + "ж" * 5)
    check_invariants(seg)


@pytest.mark.parametrize("cluster", [FLAG, THUMBS, "e\u0301", "#\ufe0f\u20e3", "❤\ufe0f"])
def test_clusters_are_not_split(cluster: str) -> None:
    units = utf16_units(cluster)
    text = "ж" * (67 - units + 1) + cluster + "ж" * 5
    seg = analyse(text)
    assert seg.parts[0] == "ж" * (67 - units + 1)
    assert seg.parts[1].startswith(cluster)
    check_invariants(seg)


def test_overlong_cluster_is_cut_between_code_points() -> None:
    zalgo = "a" + "\u0301" * 100  # one "character" longer than a part
    seg = analyse(zalgo)
    assert seg.encoding == "UCS-2"
    assert [len(p) for p in seg.parts] == [67, 34]
    check_invariants(seg)


def test_lone_surrogate_does_not_crash() -> None:
    seg = analyse("a\ud83d")
    assert (seg.encoding, seg.units, seg.segments) == ("UCS-2", 2, 1)


# --- smart encoding ---------------------------------------------------------------------------


def test_smart_encoding_curly_quotes_stay_gsm7() -> None:
    text = "“Hello” – it’s ‘fine’… see you at 10\u00a0am"
    plain = analyse(text)
    assert plain.encoding == "UCS-2"
    assert plain.text == text and plain.replaced == ()
    seg = analyse(text, smart_encoding=True)
    assert seg.encoding == "GSM-7"
    assert seg.text == "\"Hello\" - it's 'fine'... see you at 10 am"
    assert seg.replaced == ("“", "”", "–", "’", "‘", "…", "\u00a0")
    check_invariants(seg)


def test_smart_encoding_replaced_is_deduplicated_in_order() -> None:
    seg = analyse("’a’b“c”’", smart_encoding=True)
    assert seg.replaced == ("’", "“", "”")
    assert seg.text == "'a'b\"c\"'"


def test_smart_encoding_leaves_emoji_text_untouched() -> None:
    text = "It’s done “now” 😀"
    seg = analyse(text, smart_encoding=True)
    assert seg.encoding == "UCS-2"
    assert seg.text == text
    assert seg.replaced == ()
    assert seg == analyse(text)


def test_smart_encoding_leaves_chinese_untouched() -> None:
    text = "你好 – “world”"
    seg = analyse(text, smart_encoding=True)
    assert (seg.encoding, seg.text, seg.replaced) == ("UCS-2", text, ())


def test_smart_encoding_is_a_no_op_on_gsm7_text() -> None:
    text = "Plain 'ascii' text with € and {braces}"
    assert analyse(text, smart_encoding=True) == analyse(text)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("‘’‚‛′", "'''''"),
        ("“”„‟″", '"""""'),
        ("«quote» ‹q›", "\"quote\" 'q'"),
        ("a–b—c‒d―e−f", "a-b-c-d-e-f"),
        ("wait…", "wait..."),
        ("a\u00a0b\u2000c\u200ad\u202fe\u205ff\u3000g", "a b c d e f g"),
        ("zero\u200bwidth\u200c\u200dchars\ufeff", "zerowidthchars"),
        ("• one\n• two", "- one\n- two"),
        ("3×4 ÷ 2", "3x4 / 2"),
        ("½ ¼ ¾", "1/2 1/4 3/4"),
        ("tab\there", "tab here"),
        ("line\u2028sep", "line\nsep"),
    ],
)
def test_smart_encoding_replacements(source: str, expected: str) -> None:
    seg = analyse(source, smart_encoding=True)
    assert seg.encoding == "GSM-7"
    assert seg.text == expected
    check_invariants(seg)


def test_smart_encoding_accented_letters() -> None:
    seg = analyse("Olá, açúcar, naïve, Ångström, Łódź, garçon", smart_encoding=True)
    assert seg.encoding == "GSM-7"
    # Letters in the GSM-7 table (Å, ö) are kept; ç becomes Ç (GSM-7 has only the capital).
    assert seg.text == "Ola, aÇucar, naive, Ångström, Lodz, garÇon"
    assert seg.replaced == ("á", "ç", "ú", "ï", "Ł", "ó", "ź")


def test_smart_encoding_composes_combining_marks() -> None:
    seg = analyse("cafe\u0301 and pin\u0303a", smart_encoding=True)  # decomposed é, ñ
    assert seg.encoding == "GSM-7"
    assert seg.text == "café and piña"
    assert seg.replaced == ("e\u0301", "n\u0303")


def test_smart_encoding_greek_capitals() -> None:
    seg = analyse("ΑΘΗΝΑ ΚΑΛΗΜΕΡΑ", smart_encoding=True)
    assert seg.encoding == "GSM-7"
    assert seg.text == "AΘHNA KAΛHMEPA"


def test_smart_encoding_mixed_obstacles() -> None:
    # The quotes could be replaced but the Cyrillic cannot: the text is sent unchanged.
    text = "“Привет” – hello"
    seg = analyse(text, smart_encoding=True)
    assert (seg.encoding, seg.text, seg.replaced) == ("UCS-2", text, ())
    # A combining mark on a symbol (keycap) cannot be dropped safely.
    text = "press #\ufe0f\u20e3 now"
    assert analyse(text, smart_encoding=True).encoding == "UCS-2"


def test_smart_encoding_saves_parts() -> None:
    text = "It’s " + "x" * 100  # 105 characters: 2 UCS-2 parts, 1 GSM-7 part
    assert analyse(text).segments == 2
    seg = analyse(text, smart_encoding=True)
    assert (seg.encoding, seg.segments) == ("GSM-7", 1)


def test_smart_encoding_not_applied_when_it_costs_more_parts() -> None:
    text = "…" * 70  # 1 UCS-2 part; as "..." it would be 210 septets, 2 parts
    seg = analyse(text, smart_encoding=True)
    assert (seg.encoding, seg.segments, seg.text, seg.replaced) == ("UCS-2", 1, text, ())


def test_smart_encoding_only_zero_width_characters() -> None:
    seg = analyse("\u200b\u200d\ufeff", smart_encoding=True)
    assert (seg.encoding, seg.text, seg.segments, seg.characters) == ("GSM-7", "", 1, 0)


def test_smart_encoding_multipart_parts_join_to_sent_text() -> None:
    text = ("“Quote” – " + "word " * 20) * 3
    seg = analyse(text, smart_encoding=True)
    assert seg.encoding == "GSM-7" and seg.segments > 1
    assert "".join(seg.parts) == seg.text != text
    check_invariants(seg)


def test_replacement_table_is_sound() -> None:
    for source, target in SMART_REPLACEMENTS.items():
        assert len(source) == 1
        assert not is_gsm7(source), source
        assert is_gsm7(target), (source, target)


# --- general ----------------------------------------------------------------------------------


def test_count_parts_matches_analyse() -> None:
    for text in ["", "a" * 161, "€" * 81, "ж" * 71, EMOJI * 36, "a" * 152 + "€" + "b" * 152]:
        assert count_parts(text) == analyse(text).segments


def test_count_parts_does_not_use_smart_encoding() -> None:
    assert count_parts("’" + "a" * 100) == 2


def test_empty_text() -> None:
    seg = analyse("")
    assert seg == Segmentation(
        encoding="GSM-7",
        segments=1,
        characters=0,
        units=0,
        per_segment=160,
        remaining=160,
        text="",
        replaced=(),
        parts=("",),
    )


def test_segmentation_is_frozen() -> None:
    seg = analyse("hi")
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.segments = 2  # type: ignore[misc]


def test_max_segments_default() -> None:
    assert MAX_SEGMENTS_DEFAULT == 10


@pytest.mark.parametrize(
    "text",
    [
        "a" * 1000,
        "€a" * 300,
        "ж" * 500,
        (EMOJI + "ж") * 100,
        (FAMILY + " " + FLAG + THUMBS) * 20,
        "mixed € and ж and 😀 " * 30,
        "\r\n" * 200,
    ],
)
def test_invariants_on_long_texts(text: str) -> None:
    check_invariants(analyse(text))
    check_invariants(analyse(text, smart_encoding=True))
