"""The storage interface: every durable fact of the hub goes through ``Store``.

Nothing outside ``smsgw/store/`` may assume a particular engine. State changes that must
not race (offering a message to a phone, a phone accepting it) are compare-and-set
operations here, so the database, not any one process, decides who owns a message.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class Status(enum.StrEnum):
    PENDING = "PENDING"  # stored; no phone owns it (it may be on offer to one)
    QUEUED = "QUEUED"  # a phone accepted it and owns it
    SENT = "SENT"
    DELIVERED = "DELIVERED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"  # withdrawn by the client before any phone accepted it


FINAL_STATUSES = frozenset({Status.DELIVERED, Status.FAILED, Status.CANCELLED})


@dataclass(slots=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    scopes: frozenset[str]
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    rate_limit_rpm: int | None = None  # None: the hub's default
    daily_message_limit: int | None = None


@dataclass(slots=True)
class Device:
    id: str
    name: str
    hardware_id: str
    sims: list[dict[str, Any]]
    fcm_token: str | None
    enabled: bool
    daily_quota: int | None
    sent_today: int
    sent_day: str | None
    battery: int | None
    charging: bool | None
    signal: int | None
    network: str | None
    app_version: str | None
    last_seen_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Attempt:
    attempt: int
    device_id: str
    offered_at: datetime
    accepted_at: datetime | None = None
    ended_at: datetime | None = None
    outcome: str | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Message:
    id: str
    recipient: str
    body: str
    status: Status
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    device_id: str | None = None
    pinned_device_id: str | None = None
    sim_slot: int | None = None
    parts: int = 1
    attempt: int = 0
    lease_until: datetime | None = None
    next_attempt_at: datetime | None = None
    error_code: str | None = None
    error: str | None = None
    queued_at: datetime | None = None
    sent_at: datetime | None = None
    delivered_at: datetime | None = None
    failed_at: datetime | None = None
    priority: int = 0
    send_at: datetime | None = None
    cancelled_at: datetime | None = None
    custom_id: str | None = None
    metadata: dict[str, Any] | None = None
    encoding: str | None = None
    sensitive: bool = False  # an OTP: the API never shows the body
    template_id: str | None = None
    batch_id: str | None = None
    callback_url: str | None = None  # this message's status events also go here
    attempts: list[Attempt] = field(default_factory=list)
    # Routing hint, not a column: the phone that last sent to this recipient (filled by
    # due_messages, or by the dispatcher from its affinity cache).
    last_device: str | None = None


@dataclass(slots=True)
class Inbound:
    id: str
    device_id: str
    local_id: str
    sender: str
    body: str
    sim_slot: int | None
    received_at: datetime
    created_at: datetime


@dataclass(slots=True)
class Template:
    id: str
    name: str
    body: str
    category: str | None
    active: bool
    usage_count: int
    created_at: datetime
    updated_at: datetime


@dataclass(slots=True)
class Otp:
    id: str
    recipient: str
    code_hash: str
    message_id: str
    attempts: int
    max_attempts: int
    created_at: datetime
    expires_at: datetime
    verified_at: datetime | None = None
    superseded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class OptOut:
    number: str
    source: str
    reason: str | None
    created_at: datetime


@dataclass(slots=True)
class Batch:
    id: str
    name: str | None
    total: int  # messages created
    rejected: int  # rows refused at submission
    created_at: datetime
    by_status: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Stats:
    by_status: dict[str, int]
    by_day: dict[str, dict[str, int]]  # "YYYY-MM-DD" -> status -> count
    by_device: dict[str, dict[str, int]]  # device id -> status -> count
    failure_reasons: dict[str, int]
    inbound: int
    otp_sent: int
    otp_verified: int


@dataclass(slots=True)
class Webhook:
    id: str
    url: str
    events: frozenset[str]
    description: str | None
    enabled: bool
    secret: str
    created_at: datetime
    updated_at: datetime
    # During a rotation the old secret still signs (a second v1=) until this time.
    previous_secret: str | None = None
    previous_secret_until: datetime | None = None
    failing_since: datetime | None = None  # first failure since the last success
    disabled_at: datetime | None = None
    disabled_reason: str | None = None  # set when the hub disabled it, not the user


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or being attempted)
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # every attempt failed: kept for inspection and replay


def next_delivery_status(
    succeeded: bool, retry_at: datetime | None, attempts: int, max_attempts: int
) -> DeliveryStatus:
    """After attempt number ``attempts``: the rule every store applies."""
    if succeeded:
        return DeliveryStatus.SUCCEEDED
    if retry_at is not None and attempts < max_attempts:
        return DeliveryStatus.PENDING
    return DeliveryStatus.DEAD


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


DEVICE_REMOVED = "device_removed"
DEVICE_REMOVED_ERROR = "the device this message was sent through was removed"


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


def disabled_reason(failing_since: Any) -> str:
    since = failing_since.isoformat() if isinstance(failing_since, datetime) else failing_since
    return f"disabled by the hub: every delivery failed since {since}"


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


@dataclass(slots=True)
class Delivery:
    """One event on its way to one target (a webhook, or a message's callback_url)."""

    id: str
    event_id: str
    event_type: str
    webhook_id: str | None  # None: the message's callback_url
    url: str
    status: DeliveryStatus
    attempts: int
    max_attempts: int | None  # None: the hub's setting
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: str
    history: list[DeliveryAttempt] = field(default_factory=list)


class Conflict(Exception):
    """A unique value (e.g. a template name) is already taken."""


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    request_hash: str
    status_code: int | None  # None while the first request is still running
    response: str | None


@dataclass(slots=True)
class MessageFilter:
    status: Status | None = None
    device_id: str | None = None
    custom_id: str | None = None
    since: datetime | None = None
    # Keyset cursor: the (created_at, id) of the last row of the previous page.
    after: tuple[datetime, str] | None = None
    limit: int = 50


@dataclass(slots=True)
class InboundFilter:
    sender: str | None = None
    device_id: str | None = None
    since: datetime | None = None
    after: tuple[datetime, str] | None = None
    limit: int = 50


class Store(abc.ABC):
    """Async storage. Implementations: ``SqliteStore`` (embedded default)."""

    # Called on the event loop after a write that queued webhook deliveries has
    # committed (the webhook worker sets it): a hint to look now, not at the next poll.
    on_events: Callable[[], None] | None = None

    # -- lifecycle ------------------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise if the database does not answer (readiness)."""

    # -- client API keys ------------------------------------------------------------

    @abc.abstractmethod
    async def create_api_key(self, key: ApiKey, key_hash: str) -> None: ...

    @abc.abstractmethod
    async def api_key_by_prefix(self, prefix: str) -> tuple[ApiKey, str] | None:
        """The key with this public prefix and its stored hash, unless revoked."""

    @abc.abstractmethod
    async def list_api_keys(self) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def revoke_api_key(self, key_id: str, now: datetime) -> bool: ...

    @abc.abstractmethod
    async def has_admin_key(self) -> bool: ...

    # -- enrollment -----------------------------------------------------------------

    @abc.abstractmethod
    async def create_enrollment_code(
        self, code_hash: str, now: datetime, expires_at: datetime
    ) -> None: ...

    @abc.abstractmethod
    async def register_device(
        self,
        *,
        device_id: str,
        name: str,
        hardware_id: str,
        sims: list[dict[str, Any]],
        fcm_token: str | None,
        token_prefix: str,
        token_hash: str,
        now: datetime,
        enrollment_code_hash: str | None,
    ) -> tuple[Device, bool] | None:
        """Create or re-register (same hardware_id keeps its id, rotates the token).

        When ``enrollment_code_hash`` is given the code is consumed in the same
        transaction; ``None`` is returned (and nothing written) if it is unknown,
        expired or used. Returns the device and whether it was created.
        """

    # -- devices --------------------------------------------------------------------

    @abc.abstractmethod
    async def device_by_token_prefix(self, prefix: str) -> tuple[Device, str] | None:
        """The device holding the token with this public prefix, and the token's hash."""

    @abc.abstractmethod
    async def get_device(self, device_id: str) -> Device | None: ...

    @abc.abstractmethod
    async def list_devices(self) -> list[Device]: ...

    @abc.abstractmethod
    async def update_device(self, device_id: str, now: datetime, **fields: Any) -> Device | None:
        """Set name/enabled/daily_quota/fcm_token/sims/app_version."""

    @abc.abstractmethod
    async def record_device_status(
        self,
        device_id: str,
        *,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
        offline: bool = False,
    ) -> None:
        """Store a phone's last reported state; ``offline``: its connection just ended
        (raises ``device.offline``). Crossing below the battery line raises
        ``device.battery_low``."""

    @abc.abstractmethod
    async def device_online(
        self,
        device_id: str,
        *,
        sims: list[dict[str, Any]],
        app_version: str,
        fcm_token: str | None,
        battery: int,
        charging: bool,
        signal: int,
        network: str | None,
        now: datetime,
    ) -> tuple[Device, list[Message]] | None:
        """A phone's hello, recorded in one transaction (sims, app version, FCM token if
        given, status, last seen). Returns the device as it now stands and the QUEUED
        messages it owns, or None if the device was removed meanwhile."""

    @abc.abstractmethod
    async def delete_device(self, device_id: str, now: datetime) -> bool:
        """Revoke the token and remove the device; its unfinished messages return to
        PENDING (it can never report on them) and its pending offers are released."""

    # -- messages -------------------------------------------------------------------

    @abc.abstractmethod
    async def create_message(
        self,
        message: Message,
        *,
        offer_to: str | None = None,
        lease_until: datetime | None = None,
        accepted_at: datetime | None = None,
    ) -> bool:
        """Insert. With ``offer_to`` the message is stored already on offer to that phone
        (attempt 1, with its attempt row), in the same transaction: one write instead of
        two, and still durable before any command leaves the hub. With ``accepted_at`` as
        well, the phone has already accepted that offer: the message is stored QUEUED,
        owned by it (as ``accept`` would leave it, with its ``message.queued`` event).

        Returns False when ``offer_to`` names a removed phone (checked in the transaction,
        so a concurrent ``delete_device`` is ordered before or after it): with
        ``accepted_at`` nothing is written (the phone's accept is refused), without it the
        message is stored on offer to nobody, or FAILED if it was pinned to that phone
        (``offered_to_removed``). ``message`` is updated to what was stored."""

    @abc.abstractmethod
    async def get_message(
        self, message_id: str, *, with_attempts: bool = False
    ) -> Message | None: ...

    @abc.abstractmethod
    async def list_messages(self, flt: MessageFilter) -> list[Message]: ...

    @abc.abstractmethod
    async def due_messages(self, now: datetime, limit: int) -> list[Message]:
        """PENDING, not on offer (or the offer's lease ran out), retry time reached."""

    @abc.abstractmethod
    async def owned_unfinished(self, device_id: str) -> list[Message]:
        """QUEUED messages this device owns (accepted, no radio result yet)."""

    @abc.abstractmethod
    async def offer(
        self,
        message_id: str,
        device_id: str,
        expected_attempt: int,
        now: datetime,
        lease_until: datetime,
    ) -> bool:
        """CAS: PENDING, attempt == expected, no live lease -> on offer to ``device_id``
        under attempt ``expected + 1``."""

    @abc.abstractmethod
    async def release_offer(
        self,
        message_id: str,
        device_id: str,
        attempt: int,
        outcome: str,
        now: datetime,
        retry_at: datetime | None,
        max_attempts: int,
    ) -> Status | None:
        """The offer ended without ownership (timeout, disconnect). Returns the new status
        (PENDING, or FAILED after ``max_attempts``), or None if the offer was no longer
        current (e.g. the phone's accept won the race)."""

    @abc.abstractmethod
    async def accept(self, message_id: str, device_id: str, attempt: int, now: datetime) -> bool:
        """CAS: the phone becomes the owner if the message is on offer to it under this
        attempt (or it already owns it under this attempt: accept is idempotent)."""

    @abc.abstractmethod
    async def mark_sent(self, message_id: str, device_id: str, now: datetime) -> str | None:
        """QUEUED -> SENT for the owner; returns the recipient, or None if nothing changed."""

    @abc.abstractmethod
    async def mark_delivered(self, message_id: str, device_id: str, now: datetime) -> bool: ...

    @abc.abstractmethod
    async def mark_failed(
        self,
        message_id: str,
        device_id: str,
        attempt: int,
        *,
        error_code: str,
        error: str,
        retryable: bool,
        now: datetime,
        retry_at: datetime | None,
        max_attempts: int,
    ) -> Status | None:
        """A phone's failure report, for an offer it declined or a message it owns.
        Retryable and attempts left -> PENDING again; otherwise FAILED. None if the
        phone had no claim on the message (a stale report)."""

    @abc.abstractmethod
    async def cancel_message(self, message_id: str, now: datetime) -> Message | None:
        """CAS: PENDING (even while on offer) -> CANCELLED. Returns the message as it then
        stands (check its status: a message a phone owns is not cancelled), or None if
        unknown. A phone's later accept of the old offer fails, because it is no longer
        PENDING."""

    # -- idempotency ------------------------------------------------------------------

    @abc.abstractmethod
    async def idempotency_claim(
        self, owner: str, key: str, request_hash: str, now: datetime, abandoned_before: datetime
    ) -> IdempotencyRecord | None:
        """Claim (owner, key) for a new request: None if claimed now, else the existing
        record (a different hash, a finished response, or a request still running). A claim
        without a response made before ``abandoned_before`` belonged to a request that died
        with its process: it is taken over."""

    @abc.abstractmethod
    async def idempotency_complete(
        self, owner: str, key: str, status_code: int, response: str
    ) -> None: ...

    @abc.abstractmethod
    async def idempotency_release(self, owner: str, key: str) -> None:
        """The claimed request failed without a response worth replaying: free the key."""

    @abc.abstractmethod
    async def purge_idempotency(self, before: datetime) -> int: ...

    # -- templates --------------------------------------------------------------------

    @abc.abstractmethod
    async def create_template(self, template: Template) -> None:
        """Raises ``Conflict`` when the name is taken."""

    @abc.abstractmethod
    async def get_template(self, template_id: str) -> Template | None: ...

    @abc.abstractmethod
    async def list_templates(
        self, *, category: str | None = None, active: bool | None = None
    ) -> list[Template]: ...

    @abc.abstractmethod
    async def update_template(
        self, template_id: str, now: datetime, **fields: Any
    ) -> Template | None:
        """Set name/body/category/active; raises ``Conflict`` when the name is taken."""

    @abc.abstractmethod
    async def delete_template(self, template_id: str) -> bool: ...

    @abc.abstractmethod
    async def count_template_use(self, template_id: str, n: int = 1) -> None: ...

    # -- one-time passwords -------------------------------------------------------------

    @abc.abstractmethod
    async def create_otp(self, otp: Otp, message: Message) -> None:
        """Store the code and its SMS in one transaction; earlier codes for the same
        number are superseded (one active code per number)."""

    @abc.abstractmethod
    async def otp_sends_since(self, recipient: str, since: datetime) -> list[datetime]:
        """Creation times of codes sent to ``recipient`` since ``since``, newest first."""

    @abc.abstractmethod
    async def get_otp(self, otp_id: str) -> Otp | None: ...

    @abc.abstractmethod
    async def latest_otp(self, recipient: str) -> Otp | None:
        """The newest code for ``recipient`` that was not superseded."""

    @abc.abstractmethod
    async def record_otp_attempt(self, otp_id: str, correct: bool, now: datetime) -> Otp | None:
        """CAS: count an attempt if the code is live (not verified, superseded or expired,
        attempts left); mark it verified when ``correct``. None if it was not live."""

    @abc.abstractmethod
    async def purge_otps(self, before: datetime) -> int:
        """Delete codes that expired before ``before``."""

    @abc.abstractmethod
    async def hub_secret(self, name: str, candidate: str) -> str:
        """The stored secret ``name``; stores ``candidate`` first if there is none."""

    # -- opt-out ----------------------------------------------------------------------

    @abc.abstractmethod
    async def add_opt_out(self, entry: OptOut) -> bool:
        """False if the number was already opted out (the first entry stays)."""

    @abc.abstractmethod
    async def remove_opt_out(self, number: str) -> bool: ...

    @abc.abstractmethod
    async def list_opt_outs(self, *, after: str | None, limit: int) -> list[OptOut]:
        """Ordered by number; ``after`` is the last number of the previous page."""

    @abc.abstractmethod
    async def create_batch(self, batch: Batch, messages: list[Message]) -> None:
        """The batch and all its messages in one transaction."""

    @abc.abstractmethod
    async def get_batch(self, batch_id: str) -> Batch | None:
        """With ``by_status`` counted from its messages."""

    @abc.abstractmethod
    async def stats(self, since: datetime, until: datetime) -> Stats:
        """Counts over messages, inbound SMS and OTP codes created in [since, until)."""

    @abc.abstractmethod
    async def expire_messages(self, now: datetime) -> list[str]:
        """PENDING messages past ``expires_at`` -> FAILED ``expired``; returns their ids."""

    @abc.abstractmethod
    async def recent_affinities(self, limit: int) -> list[tuple[str, str]]:
        """(recipient, device_id) of the most recent sends, newest first (cache warm-up)."""

    # -- inbound --------------------------------------------------------------------

    @abc.abstractmethod
    async def store_inbound(self, inbound: Inbound) -> bool:
        """Store once per (device, local_id); False when it was a duplicate."""

    @abc.abstractmethod
    async def list_inbound(self, flt: InboundFilter) -> list[Inbound]: ...

    # -- webhooks -------------------------------------------------------------------
    # Events are written by the state-changing methods above, in their own transaction,
    # one delivery per subscribed target (see smsgw/events.py). Nothing is written for an
    # event nobody subscribes to.

    @abc.abstractmethod
    async def create_webhook(self, hook: Webhook) -> None: ...

    @abc.abstractmethod
    async def get_webhook(self, webhook_id: str) -> Webhook | None: ...

    @abc.abstractmethod
    async def list_webhooks(self) -> list[Webhook]: ...

    @abc.abstractmethod
    async def update_webhook(self, webhook_id: str, now: datetime, **fields: Any) -> Webhook | None:
        """Set url/events/description/enabled. Enabling clears the failure record and
        makes the endpoint's pending deliveries due at once."""

    @abc.abstractmethod
    async def rotate_webhook_secret(
        self, webhook_id: str, secret: str, previous_until: datetime, now: datetime
    ) -> Webhook | None:
        """The new secret signs from now on; the current one also signs until
        ``previous_until``."""

    @abc.abstractmethod
    async def delete_webhook(self, webhook_id: str) -> bool:
        """Remove it with its deliveries."""

    @abc.abstractmethod
    async def claim_deliveries(
        self, now: datetime, lease_until: datetime, limit: int
    ) -> list[Delivery]:
        """Due pending deliveries of enabled endpoints (and callbacks), leased until
        ``lease_until`` so no other worker takes them; per target and subject only the
        oldest pending one, so one message's events arrive in order."""

    @abc.abstractmethod
    async def finish_delivery(
        self,
        delivery_id: str,
        attempt: DeliveryAttempt,
        *,
        succeeded: bool,
        retry_at: datetime | None,
        default_max_attempts: int,
        disable_after: float,
        lease: datetime | None = None,
    ) -> tuple[DeliveryStatus, bool] | None:
        """Record an attempt, if the delivery is still pending under ``lease`` (the lease
        its claim set: a worker whose lease ran out, and whose delivery another worker
        took over meanwhile, records nothing and gets None). Failed with attempts left
        and ``retry_at`` -> pending again; otherwise dead. A webhook failing without a
        success for ``disable_after`` seconds is disabled. Returns the delivery's new
        status and whether the webhook was just disabled; None if the delivery is gone."""

    @abc.abstractmethod
    async def get_delivery(self, delivery_id: str) -> Delivery | None:
        """With its attempt history."""

    @abc.abstractmethod
    async def list_deliveries(
        self,
        webhook_id: str,
        *,
        status: DeliveryStatus | None,
        after: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Delivery]:
        """Newest first, with attempt histories; ``after`` is the keyset cursor."""

    @abc.abstractmethod
    async def replay_delivery(self, delivery_id: str, now: datetime) -> Delivery | None:
        """Send it once more, now (a dead delivery gets one more attempt)."""

    @abc.abstractmethod
    async def purge_deliveries(self, before: datetime) -> int:
        """Forget finished deliveries last changed before ``before`` (and their events)."""
