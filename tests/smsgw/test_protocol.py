"""The sans-I/O device protocol: frames in, events and frames out, no sockets."""

from __future__ import annotations

import json

from smsgw.protocol import (
    MAX_CONSECUTIVE_ERRORS,
    AcceptedFrame,
    CloseCode,
    CloseRequested,
    DeviceProtocol,
    FrameReceived,
    HelloFrame,
    InboundFrame,
    State,
    idle_timeout,
)

HELLO = {
    "type": "hello",
    "id": "1",
    "protocol": "1.0",
    "app_version": "t",
    "battery": 50,
    "charging": True,
    "signal": 3,
    "sims": [{"slot": 0}],
    "held": ["m1"],
}


def opened() -> DeviceProtocol:
    proto = DeviceProtocol()
    [event] = proto.receive_text(json.dumps(HELLO))
    assert isinstance(event, FrameReceived) and isinstance(event.frame, HelloFrame)
    return proto


def frames(proto: DeviceProtocol) -> list[dict[str, object]]:
    return [json.loads(t) for t in proto.data_to_send()]


def test_hello_opens_the_session() -> None:
    proto = opened()
    assert proto.state is State.OPEN
    proto.welcome("1", device_id="d", heartbeat_interval=30, server_time="now")
    [welcome] = frames(proto)
    assert welcome["type"] == "welcome" and welcome["ref"] == "1"
    assert welcome["heartbeat_interval"] == 30


def test_first_frame_must_be_hello() -> None:
    proto = DeviceProtocol()
    [event] = proto.receive_text(
        json.dumps({"type": "heartbeat", "id": "1", "battery": 1, "signal": 1})
    )
    assert isinstance(event, CloseRequested) and event.code is CloseCode.PROTOCOL_ERROR
    assert proto.state is State.CLOSED
    assert proto.receive_text(json.dumps(HELLO)) == []


def test_unknown_major_version_is_refused_with_a_reason() -> None:
    proto = DeviceProtocol()
    [event] = proto.receive_text(json.dumps({**HELLO, "protocol": "2.0"}))
    assert isinstance(event, CloseRequested)
    assert event.code is CloseCode.PROTOCOL_VERSION and "2.0" in event.reason
    proto = DeviceProtocol()
    [event] = proto.receive_text(json.dumps({**HELLO, "protocol": "1.7"}))
    assert isinstance(event, FrameReceived)  # minor versions are compatible


def test_invalid_hello_closes() -> None:
    proto = DeviceProtocol()
    [event] = proto.receive_text(json.dumps({**HELLO, "battery": 101}))
    assert isinstance(event, CloseRequested) and event.code is CloseCode.PROTOCOL_ERROR
    assert "battery" in event.reason
    assert len(event.reason.encode()) <= 123


def test_bad_frames_after_hello_get_error_frames_and_the_session_stays() -> None:
    proto = opened()
    assert proto.receive_text("{nope") == []
    assert proto.receive_text("[1, 2]") == []
    assert proto.receive_text(json.dumps({"type": "launch", "id": "x"})) == []
    assert proto.receive_text(json.dumps({"type": "accepted", "id": "y", "attempt": 0})) == []
    assert proto.receive_text(json.dumps(HELLO)) == []
    errors = frames(proto)
    assert [e["code"] for e in errors] == [
        "invalid_json",
        "invalid_frame",
        "unknown_type",
        "invalid_frame",
        "unexpected_hello",
    ]
    assert errors[2]["ref"] == "x" and errors[3]["ref"] == "y"
    assert "message_id" in str(errors[3]["message"])
    assert proto.state is State.OPEN


def test_too_many_bad_frames_close_but_a_good_one_resets_the_count() -> None:
    proto = opened()
    for _ in range(MAX_CONSECUTIVE_ERRORS - 1):
        assert proto.receive_text("garbage") == []
    good = {"type": "accepted", "id": "a", "message_id": "m", "attempt": 1}
    [event] = proto.receive_text(json.dumps(good))
    assert isinstance(event, FrameReceived) and isinstance(event.frame, AcceptedFrame)
    for _ in range(MAX_CONSECUTIVE_ERRORS - 1):
        proto.receive_text("garbage")
    [event] = proto.receive_text("garbage")
    assert isinstance(event, CloseRequested) and event.code is CloseCode.PROTOCOL_ERROR


def test_inbound_uses_the_from_field_and_binary_is_refused() -> None:
    proto = opened()
    [event] = proto.receive_text(
        json.dumps(
            {
                "type": "inbound",
                "id": "i",
                "local_id": "L1",
                "from": "+12025551111",
                "body": "hey",
                "received_at": "2026-01-01T00:00:00Z",
            }
        )
    )
    assert isinstance(event, FrameReceived) and isinstance(event.frame, InboundFrame)
    assert event.frame.sender == "+12025551111"
    [event] = proto.receive_binary()
    assert isinstance(event, CloseRequested) and event.code is CloseCode.UNSUPPORTED_DATA


def test_outgoing_frames_have_unique_ids() -> None:
    proto = opened()
    proto.send_command(
        message_id="m", attempt=1, to="+1555", body="b", sim_slot=None, parts=1, expires_at=None
    )
    proto.ownership("r", message_id="m", attempt=1, owner=False)
    proto.ack("z")
    out = frames(proto)
    assert [f["type"] for f in out] == ["send", "ownership", "ack"]
    assert len({f["id"] for f in out}) == 3
    assert proto.data_to_send() == []


def test_acks_alone_are_not_urgent_and_go_out_in_order_with_the_next_frame() -> None:
    proto = opened()
    proto.data_to_send()
    assert not proto.pending and not proto.urgent
    proto.ack("r1")
    proto.ack("r2")
    assert proto.pending and not proto.urgent  # the transport may hold these back
    proto.ownership("r3", message_id="m", attempt=1, owner=True)
    assert proto.urgent
    out = frames(proto)
    assert [(f["type"], f["ref"]) for f in out] == [
        ("ack", "r1"),
        ("ack", "r2"),
        ("ownership", "r3"),
    ]
    assert not proto.pending and not proto.urgent
    proto.error(None, "invalid_json", "x")
    assert proto.urgent  # error answers go at once


def test_heartbeat_deadline_is_two_and_a_half_intervals() -> None:
    assert idle_timeout(30) == 75.0
