"""Property tests of both sans-I/O device protocols (issue 21): the hub's
``smsgw.protocol.DeviceProtocol`` and the agent's ``android_client.protocol.PhoneProtocol``,
fed random sequences of valid, duplicated, reordered, mutated, truncated and garbage
frames by hypothesis' stateful testing.

What must hold whatever arrives:

- neither side raises: a bad frame is answered (an ``error`` frame, or a close with a
  documented code) on the hub, ignored on the agent;
- every frame either side writes passes ``android_client/wire.py``'s validator, and the
  agent's frames are accepted by the hub's parser;
- the hub and the agent's validator agree on which phone frames are valid;
- the hub's state is consistent: one hello opens, a close is final and has a documented
  code and a reason that fits a close frame, twenty bad frames in a row close;
- the agent transmits a message only when the hub said it owns it, and never twice while
  it holds it.

Budgets: tests/fuzz/budget.py (fixed examples in CI, ``SMSGW_FUZZ_SECONDS`` for more).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from android_client import wire
from android_client.backend import DeviceStatus, InboundSms, SendResult, SimInfo
from android_client.outbox import MemoryPhoneStore
from android_client.protocol import Accept, Action, Emit, PhoneProtocol, Refusal, Transmit
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
)
from tests.fuzz import frames as F
from tests.fuzz.budget import hypothesis_settings

# The close codes the hub's protocol object may ask for (docs/protocol.md §7); the others
# of the table come from the transport (1009, 1007) or the hub (4000, 4001, 4004, 4005).
PROTOCOL_CLOSES = {CloseCode.UNSUPPORTED_DATA, CloseCode.PROTOCOL_VERSION, CloseCode.PROTOCOL_ERROR}
ERROR_CODES = {"invalid_json", "invalid_frame", "unknown_type", "unexpected_hello"}

HELLO = {"type": "hello", "id": "h", "protocol": "1.0", "battery": 1, "signal": 1}

# A few message ids, so that offers, accepts and reports of one message meet.
MESSAGE_IDS = st.sampled_from(["m1", "m2", "m3"])
phone_frames = F.valid_frames(wire.PHONE_FRAMES, ids=MESSAGE_IDS)
phone_texts = F.texts(wire.PHONE_FRAMES, phone_frames)


def _wire_accepts(frames: dict[str, Any], text: str) -> bool:
    raw = _loads(text)
    if not isinstance(raw, dict):
        return False
    try:
        wire.check(frames, raw)
    except wire.WireError:
        return False
    return True


def _hub_frames(proto: DeviceProtocol) -> list[dict[str, Any]]:
    """What the hub queued, each checked by the agent's validator."""
    out = []
    for text in proto.data_to_send():
        raw = json.loads(text)
        wire.check(wire.HUB_FRAMES, raw)  # raises on a frame the agent would refuse
        out.append(raw)
    return out


# -- the hub ------------------------------------------------------------------------------


