"""Hypothesis strategies for device-protocol frames, drawn from ``android_client/wire.py``.

A valid frame of each type is built field by field from the wire definition (the same
bounds the two validators apply); the fuzzing strategies then break it in the ways a
buggy or hostile peer would: a field dropped, a value of the wrong type, a huge number, an
unknown field or type, odd Unicode, JSON cut short or nested too deep.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from android_client import wire

# Characters that broke something somewhere once, or easily could: NUL (PostgreSQL),
# lone surrogates (UTF-8), digits that are not ASCII ("²".isdigit()), line separators,
# a BOM, right-to-left marks, an astral emoji.
ODD_CHARS = ["\x00", "\ud800", "\udfff", "²", "٣", "\u2028", "\ufeff", "\u202e", "😀", "\\", '"']

odd_text = st.lists(st.one_of(st.sampled_from(ODD_CHARS), st.characters()), max_size=12).map(
    "".join
)
any_text = st.one_of(st.text(max_size=30), odd_text)

# Numbers at the edges: the 32-bit and 64-bit limits, and far past them.
HUGE_INTS = [2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**400]
numbers = st.one_of(
    st.integers(min_value=-5, max_value=200),
    st.sampled_from(HUGE_INTS),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)

zones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda m: timezone(timedelta(minutes=m))
    ),
)
iso_dates = st.builds(lambda d, z: d.replace(tzinfo=z).isoformat(), st.datetimes(), zones)


def value_for(spec: wire.Spec, *, ids: st.SearchStrategy[str] | None = None) -> Any:
    """A strategy of values ``spec`` accepts."""
    low = None if spec.low is None else int(spec.low)
    high = None if spec.high is None else int(spec.high)
    base: st.SearchStrategy[Any]
    if spec.kind is str:
        base = st.text(min_size=low or 0, max_size=min(high or 40, 40))
        if ids is not None:
            base = ids | base
    elif spec.kind is bool:
        base = st.booleans()
    elif spec.kind is int:
        base = st.integers(min_value=low, max_value=high if high is not None else 2**31 - 1)
    elif spec.kind is float:
        base = st.floats(min_value=spec.low, max_value=1e6, allow_nan=False)
    elif spec.kind is list:
        items = spec.items
        if isinstance(items, dict):
            element: st.SearchStrategy[Any] = object_for(items)
        else:
            element = st.text(max_size=20) if ids is None else ids
        base = st.lists(element, max_size=min(high or 4, 4))
    else:  # datetime
        base = iso_dates
    return st.none() | base if spec.nullable else base


def object_for(
    fields: dict[str, wire.Spec], *, ids: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    required = {s.name or a: value_for(s, ids=ids) for a, s in fields.items() if s.required}
    optional = {s.name or a: value_for(s, ids=ids) for a, s in fields.items() if not s.required}
    return st.fixed_dictionaries(required, optional=optional)


def valid_frame(
    frames: dict[str, dict[str, wire.Spec]],
    kind: str,
    *,
    ids: st.SearchStrategy[str] | None = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """A frame of ``kind`` that the wire definition accepts."""
    head = {"type": st.just(kind), "id": st.text(min_size=1, max_size=12)}
    return st.fixed_dictionaries(head).flatmap(
        lambda h: object_for(frames[kind], ids=ids).map(lambda body: {**h, **body})
    )


def valid_frames(
    frames: dict[str, dict[str, wire.Spec]], *, ids: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(*(valid_frame(frames, kind, ids=ids) for kind in frames))


@st.composite
def mutated(draw: st.DrawFn, frame: dict[str, Any], frames: dict[str, Any]) -> dict[str, Any]:
    """``frame`` broken in one to three ways."""
    out = dict(frame)
    kind = out.get("type")
    known = [s.name or a for a, s in frames.get(kind, {}).items()] if isinstance(kind, str) else []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        how = draw(
            st.sampled_from(["drop", "retype", "huge", "unknown", "type", "attr_name", "null"])
        )
        keys = sorted(out, key=str)
        if how == "drop" and keys:
            out.pop(draw(st.sampled_from(keys)))
        elif how == "retype" and keys:
            out[draw(st.sampled_from(keys))] = draw(json_values)
        elif how == "huge" and keys:
            out[draw(st.sampled_from(keys))] = draw(st.sampled_from(HUGE_INTS) | numbers)
        elif how == "unknown":
            out[draw(any_text)] = draw(json_values)
        elif how == "type":
            out["type"] = draw(
                st.sampled_from([*frames, "launch", "HELLO", "", "hello "]) | json_values
            )
        elif how == "attr_name":
            # The attribute name where the wire has another ("sender" for "from").
            renamed = [(s.name, a) for a, s in frames.get(kind, {}).items() if s.name]
            if renamed and isinstance(kind, str):
                wire_name, attr = draw(st.sampled_from(renamed))
                if wire_name in out:
                    out[attr] = out.pop(wire_name)
        elif how == "null" and known:
            out[draw(st.sampled_from(known))] = None
    return out


def dumps(frame: Any, ascii_only: bool = True) -> str:
    return json.dumps(frame, ensure_ascii=ascii_only)


@st.composite
def texts(draw: st.DrawFn, frames: dict[str, Any], valid: st.SearchStrategy[Any]) -> str:
    """What a peer might send as one text frame: a valid frame, a mutated one, JSON cut
    short, JSON that is not an object, JSON nested too deep, or no JSON at all."""
    how = draw(
        st.sampled_from(
            ["valid", "valid", "mutated", "mutated", "cut", "not_object", "deep", "garbage"]
        )
    )
    if how in ("valid", "mutated", "cut"):
        frame = draw(valid)
        if how != "valid":
            frame = draw(mutated(frame, frames))
        text = dumps(frame, draw(st.booleans()))
        if how == "cut":
            text = text[: draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))]
        return text
    if how == "not_object":
        return dumps(draw(json_values))
    if how == "deep":
        depth = draw(st.sampled_from([100, 199, 200, 1_000, 5_000, 30_000]))
        opener = draw(st.sampled_from(["[", '{"a":', '{"type":', '{"type":"sent","id":[']))
        return opener * depth
    return draw(st.text(max_size=200) | st.sampled_from(["", " ", "null", "NaN", "{}", "[]"]))
