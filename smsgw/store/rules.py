"""How a message, a delivery and a webhook may change: the rules that need no SQL.

The operations ask these before they write (``tests/smsgw/store/test_rules.py`` tests
them without a database); the compare-and-set conditions that decide races stay in the
SQL itself, where the database can enforce them.
"""

from __future__ import annotations

from collections.abc import Awaitable
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
