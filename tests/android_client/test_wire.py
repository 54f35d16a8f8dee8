"""The wire format is one definition (android_client/wire.py), and both sides follow it.

The hub's pydantic models of the phone's frames hold exactly the fields of the
definition with its rules; and the agent's protocol and the hub's protocol, driven
against each other in memory, exchange every frame type in both directions and
understand each other at every step (no socket: frames are passed as text).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from android_client import wire
from android_client.backend import DeviceStatus, InboundSms, SendResult, SimInfo
from android_client.outbox import MemoryPhoneStore
from android_client.protocol import Accept, Emit, PhoneProtocol, Transmit, Welcomed
from smsgw import protocol as hub
from smsgw.protocol import CloseRequested, DeviceProtocol, FrameReceived

MODELS: dict[str, type[Any]] = {
    "hello": hub.HelloFrame,
    "accepted": hub.AcceptedFrame,
    "sent": hub.SentFrame,
    "failed": hub.FailedFrame,
    "delivered": hub.DeliveredFrame,
    "heartbeat": hub.HeartbeatFrame,
    "inbound": hub.InboundFrame,
}
KINDS = {str: str, int: int, bool: bool, datetime: datetime, list: list}


def _bounds(info: FieldInfo) -> dict[str, float]:
    found = {}
    for m in info.metadata:
        for key in ("ge", "le", "min_length", "max_length"):
            if getattr(m, key, None) is not None:
                found[key] = getattr(m, key)
    return found


@pytest.mark.parametrize("kind", sorted(wire.PHONE_FRAMES))
def test_the_hubs_models_are_the_definition(kind: str) -> None:
    model = MODELS[kind]
    specs = wire.PHONE_FRAMES[kind]
    fields = {n: f for n, f in model.model_fields.items() if n not in ("type", "id")}
    assert set(fields) == set(specs), kind
    for name, spec in specs.items():
        info = fields[name]
        assert (info.alias or name) == (spec.name or name)
        assert info.is_required() == spec.required, name
        if not spec.required:
            default = info.get_default(call_default_factory=True)
            assert default == (
                list(spec.default) if isinstance(spec.default, tuple) else spec.default
            )
        expected = {}
        keys = ("ge", "le") if spec.kind in (int, float) else ("min_length", "max_length")
        for key, bound in zip(keys, (spec.low, spec.high), strict=True):
            if bound is not None:
                expected[key] = bound
        assert _bounds(info) == expected, name
        annotation = str(info.annotation)
        assert spec.kind.__name__ in annotation, (name, annotation)
        assert ("None" in annotation) == spec.nullable, (name, annotation)
    assert set(MODELS) == set(wire.PHONE_FRAMES)


def test_every_frame_type_each_way_through_both_protocols() -> None:
    """A whole session: hello/welcome, an offer accepted and owned, sent, acked, delivered;
    a refused offer; a heartbeat; an inbound SMS; an error for a bad frame; a second offer
    to the same phone under a new attempt; every hub frame parsed by the agent and every
    phone frame by the hub."""
    store = MemoryPhoneStore()
    phone = PhoneProtocol(store, app_version="test-1", id_prefix="p")
    h = DeviceProtocol()
    seen_by_hub: list[str] = []
    seen_by_phone: list[str] = []

    def to_hub(frame: dict[str, Any]) -> Any:
        events = h.receive_text(json.dumps(frame))
        assert len(events) == 1 and isinstance(events[0], FrameReceived), events
        seen_by_hub.append(frame["type"])
        return events[0].frame

    def to_phone() -> list[Any]:
        actions: list[Any] = []
        for text in h.data_to_send():
            seen_by_phone.append(json.loads(text)["type"])
            actions += phone.receive_text(text)
        return actions

    status = DeviceStatus(battery=55, charging=True, signal=3, network="LTE")
    hello = to_hub(phone.hello(status, [SimInfo(slot=0, carrier="A"), SimInfo(slot=1)], "fcm-1"))
    assert isinstance(hello, hub.HelloFrame) and hello.battery == 55 and hello.fcm_token == "fcm-1"
    assert [s.slot for s in hello.sims] == [0, 1] and hello.protocol == wire.PROTOCOL_VERSION
    h.welcome(
        hello.id, device_id="dev-1", heartbeat_interval=12.5, server_time="2026-12-07T00:00:00Z"
    )
    actions = to_phone()
    assert actions[0] == Welcomed("dev-1", 12.5) and phone.device_id == "dev-1"

    h.send_command(message_id="m1", attempt=1, to="+12025550100", body="hi", sim_slot=1,
                   parts=1, expires_at="2026-12-07T01:00:00Z")  # fmt: skip
    assert to_phone() == [Accept("m1", 1)]
    (emit,) = phone.accept("m1", 1)
    assert isinstance(emit, Emit)
    accepted = to_hub(emit.frame)
    assert isinstance(accepted, hub.AcceptedFrame) and (accepted.message_id, accepted.attempt) == (
        "m1",
        1,
    )
    h.ownership(accepted.id, message_id="m1", attempt=1, owner=True)
    (transmit,) = to_phone()
    assert isinstance(transmit, Transmit) and transmit.command.to == "+12025550100"
    (emit,) = phone.transmitted("m1", 1, SendResult(ok=True, parts=2))
    sent = to_hub(emit.frame)
    assert isinstance(sent, hub.SentFrame) and sent.parts == 2
    h.ack(sent.id)
    assert to_phone() == [] and store.reports() == []  # the ack cleared the stored report
    (emit,) = phone.delivered("m1")
    delivered = to_hub(emit.frame)
    assert isinstance(delivered, hub.DeliveredFrame) and delivered.attempt == 1

    # An offer to a slot the phone lacks: refused at once with a retryable failed.
    h.send_command(message_id="m2", attempt=1, to="+12025550101", body="x", sim_slot=5,
                   parts=1, expires_at=None)  # fmt: skip
    (emit,) = to_phone()
    failed = to_hub(emit.frame)
    assert (
        isinstance(failed, hub.FailedFrame) and failed.error_code == "no_sim" and failed.retryable
    )
    # A lost offer comes back to the same phone under a new attempt.
    h.send_command(message_id="m3", attempt=1, to="+12025550102", body="y", sim_slot=None,
                   parts=1, expires_at=None)  # fmt: skip
    assert to_phone() == [Accept("m3", 1)]
    h.ownership(None, message_id="m3", attempt=1, owner=False)
    assert to_phone() == [] and store.get_held("m3") is None  # disowned: forgotten
    (emit,) = phone.transmitted("m3", 1, SendResult(ok=False, error_code="radio_off", error="r"))
    failed = to_hub(emit.frame)
    assert isinstance(failed, hub.FailedFrame) and failed.error == "r" and not failed.retryable

    beat = to_hub(phone.heartbeat(DeviceStatus(battery=54, charging=False, signal=2)))
    assert isinstance(beat, hub.HeartbeatFrame) and beat.network is None
    sms = InboundSms("l-1", "+12025550199", "hello", datetime(2026, 12, 7, tzinfo=UTC), 0)
    (emit,) = phone.inbound(sms)
    assert emit.frame["from"] == "+12025550199"  # its wire name
    inbound = to_hub(emit.frame)
    assert isinstance(inbound, hub.InboundFrame) and inbound.sender == "+12025550199"
    h.ack(inbound.id)
    to_phone()
    assert store.inbound() == []

    # The hub refuses a frame: the phone hears an error frame and drops what is permanent.
    assert h.receive_text('{"type": "sent", "id": "bad-1"}') == []
    assert to_phone() == []
    assert seen_by_phone[-1] == "error"

    assert set(seen_by_hub) == set(wire.PHONE_FRAMES)
    assert set(seen_by_phone) == set(wire.HUB_FRAMES)


def test_every_hub_frame_matches_its_definition() -> None:
    """What DeviceProtocol writes, checked field by field by the agent's validator."""
    h = DeviceProtocol()
    h.welcome("r", device_id="d", heartbeat_interval=30.0, server_time="t")
    h.send_command(message_id="m", attempt=2, to="+1", body="b", sim_slot=None, parts=3,
                   expires_at=None)  # fmt: skip
    h.ownership("r", message_id="m", attempt=0, owner=False)
    h.ack("r")
    h.error(None, "invalid_frame", "x")
    for text in h.data_to_send():
        raw = json.loads(text)
        parsed = wire.check(wire.HUB_FRAMES, raw)
        # Every field the definition has is written, none that it lacks.
        names = {s.name or a for a, s in wire.HUB_FRAMES[raw["type"]].items()}
        assert set(raw) == {"type", "id"} | names, raw
        assert parsed["type"] == raw["type"]


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (
            {
                "type": "send",
                "id": "h1",
                "message_id": "m",
                "attempt": "1",
                "to": "+1",
                "body": "b",
            },
            "attempt",
        ),
        (
            {"type": "send", "id": "h1", "message_id": "m", "attempt": 0, "to": "+1", "body": "b"},
            "attempt",
        ),
        ({"type": "send", "id": "h1", "message_id": "m", "attempt": 1, "body": "b"}, "to"),
        (
            {"type": "welcome", "id": "h1", "device_id": "d", "heartbeat_interval": True},
            "heartbeat_interval",
        ),
        (
            {"type": "ownership", "id": "h1", "message_id": "m", "attempt": 1, "owner": "yes"},
            "owner",
        ),
        ({"type": "ack", "id": "h1"}, "ref"),
        ({"type": "ack", "ref": "x"}, "id"),
        ({"type": "teleport", "id": "h1"}, "type"),
    ],
)
def test_the_agent_refuses_a_hub_frame_that_breaks_the_definition(
    raw: dict[str, Any], where: str
) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.parse_hub_frame(raw)
    assert caught.value.field == where
    # ... and the agent's protocol ignores it (logs it) rather than acting on it.
    assert PhoneProtocol(MemoryPhoneStore()).receive(raw) == []


