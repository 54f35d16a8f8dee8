"""pydantic models of the REST API: they validate requests and generate the OpenAPI document."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from smsgw.store import Attempt, Device, Inbound, Message, Status

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SEPARATORS = re.compile(r"[\s().\-]")


def normalise_e164(value: str) -> str:
    """Accept common formatting ('+1 (555) 010-9999'), return strict E.164."""
    compact = _SEPARATORS.sub("", value)
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _E164.match(compact):
        raise ValueError("not a plausible E.164 number (expected + and 7 to 15 digits)")
    return compact


E164 = Annotated[
    str,
    Field(
        max_length=32,
        description="E.164 (+ and 7 to 15 digits, the first not 0); spaces, dots, dashes and "
        "parentheses are ignored, and a leading 00 is read as +",
        examples=["+12025550123"],
    ),
    AfterValidator(normalise_e164),
]


class Strict(BaseModel):
    """Request bodies and query strings: unknown fields refused.

    Bodies read numbers and booleans strictly (StrictInt, StrictFloat, StrictBool): true is
    not a number of seconds, 1 and "yes" are not true, "5" is not 5, as their schema says.
    Query models keep plain types: a query string carries only text."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# A date, then a time: what a "date-time" string starts with (RFC 3339).
_ISO_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")


def _text_or_datetime(value: Any) -> Any:
    # pydantic would read a number, or a string of one ("0.5", "4102444800"), as a Unix
    # time; the schema says an ISO-8601 string (the fuzzer's find: GET /stats?to=0.5).
    if isinstance(value, datetime) or (isinstance(value, str) and _ISO_DATE_TIME.match(value)):
        return value
    raise ValueError("an ISO-8601 date and time is expected, e.g. 2025-01-31T12:00:00Z")


def _in_utc(value: datetime) -> datetime:
    """The same instant in UTC (without an offset: already UTC). One that UTC cannot hold
    (9999-12-31T23:00:00-02:00 is in year 10000) is refused: it was a 500 further on."""
    try:
        return value.astimezone(UTC) if value.tzinfo is not None else value.replace(tzinfo=UTC)
    except OverflowError:
        raise ValueError("a date and time between years 1 and 9999 in UTC is expected") from None


Instant = Annotated[AwareDatetime, BeforeValidator(_text_or_datetime), AfterValidator(_in_utc)]

# A query string's date and time: ISO 8601 as for bodies, but one without an offset is
# read as UTC (the dashboard's datetime-local fields send none).
QueryInstant = Annotated[
    datetime,
    BeforeValidator(_text_or_datetime),
    AfterValidator(_in_utc),
    Field(description="ISO 8601; without an offset: UTC"),
]


def _absent() -> None:
    return None


def unchanged_if_absent(**constraints: Any) -> Any:
    """A PATCH field that cannot be null: absent leaves it as it is, null is refused (422).
    Its default (None, never validated) comes from a factory, which keeps it out of the
    schema: that gives only the field's real type."""
    return Field(default_factory=_absent, **constraints)


def one_of(*names: str) -> dict[str, Any]:
    """JSON Schema for "exactly one of these fields, not null" (null counts as absent)."""
    return {
        "oneOf": [
            {
                "required": [name],
                "properties": {
                    name: {"not": {"type": "null"}},
                    **{other: {"type": "null"} for other in names if other != name},
                },
            }
            for name in names
        ]
    }


def not_both(a: str, b: str) -> dict[str, Any]:
    """JSON Schema for "not both of these fields, not null"."""
    both = {x: {"not": {"type": "null"}} for x in (a, b)}
    return {"not": {"required": [a, b], "properties": both}}


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail


# The errors any endpoint with a body can answer: bad JSON, credentials, scope, size,
# validation. Endpoints add their own (404, 409, 429) next to these.
BODY_ERRORS: dict[int, type[BaseModel] | None] = {
    400: ErrorOut,
    401: ErrorOut,
    403: ErrorOut,
    413: ErrorOut,
    422: ErrorOut,
}


