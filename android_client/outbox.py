"""Device-local durable state: what the phone must not forget across crashes and reconnects.

Three things live here (docs/protocol.md section 5):

- held commands: ``send`` offers the phone stored, keyed by message id, with how far it got
  (``accepted`` → ``owned`` → ``transmitted``); their ids go into ``hello.held``;
- reports (``sent``/``failed``/``delivered`` frames) not yet acknowledged by the hub;
- inbound SMS frames not yet acknowledged by the hub;

plus a few named values (``get_meta``/``set_meta``): a backend's inbound high-water mark,
the daily send counter, the last connection result.

The store is synchronous and small: the client calls it from the event loop and each
mutation is one tiny write. ``batch()`` groups mutations that must land together (e.g.
"transmitted" and its ``sent`` report), so a crash never leaves one without the other.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import json
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast

HeldState = Literal["accepted", "owned", "transmitted"]
_HELD_STATES: frozenset[str] = frozenset({"accepted", "owned", "transmitted"})
Frame = dict[str, Any]

STORE_VERSION = 1

# Sent messages are remembered for their delivery report this long (an SMS is valid for
# 4 days at the network, then the report says it expired) and at most this many.
SENT_KEPT_SECONDS = 5 * 24 * 3600.0
SENT_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class HeldCommand:
    """A ``send`` offer the phone holds.

    ``accepted``: stored (and accepted, or about to be); ``owned``: the hub said we own it
    and transmission started; ``transmitted``: the radio finished, a report is pending.
    """

    message_id: str
    attempt: int
    to: str
    body: str
    sim_slot: int | None
    state: HeldState = "accepted"

    def with_state(self, state: HeldState, attempt: int | None = None) -> HeldCommand:
        return replace(self, state=state, attempt=self.attempt if attempt is None else attempt)


class PhoneStore(abc.ABC):
    """Interface of the phone's durable state."""

    @abc.abstractmethod
    def held(self) -> list[HeldCommand]: ...

    @abc.abstractmethod
    def get_held(self, message_id: str) -> HeldCommand | None: ...

    @abc.abstractmethod
    def put_held(self, command: HeldCommand) -> None: ...

    @abc.abstractmethod
    def drop_held(self, message_id: str) -> None: ...

    @abc.abstractmethod
    def reports(self) -> list[Frame]:
        """Unacknowledged report frames, oldest first."""

    @abc.abstractmethod
    def put_report(self, frame: Frame) -> None: ...

    @abc.abstractmethod
    def drop_report(self, frame_id: str) -> Frame | None: ...

    @abc.abstractmethod
    def inbound(self) -> list[Frame]:
        """Unacknowledged inbound frames, oldest first."""

    @abc.abstractmethod
    def put_inbound(self, frame: Frame) -> None: ...

    @abc.abstractmethod
    def drop_inbound(self, frame_id: str) -> Frame | None: ...

    @abc.abstractmethod
    def sent_attempt(self, message_id: str) -> int | None:
        """The attempt a message was sent under, while its delivery report may still come
        (a report after a restart must carry the right attempt)."""

    @abc.abstractmethod
    def put_sent(self, message_id: str, attempt: int, at: float) -> None:
        """Remember a sent message (``at``: unix time); forgets those older than
        ``SENT_KEPT_SECONDS`` or beyond ``SENT_KEPT``."""

    @abc.abstractmethod
    def drop_sent(self, message_id: str) -> None: ...

    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A named value, or None if it was never set."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str | None) -> None:
        """Set (or with None, remove) a named value."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group mutations so they are persisted together (no-op by default)."""
        yield

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release the underlying file or database (no-op by default)."""


class MemoryPhoneStore(PhoneStore):
    """In-memory store: state survives reconnects but not a process restart."""

    def __init__(self) -> None:
        self._held: dict[str, HeldCommand] = {}
        self._reports: dict[str, Frame] = {}
        self._inbound: dict[str, Frame] = {}
        self._meta: dict[str, str] = {}
        # Not in the JSON snapshot: rewriting up to SENT_KEPT entries for every send would
        # cost more than the simulator's phones are worth (SqlitePhoneStore keeps them).
        self._sent: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._batch_depth = 0
        self._dirty = False

    def held(self) -> list[HeldCommand]:
        return list(self._held.values())

    def get_held(self, message_id: str) -> HeldCommand | None:
        return self._held.get(message_id)

    def put_held(self, command: HeldCommand) -> None:
        self._held[command.message_id] = command
        self._changed()

    def drop_held(self, message_id: str) -> None:
        if self._held.pop(message_id, None) is not None:
            self._changed()

    def reports(self) -> list[Frame]:
        return copy.deepcopy(list(self._reports.values()))

    def put_report(self, frame: Frame) -> None:
        self._reports[_frame_id(frame)] = copy.deepcopy(frame)
        self._changed()

    def drop_report(self, frame_id: str) -> Frame | None:
        frame = self._reports.pop(frame_id, None)
        if frame is not None:
            self._changed()
        return frame

    def inbound(self) -> list[Frame]:
        return copy.deepcopy(list(self._inbound.values()))

    def put_inbound(self, frame: Frame) -> None:
        self._inbound[_frame_id(frame)] = copy.deepcopy(frame)
        self._changed()

    def drop_inbound(self, frame_id: str) -> Frame | None:
        frame = self._inbound.pop(frame_id, None)
        if frame is not None:
            self._changed()
        return frame

    def sent_attempt(self, message_id: str) -> int | None:
        found = self._sent.get(message_id)
        return None if found is None else found[0]

    def put_sent(self, message_id: str, attempt: int, at: float) -> None:
        self._sent[message_id] = (attempt, at)
        self._sent.move_to_end(message_id)
        while self._sent and (
            len(self._sent) > SENT_KEPT
            or next(iter(self._sent.values()))[1] < at - SENT_KEPT_SECONDS
        ):
            self._sent.popitem(last=False)

    def drop_sent(self, message_id: str) -> None:
        self._sent.pop(message_id, None)

    def get_meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            if self._meta.pop(key, None) is None:
                return
        elif self._meta.get(key) == value:
            return
        else:
            self._meta[key] = value
        self._changed()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            if self._batch_depth == 0 and self._dirty:
                self._dirty = False
                self._persist()

    def _changed(self) -> None:
        if self._batch_depth:
            self._dirty = True
        else:
            self._persist()

    def _persist(self) -> None:
        """Hook for durable subclasses; memory needs nothing."""

    def _snapshot(self) -> dict[str, Any]:
        return {
            "version": STORE_VERSION,
            "held": {
                mid: {k: v for k, v in asdict(cmd).items() if k != "message_id"}
                for mid, cmd in self._held.items()
            },
            "reports": list(self._reports.values()),
            "inbound": list(self._inbound.values()),
            "meta": dict(self._meta),
        }

    def _restore(self, data: dict[str, Any]) -> None:
        if data.get("version") != STORE_VERSION:
            raise ValueError(f"unsupported phone store version {data.get('version')!r}")
        held: dict[str, HeldCommand] = {}
        for mid, raw in data.get("held", {}).items():
            state = raw.get("state", "accepted")
            if state not in _HELD_STATES:
                raise ValueError(f"held command {mid!r} has unknown state {state!r}")
            held[mid] = HeldCommand(
                message_id=mid,
                attempt=int(raw["attempt"]),
                to=str(raw["to"]),
                body=str(raw["body"]),
                sim_slot=None if raw.get("sim_slot") is None else int(raw["sim_slot"]),
                state=cast(HeldState, state),
            )
        self._held = held
        self._reports = {_frame_id(f): f for f in data.get("reports", [])}
        self._inbound = {_frame_id(f): f for f in data.get("inbound", [])}
        self._meta = {str(k): str(v) for k, v in data.get("meta", {}).items()}


class JsonPhoneStore(MemoryPhoneStore):
    """The in-memory store, written to one JSON file after every change.

    Writes go to a temporary file in the same directory and are moved into place with
    ``os.replace``, so a crash leaves either the old or the new state, never half a file.
    ``fsync=False`` keeps that atomicity against process crashes but not power loss; the
    simulator uses it so a hundred phones do not serialise on the disk.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self._fsync = fsync
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read phone store {self.path}: {exc}") from exc
            if not isinstance(data, dict):
                raise ValueError(f"phone store {self.path} is not a JSON object")
            self._restore(data)

    def _persist(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(self._snapshot(), ensure_ascii=False, separators=(",", ":"))
        # mkstemp creates the file 0600: message bodies are private.
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
                if self._fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported everywhere (e.g. Windows).
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _frame_id(frame: Frame) -> str:
    frame_id = frame.get("id")
    if not isinstance(frame_id, str) or not frame_id:
        raise ValueError("stored frames need a string id")
    return frame_id
