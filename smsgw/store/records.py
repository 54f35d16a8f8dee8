"""The records the store reads and writes: messages, devices, keys, webhooks, ...

Plain dataclasses, the same whichever engine holds them (``rows.py`` maps a database row
to one). How a record may change is in ``rules.py``; the SQL that changes it, in the
operation modules.
"""

from __future__ import annotations

import enum
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
    kind: str = "agent"  # "agent" (smsgw-agent on a socket) or "app" (the stock app)


@dataclass(slots=True)
class AppToken:
    """A registration token an admin issued for the stock app (docs/smsgate-app.md)."""

    id: str
    name: str | None
    prefix: str
    created_at: datetime
    expires_at: datetime | None = None  # None: until revoked
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


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
    processed_at: datetime | None = None  # an app phone took it in hand ("Processed")
    # SMSGate's kinds of content (docs/smsgate-api.md): a data SMS to this port (``body``
    # is its base64 payload), or text and recipient encrypted by the caller. The hub can
    # read neither, and only app phones can send them (``app_only``).
    data_port: int | None = None
    encrypted: bool = False
    delivery_report: bool = True  # False: the phone asks for no delivery report
    # Routes beyond phones (docs/routes.md): while PENDING, ``route_id`` binds the message
    # to that route (the caller forced it: no phone is ever offered it); from QUEUED on,
    # the route owns it (``device_id`` is then NULL). ``route_message_id``: the
    # provider's id, which its callbacks name.
    route_id: str | None = None
    route_message_id: str | None = None
    cost: float | None = None
    currency: str | None = None
    route_forced: bool = False  # the caller named the route: never offered to phones
    sms_type: str | None = None  # otp, transactional, promotional, alert, marketing
    attempts: list[Attempt] = field(default_factory=list)
    # Routing hint, not a column: the phone that last sent to this recipient (filled by
    # due_messages, or by the dispatcher from its affinity cache).
    last_device: str | None = None

    @property
    def app_only(self) -> bool:
        """Only a phone running the stock app can send it (routing skips the others)."""
        return self.data_port is not None or self.encrypted


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
    kind: str = "batch"  # or "smsgate": one message of SMSGate's API, to many recipients
    device_id: str | None = None  # the phone the caller asked for (SMSGate's deviceId)


@dataclass(slots=True)
class Stats:
    by_status: dict[str, int]
    by_day: dict[str, dict[str, int]]  # "YYYY-MM-DD" -> status -> count
    by_hour: dict[str, dict[str, int]]  # "YYYY-MM-DDTHH" -> status -> count
    by_device: dict[str, dict[str, int]]  # device id -> status -> count
    failure_reasons: dict[str, int]
    inbound: int
    otp_sent: int
    otp_verified: int
    failovers: int  # offers after a message's first (another phone tried)
    # route name -> status -> count, and "cost" -> total cost (messages a route owns)
    by_route: dict[str, dict[str, float]] = field(default_factory=dict)


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
    # "smsgate": posted in SMSGate's envelope and signature (docs/smsgate-api.md), for
    # its one event (``event_name``, SMSGate's name), of one phone when ``device_id``.
    format: str = "smsgw"
    event_name: str | None = None
    device_id: str | None = None


@dataclass(slots=True)
class Route:
    """A way out other than the phones: a provider account (docs/routes.md).
    ``credentials`` are sealed at rest and never shown by the API."""

    id: str
    kind: str  # "twilio", "sns"
    name: str
    enabled: bool
    credentials: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    sender: str | None = None
    priority: int = 0
    policy: dict[str, Any] = field(default_factory=dict)
    api_base_url: str | None = None
    price_per_segment: float | None = None
    currency: str | None = None


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"  # waiting for its next attempt (or being attempted)
    SUCCEEDED = "succeeded"
    DEAD = "dead"  # every attempt failed: kept for inspection and replay


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


@dataclass(frozen=True, slots=True)
class UiSession:
    """A dashboard sign-in: ``key_id`` None is the environment's admin key, whose hash at
    sign-in is ``env_key`` (changing SMSGW_ADMIN_KEY ends those sessions)."""

    id_hash: str
    key_id: str | None
    env_key: str | None
    csrf: str
    created_at: datetime
    expires_at: datetime


@dataclass(slots=True)
class MessageFilter:
    status: Status | None = None
    device_id: str | None = None
    custom_id: str | None = None
    recipient: str | None = None  # E.164
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