# -- messages ---------------------------------------------------------------------------


def _small_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is not None and len(json.dumps(value)) > 4096:
        raise ValueError("metadata must serialise to at most 4096 bytes of JSON")
    return value


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


HttpUrl = Annotated[
    str,
    Field(
        min_length=8,
        max_length=2048,
        json_schema_extra={"format": "uri"},
        description="an absolute http:// or https:// URL with a host",
    ),
    AfterValidator(_http_url),
]


Recipient = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="phone number; stored as E.164 (+ and 7 to 15 digits). Spaces, dots, "
        "dashes and parentheses are ignored; a national number needs SMSGW_DEFAULT_REGION. "
        "Refused with invalid_number, missing_region or not_mobile (a number that cannot "
        "receive SMS)",
        examples=["+12025550123"],
    ),
]

# A template's values: text or numbers (not booleans: true would be written as "True").
Variables = dict[str, StrictStr | StrictInt | StrictFloat]


class DispatchIn(Strict):
    """Exactly one of message and template_id; variables only with template_id; ttl or
    expires_at, not both."""

    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                one_of("message", "template_id"),
                not_both("ttl", "expires_at"),
                {
                    "if": {
                        "required": ["variables"],
                        "properties": {"variables": {"type": "object"}},
                    },
                    "then": {
                        "required": ["template_id"],
                        "properties": {"template_id": {"type": "string"}},
                    },
                },
            ]
        }
    )

    to: Recipient
    message: str | None = Field(default=None, min_length=1, max_length=1600)
    template_id: str | None = Field(default=None, max_length=64)
    variables: Variables | None = Field(
        default=None, description="values for the template's {{placeholders}}"
    )
    smart_encoding: StrictBool = Field(
        default=False, description="replace look-alike characters so the text stays GSM-7"
    )
    wait: StrictBool = Field(default=True, description="false: return 202 at once")
    timeout: StrictFloat | None = Field(
        default=None, gt=0, le=60, description="seconds to wait (default: the hub's deadline)"
    )
    ttl: StrictFloat | None = Field(
        default=None, gt=0, le=7 * 24 * 3600, description="seconds before an unsent message expires"
    )
    expires_at: Instant | None = Field(default=None, description="absolute expiry (instead of ttl)")
    send_at: Instant | None = Field(
        default=None, description="schedule: not sent before this time (returns 202)"
    )
    priority: StrictInt = Field(
        default=0, ge=-100, le=100, description="higher leaves the outbox first"
    )
    custom_id: str | None = Field(default=None, min_length=1, max_length=100)
    metadata: Annotated[dict[str, Any] | None, AfterValidator(_small_metadata)] = Field(
        default=None, description="free JSON object, stored and returned (at most 4 KiB)"
    )
    callback_url: HttpUrl | None = Field(
        default=None,
        description="this message's status events are also POSTed here, signed with the "
        "hub's callback secret (GET /webhooks/callback-secret)",
    )
    route: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="send through this route (a provider, docs/routes.md), never a phone",
    )
    sms_type: Literal["otp", "transactional", "promotional", "alert", "marketing"] | None = Field(
        default=None, description="what the message is: route policies may filter on it"
    )

    @model_validator(mode="after")
    def _consistent(self) -> DispatchIn:
        if self.ttl is not None and self.expires_at is not None:
            raise ValueError("give ttl or expires_at, not both")
        if (self.message is None) == (self.template_id is None):
            raise ValueError("give either message or template_id")
        if self.variables is not None and self.template_id is None:
            raise ValueError("variables need a template_id")
        return self


class SendIn(DispatchIn):
    device_id: str = Field(min_length=1, max_length=64)
    sim_slot: StrictInt | None = Field(default=None, ge=0, le=7)