class HubProtocolMachine(RuleBasedStateMachine):
    """A DeviceProtocol driven as DeviceConnection drives it: each frame it accepts is
    answered (welcome and ownership after hello, ownership after accepted, ack after the
    rest), and everything it writes is read back through the agent's validator."""

    def __init__(self) -> None:
        super().__init__()
        self.proto = DeviceProtocol()
        self.closed_with: CloseRequested | None = None
        self.hellos = 0
        self.bad_in_a_row = 0
        self.hub_ids: set[str] = set()

    def _answer(self, event: FrameReceived) -> None:
        frame = event.frame
        if isinstance(frame, HelloFrame):
            self.proto.welcome(frame.id, device_id="d", heartbeat_interval=30.0, server_time="t")
            for held in frame.held:
                self.proto.ownership(None, message_id=held, attempt=0, owner=False)
        elif isinstance(frame, AcceptedFrame):
            self.proto.ownership(
                frame.id, message_id=frame.message_id, attempt=frame.attempt, owner=True
            )
        else:
            self.proto.ack(frame.id)

    def _receive(self, text: str) -> None:
        before = self.proto.state
        wire_ok = _wire_accepts(wire.PHONE_FRAMES, text)
        events = self.proto.receive_text(text)  # must not raise, whatever the text
        written = _hub_frames(self.proto)
        if before is State.CLOSED:
            assert events == [] and written == []
            return
        assert len(events) <= 1
        closes = [e for e in events if isinstance(e, CloseRequested)]
        accepted = [e for e in events if isinstance(e, FrameReceived)]
        errors = [f for f in written if f["type"] == "error"]
        for close in closes:
            assert close.code in PROTOCOL_CLOSES
            assert len(close.reason.encode()) <= 123
            assert self.proto.state is State.CLOSED
            self.closed_with = close
        for error in errors:
            assert error["code"] in ERROR_CODES
            ref = error["ref"]
            assert ref is None or (isinstance(ref, str) and 1 <= len(ref) <= 64)
        if before is State.AWAITING_HELLO:
            # The first frame opens the session (a valid hello of major 1) or closes it.
            assert bool(accepted) != bool(closes)
            if accepted:
                assert isinstance(accepted[0].frame, HelloFrame) and wire_ok
                assert self.proto.state is State.OPEN
                self.hellos += 1
            return
        raw = _loads(text)
        kind = raw.get("type") if isinstance(raw, dict) else None
        kind = kind if isinstance(kind, str) else None
        if accepted:
            assert not isinstance(accepted[0].frame, HelloFrame)  # one hello per session
            self.bad_in_a_row = 0
        else:
            self.bad_in_a_row += 1
            assert len(errors) == 1 or closes
        if kind in wire.PHONE_FRAMES and kind != "hello":
            # The hub's parser and the agent's validator agree on every phone frame.
            assert bool(accepted) == wire_ok, (text, events, errors)
        if self.bad_in_a_row >= MAX_CONSECUTIVE_ERRORS:
            assert closes and closes[0].code is CloseCode.PROTOCOL_ERROR
        else:
            assert not closes
        for event in accepted:
            self._answer(event)
        self._check_written()

    def _check_written(self) -> None:
        for frame in _hub_frames(self.proto):
            assert frame["id"] not in self.hub_ids  # the hub's frame ids are unique
            self.hub_ids.add(frame["id"])

    @initialize(hello=F.valid_frame(wire.PHONE_FRAMES, "hello", ids=MESSAGE_IDS))
    def maybe_hello(self, hello: dict[str, Any]) -> None:
        # Most sessions start well, so the rules below reach the open state.
        hello["protocol"] = "1.0"
        self._receive(json.dumps(hello))

    @rule(text=phone_texts)
    def phone_sends(self, text: str) -> None:
        self._receive(text)

    @rule(frame=phone_frames, times=st.integers(min_value=2, max_value=3))
    def phone_repeats(self, frame: dict[str, Any], times: int) -> None:
        for _ in range(times):  # duplicates: each is answered again
            self._receive(json.dumps(frame))

    @rule()
    def phone_sends_binary(self) -> None:
        events = self.proto.receive_binary()
        if self.closed_with is None:
            [close] = events
            assert isinstance(close, CloseRequested)
            assert close.code is CloseCode.UNSUPPORTED_DATA
            self.closed_with = close
        assert self.proto.state is State.CLOSED

    @rule(
        message_id=st.text(min_size=1, max_size=64),
        attempt=st.integers(min_value=1, max_value=2**31 - 1),
        body=F.any_text,
        sim_slot=st.none() | st.integers(min_value=0, max_value=7),
    )
    def hub_offers(self, message_id: str, attempt: int, body: str, sim_slot: int | None) -> None:
        # Whatever it carries, the hub's own frame must be valid on the wire.
        message_id = message_id.encode(errors="replace").decode()  # ids are stored text
        body = body.encode(errors="replace").decode()
        self.proto.send_command(
            message_id=message_id, attempt=attempt, to="+12025550100", body=body,
            sim_slot=sim_slot, parts=1, expires_at=None,
        )  # fmt: skip
        self._check_written()

    @invariant()
    def closed_is_final(self) -> None:
        if self.closed_with is not None:
            assert self.proto.state is State.CLOSED
        assert self.hellos <= 1


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


TestHubProtocol = HubProtocolMachine.TestCase
TestHubProtocol.settings = hypothesis_settings(120, stateful_step_count=30)


@hypothesis_settings(400)
@given(text=phone_texts)
def test_a_fresh_hub_session_opens_or_closes_on_any_first_frame(text: str) -> None:
    proto = DeviceProtocol()
    events = proto.receive_text(text)
    [event] = events
    if isinstance(event, CloseRequested):
        assert event.code in PROTOCOL_CLOSES and len(event.reason.encode()) <= 123
        assert proto.state is State.CLOSED and proto.data_to_send() == []
    else:
        assert isinstance(event.frame, HelloFrame) and proto.state is State.OPEN
        assert _wire_accepts(wire.PHONE_FRAMES, text)