def test_a_phone_frame_with_a_field_the_definition_lacks_cannot_be_built() -> None:
    with pytest.raises(KeyError):
        wire.frame("sent", "p-1", message_id="m", attempt=1, colour="red")


def test_the_hub_closes_on_a_major_version_it_does_not_speak() -> None:
    h = DeviceProtocol()
    frame = PhoneProtocol(MemoryPhoneStore()).hello(DeviceStatus(50, False, 2), [])
    frame["protocol"] = "2.0"
    (event,) = h.receive_text(json.dumps(frame))
    assert isinstance(event, CloseRequested) and event.code is wire.CloseCode.PROTOCOL_VERSION


def test_the_protocol_doc_holds_the_definitions_tables() -> None:
    """docs/protocol.md's field reference is what wire.reference() writes: change the
    definition and this fails until the doc says the same."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    begin, end = "<!-- wire.reference: begin -->\n", "<!-- wire.reference: end -->"
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == wire.reference()


def _hello(**changes: Any) -> dict[str, Any]:
    frame = PhoneProtocol(MemoryPhoneStore(), id_prefix="p").hello(DeviceStatus(50, False, 2), [])
    frame.update(changes)
    return frame


def _open_hub() -> DeviceProtocol:
    h = DeviceProtocol()
    (event,) = h.receive_text(json.dumps(_hello()))
    assert isinstance(event, FrameReceived)
    return h


@pytest.mark.parametrize(
    ("frame", "accepted"),
    [
        # Optional fields left out: the definition's defaults.
        ({"type": "heartbeat", "id": "a", "battery": 5, "signal": 1}, True),
        (
            {
                "type": "failed",
                "id": "a",
                "message_id": "m",
                "attempt": 1,
                "error_code": "x",
                "retryable": True,
            },
            True,
        ),
        # retryable is required: guessing it would lose a message or send it twice.
        ({"type": "failed", "id": "a", "message_id": "m", "attempt": 1, "error_code": "x"}, False),
        # Unknown fields are ignored (a newer agent may send more).
        ({"type": "sent", "id": "a", "message_id": "m", "attempt": 1, "colour": "red"}, True),
        ({"type": "sent", "id": "a", "message_id": "m", "attempt": 0}, False),
        # Strict types on both sides: a string is not an integer, a number not a boolean.
        ({"type": "sent", "id": "a", "message_id": "m", "attempt": "1"}, False),
        ({"type": "sent", "id": "a", "message_id": "m", "attempt": 1.0}, False),
        ({"type": "heartbeat", "id": "a", "battery": 5, "signal": 1, "charging": 1}, False),
        (
            {
                "type": "inbound",
                "id": "a",
                "local_id": "l",
                "from": "+1",
                "body": "b",
                "received_at": "2026-12-07T10:00:00",
            },
            True,
        ),
        (
            {
                "type": "inbound",
                "id": "a",
                "local_id": "l",
                "from": "+1",
                "body": "b",
                "received_at": "yesterday",
            },
            False,
        ),
    ],
)
def test_the_hub_reads_the_edge_cases_as_the_definition_says(
    frame: dict[str, Any], accepted: bool
) -> None:
    h = _open_hub()
    h.data_to_send()
    events = h.receive_text(json.dumps(frame))
    assert bool(events) == accepted, (frame, events, h.data_to_send())
    if not accepted:
        (error,) = h.data_to_send()
        assert json.loads(error)["code"] == "invalid_frame"
    # The agent's validator agrees field by field.
    try:
        wire.check(wire.PHONE_FRAMES, frame)
        agent_accepts = True
    except wire.WireError:
        agent_accepts = False
    assert agent_accepts == accepted


def test_a_hello_with_only_the_required_fields_opens_the_session() -> None:
    h = DeviceProtocol()
    minimal = {"type": "hello", "id": "h", "protocol": "1.0", "battery": 1, "signal": 0}
    (event,) = h.receive_text(json.dumps(minimal))
    assert isinstance(event, FrameReceived) and isinstance(event.frame, hub.HelloFrame)
    assert event.frame.held == [] and event.frame.sims == [] and event.frame.app_version == ""


def test_an_inbound_date_without_a_zone_is_utc_on_the_hub_side() -> None:
    h = _open_hub()
    (event,) = h.receive_text(json.dumps({"type": "inbound", "id": "a", "local_id": "l",
                                          "from": "+1", "body": "b",
                                          "received_at": "2026-12-07T10:00:00"}))  # fmt: skip
    assert isinstance(event, FrameReceived) and isinstance(event.frame, hub.InboundFrame)
    received = event.frame.received_at
    assert received.tzinfo is None or received.utcoffset() == timedelta(0)


def test_the_agent_never_imports_the_hub() -> None:
    root = Path(__file__).resolve().parents[2] / "android_client"
    for path in root.rglob("*.py"):
        if "build" in path.relative_to(root).parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("from smsgw", "import smsgw")), (path, line)