class AttemptOut(BaseModel):
    attempt: int
    device_id: str
    offered_at: datetime
    accepted_at: datetime | None
    ended_at: datetime | None
    outcome: str | None
    error_code: str | None
    error: str | None

    @classmethod
    def of(cls, a: Attempt) -> AttemptOut:
        return cls(
            attempt=a.attempt,
            device_id=a.device_id,
            offered_at=a.offered_at,
            accepted_at=a.accepted_at,
            ended_at=a.ended_at,
            outcome=a.outcome,
            error_code=a.error_code,
            error=a.error,
        )


class DispatchPending(BaseModel):
    """202: the message is stored and stays in the outbox; poll GET /sms/{id}."""

    message_id: str
    status: Status
    encoding: str | None = None
    segments: int | None = None


class DispatchOut(DispatchPending):
    """200: the radio's result is known."""

    device_id: str | None
    attempts: int
    error: str | None


class MessageOut(BaseModel):
    id: str
    device_id: str | None
    recipient: str
    body: str
    status: Status
    error: str | None
    error_code: str | None
    encoding: str | None
    segments: int
    created_at: datetime
    queued_at: datetime | None
    sent_at: datetime | None
    delivered_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    expires_at: datetime
    send_at: datetime | None
    priority: int
    custom_id: str | None
    metadata: dict[str, Any] | None
    callback_url: str | None = None
    batch_id: str | None = Field(
        default=None, description="its batch, or its message of SMSGate's API (to many)"
    )
    data_port: int | None = Field(
        default=None, description="a data SMS to this port: body is its base64 payload"
    )
    encrypted: bool = Field(default=False, description="text and recipient encrypted by the caller")
    sms_type: str | None = None
    route_id: str | None = Field(
        default=None, description="the route (not a phone) that owns it, or it is bound to"
    )
    route: str | None = Field(default=None, description="that route's name")
    route_message_id: str | None = Field(default=None, description="the provider's id")
    cost: float | None = None
    currency: str | None = None
    attempts: list[AttemptOut] | None = None

    @classmethod
    def of(cls, m: Message, *, attempts: bool = False) -> MessageOut:
        # While PENDING, device_id is only the phone it is on offer to: not an owner.
        owner = m.device_id if m.status is not Status.PENDING else None
        return cls(
            id=m.id,
            device_id=owner,
            recipient=m.recipient,
            body=REDACTED if m.sensitive else m.body,
            status=m.status,
            error=m.error,
            error_code=m.error_code,
            encoding=m.encoding,
            segments=m.parts,
            created_at=m.created_at,
            queued_at=m.queued_at,
            sent_at=m.sent_at,
            delivered_at=m.delivered_at,
            failed_at=m.failed_at,
            cancelled_at=m.cancelled_at,
            expires_at=m.expires_at,
            send_at=m.send_at,
            priority=m.priority,
            custom_id=m.custom_id,
            metadata=m.metadata,
            callback_url=m.callback_url,
            batch_id=m.batch_id,
            data_port=m.data_port,
            encrypted=m.encrypted,
            sms_type=m.sms_type,
            route_id=m.route_id,
            route_message_id=m.route_message_id,
            cost=m.cost,
            currency=m.currency,
            attempts=[AttemptOut.of(a) for a in m.attempts] if attempts else None,
        )


REDACTED = "[one-time code: not shown]"


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class ListQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)
    since: QueryInstant | None = None
    device_id: str | None = Field(default=None, max_length=64)


class MessageQuery(ListQuery):
    status: Status | None = None
    custom_id: str | None = Field(default=None, max_length=100)
    recipient: str | None = Field(default=None, max_length=32, description="E.164 or national")


class InboundQuery(ListQuery):
    sender: E164 | None = Field(default=None, alias="from")