@hypothesis_settings(400)
@given(frame=phone_frames)
def test_the_hub_accepts_every_frame_the_wire_definition_accepts(frame: dict[str, Any]) -> None:
    proto = DeviceProtocol()
    proto.receive_text(json.dumps(HELLO))
    proto.data_to_send()
    events = proto.receive_text(json.dumps(frame))
    if frame["type"] == "hello":  # one per session
        assert events == [] and "unexpected_hello" in proto.data_to_send()[0]
    else:
        assert [type(e) for e in events] == [FrameReceived], proto.data_to_send()


# Found by these tests (each crashed receive_text, so the transport closed the session
# with 1001 "internal error" and logged a traceback), kept as plain regression cases.
HUB_REGRESSIONS = [
    ('{"type": [1], "id": "x"}', "unknown_type"),  # TypeError: unhashable type
    ('{"type": {}, "id": "x"}', "unknown_type"),
    ("[" * 60_000, "invalid_json"),  # RecursionError in json.loads
    ('{"a":' * 30_000, "invalid_json"),
    ('{"type":"sent","id":"s","message_id":"m","attempt":2147483648}', "invalid_frame"),
    ('{"type":"accepted","id":"s","message_id":"m","attempt":' + "9" * 30 + "}", "invalid_frame"),
    (
        '{"type":"inbound","id":"i","local_id":"l","from":"x","body":"b",'
        '"received_at":"9999-12-31T23:59:59-05:00"}',  # no UTC equivalent: the store failed
        "invalid_frame",
    ),
    (
        '{"type":"inbound","id":"i","local_id":"l","from":"x","body":"b","received_at":1}',
        "invalid_frame",  # pydantic took a number of seconds; the wire wants ISO 8601
    ),
    (
        '{"type":"inbound","id":"i","local_id":"l","sender":"x","body":"b",'
        '"received_at":"2026-01-01T00:00:00"}',  # the attribute name, not the wire's "from"
        "invalid_frame",
    ),
]


@pytest.mark.parametrize(("text", "code"), HUB_REGRESSIONS)
def test_hub_regressions(text: str, code: str) -> None:
    proto = DeviceProtocol()
    proto.receive_text(json.dumps(HELLO))
    proto.data_to_send()
    assert proto.receive_text(text) == []
    [error] = (json.loads(t) for t in proto.data_to_send())
    assert error["code"] == code
    # The same before hello closes with 4003, it does not raise.
    [close] = DeviceProtocol().receive_text(text)
    assert isinstance(close, CloseRequested) and close.code is CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize("version", ["².0", "٣.0", "9" * 5000, "1" * 17 + ".0"])
def test_a_hello_with_a_version_int_cannot_read_closes_4002(version: str) -> None:
    # "²".isdigit() is true and int("²") raises; int() refuses more than 4300 digits.
    hello = {"type": "hello", "id": "h", "protocol": version, "battery": 1, "signal": 1}
    [close] = DeviceProtocol().receive_text(json.dumps(hello))
    assert isinstance(close, CloseRequested) and close.code is CloseCode.PROTOCOL_VERSION


def test_a_nul_in_a_phone_string_is_read_as_a_replacement_character() -> None:
    """PostgreSQL's text cannot hold U+0000: the write of such a string failed and the
    session ended. An escaped backslash before "u0000" is not a NUL and stays as it is."""
    proto = DeviceProtocol()
    proto.receive_text(json.dumps({**HELLO, "app_version": "a\x00b"}))
    inbound = {"type": "inbound", "id": "i", "local_id": "l\x00", "from": "+1",
               "body": "\\u0000 and \x00", "received_at": "2026-01-01T00:00:00"}  # fmt: skip
    [event] = proto.receive_text(json.dumps(inbound))
    assert isinstance(event, FrameReceived)
    frame = event.frame
    assert isinstance(frame, InboundFrame)
    assert frame.local_id == "l\ufffd" and frame.body == "\\u0000 and \ufffd"


def test_an_error_answers_only_a_valid_id() -> None:
    proto = DeviceProtocol()
    proto.receive_text(json.dumps(HELLO))
    proto.data_to_send()
    for frame_id in ["x" * 65, "\ud800", "", 7]:
        proto.receive_text(json.dumps({"type": "launch", "id": frame_id}))
    refs = [json.loads(t)["ref"] for t in proto.data_to_send()]
    assert refs == [None, None, None, None]


