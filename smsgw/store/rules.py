"""How a message, a delivery and a webhook may change: the rules that need no SQL.

The operations ask these before they write (``tests/smsgw/store/test_rules.py`` tests
them without a database); the compare-and-set conditions that decide races stay in the
SQL itself, where the database can enforce them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable
from datetime import UTC, datetime

from smsgw.clock import iso
from smsgw.store.records import DeliveryStatus, Message, Status

DEVICE_REMOVED = "device_removed"
DEVICE_REMOVED_ERROR = "the device this message was sent through was removed"
EXPIRED = "expired"
EXPIRED_ERROR = "no phone sent the message before it expired"
MAX_ATTEMPTS = "max_attempts"


def utc_day(now: datetime) -> str:
    """The day a send counts against its phone's daily quota."""
    return now.astimezone(UTC).date().isoformat()


# -- a message's offers and reports ----------------------------------------------------


def after_release(attempt: int, max_attempts: int) -> Status:
    """An offer ended without an owner (timeout, disconnect): PENDING for the next phone,
    or FAILED once ``attempt`` used up the attempts."""
    return Status.FAILED if attempt >= max_attempts else Status.PENDING


def max_attempts_error(attempt: int, outcome: str) -> str:
    return f"no phone took the message after {attempt} attempts (last: {outcome})"


def after_failure(
    status: Status, attempt: int, reported_attempt: int, *, retryable: bool, max_attempts: int
) -> Status | None:
    """A phone's failure report on the message it holds under ``attempt``: PENDING (the
    next phone tries), FAILED, or None when the report changes nothing."""
    if reported_attempt != attempt:
        # About an older attempt (a decline of an earlier offer, replayed after a
        # reconnect): the message has moved on, maybe to this very phone.
        return None
    if status not in (Status.PENDING, Status.QUEUED, Status.SENT):
        return None  # already final: status never goes backwards
    # Once transmitted (SENT) a retry could deliver twice: a failure is final.
    if retryable and status is not Status.SENT and attempt < max_attempts:
        return Status.PENDING
    return Status.FAILED


def failure_outcome(retryable: bool) -> str:
    """How the attempt a failure ended is recorded."""
    return "failed_retryable" if retryable else "failed"


def first_offer(
    message: Message, device_id: str, lease_until: datetime | None, accepted_at: datetime | None
) -> None:
    """Set ``message`` up as ``create_message`` stores it when it is created on offer to
    ``device_id`` (attempt 1), or already accepted by it. Every field it touches is set
    from the arguments alone, so a retry after a failed write stores what it asks for."""
    message.device_id, message.attempt = device_id, 1
    if accepted_at is None:
        message.status, message.lease_until, message.queued_at = Status.PENDING, lease_until, None
        message.updated_at = message.created_at
    else:
        message.status, message.lease_until = Status.QUEUED, None
        message.queued_at = message.updated_at = accepted_at


def not_offered(message: Message) -> None:
    """Undo ``first_offer``: a new message on offer to nobody."""
    message.device_id, message.attempt, message.lease_until = None, 0, None
    message.status, message.queued_at = Status.PENDING, None
    message.updated_at = message.created_at


def offered_to_removed(message: Message, device_id: str, now: datetime) -> None:
    """Set ``message`` up as ``create_message`` stores it when ``device_id``, the phone
    it was first offered to, was removed before the offer was written: on offer to
    nobody, and FAILED if it was pinned to that phone (as ``delete_device`` fails them)."""
    not_offered(message)
    if message.pinned_device_id == device_id:
        message.status, message.error_code, message.error = (
            Status.FAILED,
            DEVICE_REMOVED,
            DEVICE_REMOVED_ERROR,
        )
        message.failed_at = message.updated_at = now


async def settle_first_offer(
    message: Message,
    device_id: str,
    accepted_at: datetime | None,
    now: datetime,
    write: Awaitable[bool],
) -> bool:
    """Await ``write``, the insert of a message ``first_offer`` set up (True: stored as
    asked; False: the phone was removed), and leave ``message`` as what was stored."""
    try:
        stored_as_asked = await write
    except BaseException:
        not_offered(message)
        raise
    if not stored_as_asked:
        if accepted_at is None:
            offered_to_removed(message, device_id, now)
        else:
            not_offered(message)
    return stored_as_asked


# -- webhook deliveries ------------------------------------------------------------------