class InboundOut(BaseModel):
    id: str
    device_id: str
    local_id: str
    sender: str = Field(serialization_alias="from")
    body: str
    sim_slot: int | None
    received_at: datetime
    created_at: datetime

    @classmethod
    def of(cls, i: Inbound) -> InboundOut:
        return cls(
            id=i.id,
            device_id=i.device_id,
            local_id=i.local_id,
            sender=i.sender,
            body=i.body,
            sim_slot=i.sim_slot,
            received_at=i.received_at,
            created_at=i.created_at,
        )


class InboundPage(BaseModel):
    items: list[InboundOut]
    next_cursor: str | None


# -- devices ----------------------------------------------------------------------------


class SimIn(Strict):
    slot: StrictInt = Field(ge=0, le=7)
    carrier: str | None = Field(default=None, max_length=64)
    number: str | None = Field(default=None, max_length=32)


class EnrollmentCodeIn(Strict):
    ttl_seconds: StrictFloat | None = Field(
        default=None,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds the code is valid (default: SMSGW_ENROLLMENT_CODE_TTL)",
    )


class EnrollmentCodeOut(BaseModel):
    code: str
    expires_at: datetime
    install: list[str] = Field(
        description="on the phone or modem box: download the agent, then enroll it "
        "(docs/android.md); then `python3 smsgw-agent.pyz run`"
    )


class RegisterIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    hardware_id: str = Field(min_length=1, max_length=128)
    sims: list[SimIn] = Field(default_factory=list, max_length=8)
    fcm_token: str | None = Field(default=None, max_length=4096)
    enrollment_code: str | None = Field(default=None, max_length=32)


class RegisterOut(BaseModel):
    device_id: str
    device_token: str
    ws_url: str


class DeviceOut(BaseModel):
    id: str
    name: str
    kind: Literal["agent", "app"] = Field(
        description="agent: smsgw-agent on a WebSocket; app: the stock SMS Gateway app"
    )
    hardware_id: str
    online: bool
    enabled: bool
    battery: int | None
    charging: bool | None
    signal: int | None
    network: str | None
    app_version: str | None
    last_seen: datetime | None
    sent_today: int
    daily_quota: int
    in_flight: int
    sims: list[dict[str, Any]]
    created_at: datetime

    @classmethod
    def of(cls, d: Device, *, live: Any, default_quota: int, today: str) -> DeviceOut:
        """``live`` is the registry's LiveDevice when the phone is connected."""
        if live is not None:
            # The app reports no battery or signal: what routing assumes is not shown.
            reports = d.kind == "agent"
            return cls(
                id=d.id,
                name=d.name,
                kind="agent" if reports else "app",
                hardware_id=d.hardware_id,
                online=True,
                enabled=live.enabled,
                battery=live.battery if reports else None,
                charging=live.charging if reports else None,
                signal=live.signal if reports else None,
                network=live.network if reports else None,
                app_version=d.app_version,
                last_seen=live.last_seen,
                sent_today=live.sent_today,
                daily_quota=live.daily_quota,
                in_flight=live.in_flight,
                sims=live.sims,
                created_at=d.created_at,
            )
        return cls(
            id=d.id,
            name=d.name,
            kind="app" if d.kind == "app" else "agent",
            hardware_id=d.hardware_id,
            online=False,
            enabled=d.enabled,
            battery=d.battery,
            charging=d.charging,
            signal=d.signal,
            network=d.network,
            app_version=d.app_version,
            last_seen=d.last_seen_at,
            sent_today=d.sent_today if d.sent_day == today else 0,
            daily_quota=d.daily_quota if d.daily_quota is not None else default_quota,
            in_flight=0,
            sims=d.sims,
            created_at=d.created_at,
        )


class AppTokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=100)
    ttl_seconds: StrictInt | None = Field(
        default=None, ge=60, le=366 * 86400, description="unset: valid until revoked"
    )