# -- the agent ----------------------------------------------------------------------------

HUB_FRAMES_VALID = F.valid_frames(wire.HUB_FRAMES, ids=MESSAGE_IDS)
# Offers and answers about a few messages and attempts, so that they meet in every order.
offers = st.builds(
    lambda frame_id, mid, attempt, slot: {
        "type": "send", "id": frame_id, "message_id": mid, "attempt": attempt,
        "to": "+12025550100", "body": "b", "sim_slot": slot, "parts": 1, "expires_at": None,
    },
    st.text(min_size=1, max_size=4), MESSAGE_IDS, st.integers(min_value=1, max_value=4),
    st.none() | st.integers(min_value=0, max_value=3),
)  # fmt: skip
answers = st.builds(
    lambda mid, attempt, owner, ref: {
        "type": "ownership", "id": "o", "ref": ref, "message_id": mid,
        "attempt": attempt, "owner": owner,
    },
    MESSAGE_IDS,
    st.integers(min_value=0, max_value=4),
    st.booleans(),
    st.none() | st.text(max_size=4),
)  # fmt: skip
hub_texts = st.one_of(
    offers.map(json.dumps),
    offers.map(json.dumps),
    answers.map(json.dumps),
    F.texts(wire.HUB_FRAMES, HUB_FRAMES_VALID),
)
statuses = st.builds(
    DeviceStatus,
    battery=st.integers(min_value=0, max_value=100),
    charging=st.booleans(),
    signal=st.integers(min_value=0, max_value=4),
    network=st.none() | F.any_text.map(lambda t: t.encode(errors="replace").decode() * 5),
)
free_text = st.text(max_size=700)  # a backend's error text: a tool's stderr, an exception
sims = st.lists(
    st.builds(
        SimInfo,
        slot=st.integers(min_value=-1, max_value=9),
        carrier=st.none() | st.text(max_size=100),
        number=st.none() | st.text(max_size=40),
    ),
    max_size=10,
)
results = st.one_of(
    st.builds(SendResult, ok=st.just(True), parts=st.integers(min_value=0, max_value=12)),
    st.builds(
        SendResult,
        ok=st.just(False),
        error_code=st.none() | st.text(max_size=100),
        error=st.none() | free_text,
        retryable=st.booleans(),
    ),
)
inbound_sms = st.builds(
    InboundSms,
    local_id=st.text(min_size=1, max_size=128),
    sender=st.text(min_size=1, max_size=32),
    body=st.text(max_size=300),
    received_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=F.zones
    ),
    sim_slot=st.none() | st.integers(min_value=0, max_value=7),
)