def next_delivery_status(
    succeeded: bool, retry_at: datetime | None, attempts: int, max_attempts: int
) -> DeliveryStatus:
    """After attempt number ``attempts``."""
    if succeeded:
        return DeliveryStatus.SUCCEEDED
    if retry_at is not None and attempts < max_attempts:
        return DeliveryStatus.PENDING
    return DeliveryStatus.DEAD


def should_disable(failing_since: datetime, now: datetime, disable_after: float) -> bool:
    """A webhook that has failed every delivery for ``disable_after`` seconds is switched
    off, so a dead receiver stops costing every event a delivery."""
    return (now - failing_since).total_seconds() >= disable_after


def disabled_reason(failing_since: datetime) -> str:
    return f"disabled by the hub: every delivery failed since {iso(failing_since)}"


# -- one message to many recipients (SMSGate's API, docs/smsgate-api.md) ----------------

# A recipient's state in SMSGate's words: the smsgw message sent to it, by status.
RECIPIENT_STATE: dict[Status, str] = {
    Status.PENDING: "Pending",
    Status.QUEUED: "Processed",
    Status.SENT: "Sent",
    Status.DELIVERED: "Delivered",
    Status.FAILED: "Failed",
    Status.CANCELLED: "Cancelled",
}

# The message's state from its recipients' (the app's own rule, MessageWithRecipients.kt,
# smsgate-wire.md §3.5): the first line that holds, else "Sent". ``group_state`` applies
# it in Python and ``group_state_sql`` in SQL, from this one table.
GROUP_RULE: tuple[tuple[str, str], ...] = (
    ("any", "Pending"),
    ("any", "Cancelling"),
    ("any", "Cancelled"),
    ("any", "Processed"),
    ("all", "Failed"),
    ("all", "Delivered"),
)
GROUP_DEFAULT = "Sent"


def group_state(states: Iterable[str]) -> str:
    found = list(states)
    for quantifier, state in GROUP_RULE:
        hits = sum(1 for s in found if s == state)
        if (hits > 0) if quantifier == "any" else (hits == len(found) > 0):
            return state
    return GROUP_DEFAULT


def group_state_sql(status: str = "status") -> str:
    """``group_state`` as an aggregate over the ``status`` column of a group's rows."""
    whens = []
    for quantifier, state in GROUP_RULE:
        statuses = [s.value for s, name in RECIPIENT_STATE.items() if name == state]
        if not statuses:
            continue  # no smsgw status is "Cancelling": the line never holds
        listed = ", ".join(f"'{s}'" for s in statuses)
        hits = f"sum(CASE WHEN {status} IN ({listed}) THEN 1 ELSE 0 END)"
        test = f"{hits} > 0" if quantifier == "any" else f"{hits} = count(*)"
        whens.append(f"WHEN {test} THEN '{state}'")
    return f"CASE {' '.join(whens)} ELSE '{GROUP_DEFAULT}' END"


def recipient_history(m: Message) -> list[tuple[datetime, str]]:
    """When the message to one recipient reached each state, as far as its row tells:
    only the steps that lead to where it is now (a message offered again after a lost
    phone keeps its old ``queued_at``, but it is Pending now)."""
    steps = [(m.created_at, "Pending")]
    if m.status is Status.CANCELLED:
        return [*steps, (m.cancelled_at or m.updated_at, "Cancelled")]
    if m.status is Status.PENDING:
        return steps
    for at, state in ((m.queued_at, "Processed"), (m.sent_at, "Sent")):
        if at is not None:
            steps.append((at, state))
    if m.status is Status.DELIVERED:
        steps.append((m.delivered_at or m.updated_at, "Delivered"))
    elif m.status is Status.FAILED:
        steps.append((m.failed_at or m.updated_at, "Failed"))
    return steps


def group_history(messages: list[Message]) -> dict[str, datetime]:
    """The first time the message as a whole reached each state (SMSGate's ``states``),
    found by replaying its recipients' steps in time order through ``group_state``."""
    current = ["Pending"] * len(messages)
    steps = sorted(
        (at, order, i, state)
        for i, m in enumerate(messages)
        for order, (at, state) in enumerate(recipient_history(m))
    )
    reached: dict[str, datetime] = {}
    if messages:
        reached["Pending"] = min(m.created_at for m in messages)
    for at, _, i, state in steps:
        current[i] = state
        reached.setdefault(group_state(current), at)
    return reached