class AppTokenInfo(BaseModel):
    id: str
    name: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class AppTokenOut(BaseModel):
    id: str
    token: str = Field(description="shown only now: the app's Private Token setting")
    name: str | None
    expires_at: datetime | None
    server_url: str = Field(description="the app's API URL setting")


class AppTokenList(BaseModel):
    items: list[AppTokenInfo]


class DeviceList(BaseModel):
    items: list[DeviceOut]


class DevicePatch(Strict):
    """Absent fields are left as they are; null clears daily_quota and fcm_token."""

    name: str = unchanged_if_absent(min_length=1, max_length=100)
    enabled: StrictBool = unchanged_if_absent()
    daily_quota: StrictInt | None = Field(
        default=None, ge=0, le=100_000, description="null: back to SMSGW_DEFAULT_DAILY_QUOTA"
    )
    fcm_token: str | None = Field(default=None, max_length=4096, description="null: cleared")


class HeartbeatIn(Strict):
    battery: StrictInt = Field(ge=0, le=100)
    charging: StrictBool = False
    signal: StrictInt = Field(ge=0, le=4)
    network: str | None = Field(default=None, max_length=32)


class HeartbeatOut(BaseModel):
    ok: bool
    pending_messages: int


# -- keys and health --------------------------------------------------------------------


class KeyIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    # Checked by the handler (422 invalid_scopes); the schema lists the names it takes.
    scopes: list[str] = Field(
        min_length=1,
        max_length=3,
        json_schema_extra={"items": {"type": "string", "enum": ["send", "read", "admin"]}},
        description="admin implies the others",
    )
    # Bounded: the columns are 32-bit (a larger number was a 500 from the database).
    rate_limit_rpm: StrictInt | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="requests per minute (default: SMSGW_KEY_RATE_LIMIT_RPM)",
    )
    daily_message_limit: StrictInt | None = Field(
        default=None,
        ge=1,
        le=100_000_000,
        description="messages per day (default: SMSGW_KEY_DAILY_MESSAGES)",
    )


class KeyOut(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None = None
    rate_limit_rpm: int | None = None
    daily_message_limit: int | None = None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret; shown only in this response")


class KeyList(BaseModel):
    items: list[KeyOut]


class HealthOut(BaseModel):
    status: str


# -- preview, phone numbers -----------------------------------------------------------


class PreviewIn(Strict):
    message: str = Field(min_length=1, max_length=1600)
    smart_encoding: StrictBool = False


class PreviewOut(BaseModel):
    encoding: str
    segments: int
    characters: int
    units: int = Field(description="septets (GSM-7) or UTF-16 code units (UCS-2)")
    per_segment: int
    remaining: int = Field(description="units left in the last segment")
    text: str = Field(description="the text that would be sent (after smart encoding)")
    replaced: list[str]
    parts: list[str]


class PhoneOut(BaseModel):
    input: str
    valid: bool
    e164: str
    country: str | None
    country_code: int
    number_type: str
    national: str
    international: str
    can_receive_sms: bool


# -- templates ------------------------------------------------------------------------


class TemplateIn(Strict):
    name: str = Field(min_length=1, max_length=100)
    body: str = Field(min_length=1, max_length=1600)
    category: str | None = Field(default=None, max_length=50)
    active: StrictBool = True


class TemplatePatch(Strict):
    """Absent fields are left as they are; null clears category."""

    name: str = unchanged_if_absent(min_length=1, max_length=100)
    body: str = unchanged_if_absent(min_length=1, max_length=1600)
    category: str | None = Field(default=None, max_length=50, description="null: cleared")
    active: StrictBool = unchanged_if_absent()


class TemplateOut(BaseModel):
    id: str
    name: str
    body: str
    category: str | None
    active: bool
    variables: list[str]
    usage_count: int
    created_at: datetime
    updated_at: datetime


class TemplateList(BaseModel):
    items: list[TemplateOut]


class TemplateQuery(Strict):
    category: str | None = Field(default=None, max_length=50)
    active: bool | None = None


# -- OTP ------------------------------------------------------------------------------


class OtpSendIn(Strict):
    to: Recipient
    length: StrictInt = Field(default=6, ge=4, le=10)
    expiry_seconds: StrictInt = Field(default=300, ge=30, le=3600)
    alphanumeric: StrictBool = False
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="SMS text with {code} (required) and optionally {minutes}",
    )

    @model_validator(mode="after")
    def _has_code(self) -> OtpSendIn:
        if self.template is not None and "{code}" not in self.template:
            raise ValueError("template must contain {code}")
        return self