class AgentProtocolMachine(RuleBasedStateMachine):
    """A PhoneProtocol fed random hub frames, with the radio and the accept delay as
    rules, so offers, answers, reports and acks interleave in any order."""

    # What the phone has to do later: accept an offer after the delay (Accept), finish a
    # transmission (Transmit).
    accepts = Bundle("accepts")

    def __init__(self) -> None:
        super().__init__()
        self.store = MemoryPhoneStore()
        self.accepting = True
        self.refusal: Refusal | None = None
        self.proto = PhoneProtocol(
            self.store,
            accepting=lambda: self.accepting,
            refuse=lambda: self.refusal,
            id_prefix="p",
            app_version="sim-" + "9" * 100,
        )
        self.phone_ids: set[str] = set()
        self.accepted: list[dict[str, Any]] = []  # the phone's accepts, for the hub to answer
        self.on_air: dict[str, str] = {}  # message id -> "sending" / "done"
        self.hub = DeviceProtocol()
        self.hub.receive_text(json.dumps(HELLO))

    def _emitted(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame)
        wire.check(wire.PHONE_FRAMES, json.loads(text))  # raises on an invalid frame
        if frame["type"] == "hello":
            [event] = DeviceProtocol().receive_text(text)
        else:
            [event] = self.hub.receive_text(text)
        assert isinstance(event, FrameReceived), (frame, self.hub.data_to_send())
        if frame["type"] in ("sent", "failed", "delivered", "inbound"):
            return  # a stored report keeps its id when it is sent again
        assert frame["id"] not in self.phone_ids
        self.phone_ids.add(frame["id"])

    def _actions(self, actions: list[Action], cause: dict[str, Any] | None) -> list[Action]:
        for action in actions:
            if isinstance(action, Emit):
                self._emitted(action.frame)
                if action.frame["type"] == "accepted":
                    held = self.store.get_held(action.frame["message_id"])
                    assert held is not None and held.state == "accepted"
                    assert held.attempt == action.frame["attempt"]
                    self.accepted.append(action.frame)
            elif isinstance(action, Transmit):
                mid = action.command.message_id
                # Only on the hub's word that it owns the message...
                assert cause is not None and cause.get("type") == "ownership"
                assert cause["owner"] is True and cause["message_id"] == mid
                # ...and never twice while it holds the message.
                assert mid not in self.on_air, (mid, self.on_air)
                self.on_air[mid] = "sending"
        return actions

    @rule(target=accepts, text=hub_texts)
    def hub_sends(self, text: str) -> Any:
        raw = _loads(text)
        cause = raw if isinstance(raw, dict) else None
        actions = self._actions(self.proto.receive_text(text), cause)
        return multiple(*(a for a in actions if isinstance(a, (Accept, Transmit))))

    @rule(offer=offers)
    def hub_offers_and_the_phone_accepts_at_once(self, offer: dict[str, Any]) -> None:
        for action in self._actions(self.proto.receive(offer), offer):
            if isinstance(action, Accept):
                self._actions(self.proto.accept(action.message_id, action.attempt), None)

    @rule(action=consumes(accepts))
    def later(self, action: Accept | Transmit) -> None:
        """The accept delay ends, or the radio finishes (successfully)."""
        if isinstance(action, Accept):
            self._actions(self.proto.accept(action.message_id, action.attempt), None)
        else:
            self._finish(action, SendResult(ok=True))

    @rule(action=consumes(accepts), result=results)
    def radio_result(self, action: Accept | Transmit, result: SendResult) -> None:
        if isinstance(action, Transmit):
            self._finish(action, result)

    @rule(action=consumes(accepts))
    def radio_aborted(self, action: Accept | Transmit) -> None:
        if isinstance(action, Transmit):
            self.proto.transmit_aborted(action.command.message_id)
            self.on_air.pop(action.command.message_id, None)

    def _finish(self, action: Transmit, result: SendResult) -> None:
        cmd = action.command
        self.on_air[cmd.message_id] = "done"
        self._actions(self.proto.transmitted(cmd.message_id, cmd.attempt, result), None)

    @rule(mid=MESSAGE_IDS, code=st.text(max_size=100), error=free_text, ok=st.booleans())
    def network_reports(self, mid: str, code: str, error: str, ok: bool) -> None:
        if ok:
            self._actions(self.proto.delivered(mid), None)
        else:
            self._actions(self.proto.delivery_failed(mid, code, error), None)

    @rule(sms=inbound_sms)
    def sms_arrives(self, sms: InboundSms) -> None:
        self._actions(self.proto.inbound(sms), None)

    @rule(status=statuses, cards=sims, token=st.none() | st.text(max_size=5000))
    def reconnects(self, status: DeviceStatus, cards: list[SimInfo], token: str | None) -> None:
        self.proto.disconnected()
        self._emitted(self.proto.hello(status, cards, token))

    @rule(status=statuses)
    def heartbeat(self, status: DeviceStatus) -> None:
        self._emitted(self.proto.heartbeat(status))

    @rule(accepting=st.booleans(), refuse=st.none() | st.builds(Refusal, free_text, free_text))
    def phone_mood(self, accepting: bool, refuse: Refusal | None) -> None:
        self.accepting, self.refusal = accepting, refuse

    @precondition(lambda self: bool(self.accepted))
    @rule(target=accepts, data=st.data(), owner=st.booleans() | st.just(True))
    def hub_answers_an_accept(self, data: st.DataObject, owner: bool) -> Any:
        """The hub's CAS answers an accept (perhaps one answered before: a duplicate)."""
        accepted = data.draw(st.sampled_from(self.accepted))
        answer = {"type": "ownership", "id": "o", "ref": accepted["id"], "owner": owner,
                  "message_id": accepted["message_id"], "attempt": accepted["attempt"]}  # fmt: skip
        actions = self._actions(self.proto.receive(answer), answer)
        return multiple(*(a for a in actions if isinstance(a, Transmit)))

    @precondition(lambda self: bool(self.store.reports()) or bool(self.store.inbound()))
    @rule(data=st.data(), how=st.sampled_from(["ack", "error"]))
    def hub_answers_a_report(self, data: st.DataObject, how: str) -> None:
        stored = self.store.reports() + self.store.inbound()
        frame = data.draw(st.sampled_from(stored))
        if how == "ack":
            answer = {"type": "ack", "id": "a", "ref": frame["id"]}
        else:
            code = data.draw(st.sampled_from(["invalid_frame", "busy"]))
            answer = {"type": "error", "id": "e", "ref": frame["id"], "code": code}
        self._actions(self.proto.receive(answer), answer)

    @invariant()
    def held_is_consistent(self) -> None:
        for cmd in self.store.held():
            assert cmd.attempt >= 1 and cmd.state in ("accepted", "owned", "transmitted")
        for mid in list(self.on_air):
            if self.store.get_held(mid) is None and self.on_air[mid] == "done":
                del self.on_air[mid]  # settled: a later offer is a new ownership
        for report in self.store.reports() + self.store.inbound():
            wire.check(wire.PHONE_FRAMES, report)