class OtpSent(BaseModel):
    otp_id: str
    expires_at: datetime
    message_id: str


class OtpVerifyIn(Strict):
    """Exactly one of otp_id and to."""

    model_config = ConfigDict(json_schema_extra=one_of("otp_id", "to"))

    otp_id: str | None = Field(default=None, max_length=64)
    to: Recipient | None = None
    code: str = Field(min_length=1, max_length=32)

    @model_validator(mode="after")
    def _one_target(self) -> OtpVerifyIn:
        if (self.otp_id is None) == (self.to is None):
            raise ValueError("give either otp_id or to")
        return self


class OtpVerified(BaseModel):
    verified: bool
    attempts_remaining: int
    reason: str | None = Field(
        default=None,
        description="why not: wrong_code, expired, used, superseded, too_many_attempts",
    )


# -- opt-out --------------------------------------------------------------------------


class OptOutIn(Strict):
    number: Recipient
    reason: str | None = Field(default=None, max_length=200)


class OptOutOut(BaseModel):
    number: str
    source: str
    reason: str | None
    created_at: datetime


class OptOutPage(BaseModel):
    items: list[OptOutOut]
    next_cursor: str | None


class OptOutQuery(Strict):
    limit: int = Field(default=100, ge=1, le=1000)
    cursor: str | None = Field(default=None, max_length=64)


# -- webhooks ------------------------------------------------------------------------

EventName = Literal[
    "*",
    "message.queued",
    "message.sent",
    "message.delivered",
    "message.failed",
    "message.cancelled",
    "sms.received",
    "device.online",
    "device.offline",
    "device.battery_low",
    "otp.verified",
]


class WebhookIn(Strict):
    url: HttpUrl
    events: list[EventName] = Field(min_length=1, max_length=20, description='"*": every event')
    description: str | None = Field(default=None, max_length=500)
    enabled: StrictBool = True


class WebhookPatch(Strict):
    """Absent fields are left as they are; null clears description."""

    url: HttpUrl = unchanged_if_absent()
    events: list[EventName] = unchanged_if_absent(min_length=1, max_length=20)
    description: str | None = Field(default=None, max_length=500, description="null: cleared")
    enabled: StrictBool = unchanged_if_absent()


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    failing_since: datetime | None
    disabled_at: datetime | None = Field(description="set when the hub disabled it")
    disabled_reason: str | None
    previous_secret_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    format: str = Field(
        default="smsgw",
        description="smsgate: created through SMSGate's API, posted in its envelope "
        "(docs/smsgate-api.md)",
    )


class WebhookCreated(WebhookOut):
    secret: str = Field(description="signing secret: shown only now")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class RotateIn(Strict):
    grace_seconds: StrictFloat | None = Field(
        default=None, ge=0, le=30 * 86400, description="how long the old secret still signs"
    )


class SecretOut(BaseModel):
    secret: str
    previous_secret_expires_at: datetime | None = None


class DeliveryAttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryOut(BaseModel):
    id: str
    event_id: str
    event_type: str
    webhook_id: str | None
    url: str
    status: Literal["pending", "succeeded", "dead"]
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any]
    history: list[DeliveryAttemptOut]


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class DeliveryQuery(Strict):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200)
    status: Literal["pending", "succeeded", "dead"] | None = None