TestAgentProtocol = AgentProtocolMachine.TestCase
TestAgentProtocol.settings = hypothesis_settings(120, stateful_step_count=40)


@hypothesis_settings(400)
@given(text=hub_texts)
def test_the_agent_never_raises_on_a_hub_frame(text: str) -> None:
    proto = PhoneProtocol(MemoryPhoneStore(), id_prefix="p")
    for action in proto.receive_text(text):
        if isinstance(action, Emit):
            wire.check(wire.PHONE_FRAMES, json.loads(json.dumps(action.frame)))


AGENT_REGRESSIONS = [
    '{"type": [1]}',  # TypeError: unhashable type
    '{"type": {"a": 1}, "id": "x"}',
    "[" * 60_000,  # RecursionError
    '{"type":"welcome","id":"w","device_id":"d","heartbeat_interval":1' + "0" * 400 + "}",
    '{"type":"send","id":"s","message_id":"' + "m" * 65 + '","attempt":1,"to":"+1","body":"b"}',
]


@pytest.mark.parametrize("text", AGENT_REGRESSIONS)
def test_agent_regressions(text: str) -> None:
    """Each raised out of receive_text (OverflowError for the 400-digit interval), or, for
    the 65-character message id, was taken and answered with an accept the hub refuses."""
    assert PhoneProtocol(MemoryPhoneStore(), id_prefix="p").receive_text(text) == []


def test_the_agent_cuts_free_text_to_what_the_hub_takes() -> None:
    """A backend's long error (a tool's stderr) made a failed report the hub refused as
    invalid_frame, a permanent error: the report was dropped and the hub never learnt
    the message failed. Long carrier names or versions made the hello fail (4003)."""
    store = MemoryPhoneStore()
    proto = PhoneProtocol(store, id_prefix="p", app_version="v" * 100)
    sims_in = [SimInfo(0, carrier="c" * 100, number="1" * 40), SimInfo(12)]
    hello = proto.hello(DeviceStatus(5, False, 1, network="n" * 50), sims_in, "t" * 5000)
    wire.check(wire.PHONE_FRAMES, hello)
    assert hello["sims"] == [{"slot": 0, "carrier": "c" * 64, "number": "1" * 32}]
    assert "fcm_token" not in hello
    proto.receive(
        {"type": "send", "id": "s", "message_id": "m", "attempt": 1, "to": "+1", "body": "b"}
    )
    proto.accept("m", 1)
    [transmit] = proto.receive(
        {"type": "ownership", "id": "o", "message_id": "m", "attempt": 1, "owner": True}
    )
    assert isinstance(transmit, Transmit)
    failure = SendResult(ok=False, error_code="e" * 100, error="x" * 5000, retryable=True)
    [report] = proto.transmitted("m", 1, failure)
    assert isinstance(report, Emit)
    checked = wire.check(wire.PHONE_FRAMES, report.frame)
    assert len(checked["error"]) == 512 and len(checked["error_code"]) == 64


def test_a_date_with_no_utc_equivalent_is_refused_by_both_sides() -> None:
    with pytest.raises(ValueError):
        wire.parse_date("9999-12-31T23:59:59-05:00")
    assert wire.parse_date("2026-01-01T00:00:00") == datetime(2026, 1, 1, tzinfo=UTC)
