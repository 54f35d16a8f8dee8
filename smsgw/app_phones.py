"""Phones that run the stock "SMS Gateway for Android" app: what the hub does for them.

Registration with an admin's app token (or an enrollment code), the pull that is the
phone's accept, its state reports, the settings and webhook list it syncs, and the
received SMS it posts back as signed webhooks (docs/smsgate-app.md). Transport-free:
``smsgw/api/mobile.py`` maps HTTP onto these, ``app_session.py`` is the phone's stream.
Every rule about a message (who owns it, which status may follow which) stays in the
store; this module only translates the app's words into the store's operations.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from smsgw.app_session import AppSession
from smsgw.appwire import (
    PREFIX,
    REPORTED_STATUS,
    AppState,
    Envelope,
    PushEvent,
    ReceivedSms,
    RegisterRequest,
    StateReport,
    failure_code,
    mobile_message,
    parse_app_time,
    signature_valid,
)
from smsgw.auth import DEVICE_PREFIX, hash_secret, lookup_prefix, new_credential, normalise_code
from smsgw.clock import new_id, utcnow
from smsgw.connection import opt_keyword
from smsgw.errors import ApiError
from smsgw.store import AppToken, Device, Inbound, Status

if TYPE_CHECKING:
    from smsgw.hub import Hub

log = logging.getLogger("smsgw.app")

APP_TOKEN_PREFIX = "apt_"
# The messages one pull hands over at most, as the app's own server does (§3.4).
PULL_LIMIT = 100
# A phone's "last seen" is written at most this often from its API calls.
SEEN_INTERVAL = 60.0
RECEIVED_SMS_WEBHOOK = "smsgw-sms-received"


@dataclass(frozen=True, slots=True)
class Issued:
    token: str
    record: AppToken


async def issue_app_token(
    hub: Hub, name: str | None, ttl_seconds: int | None, now: datetime
) -> Issued:
    """A registration token for the app; only its hash is kept, the token is shown once."""
    token, prefix = new_credential(APP_TOKEN_PREFIX)
    expires = now + timedelta(seconds=ttl_seconds) if ttl_seconds is not None else None
    record = AppToken(id=new_id(), name=name, prefix=prefix, created_at=now, expires_at=expires)
    await hub.store.create_app_token(record, hash_secret(token))
    return Issued(token, record)


class AppPhones:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self._seen: dict[str, float] = {}

    # -- the phone's credentials ------------------------------------------------------

    def _mac(self, purpose: str, device_id: str) -> str:
        key = self.hub.app_secret.encode()
        return hmac.new(key, f"{purpose}:{device_id}".encode(), hashlib.sha256).hexdigest()[:32]

    def signing_key(self, device_id: str) -> str:
        """The key the phone signs its webhooks with, handed to it in ``GET /settings``."""
        return self._mac("sign", device_id)

    def hook_path(self, device_id: str) -> str:
        """The secret part of the phone's own receiving URL: names the phone, and only
        the hub can make it."""
        return f"{device_id}.{self._mac('hook', device_id)}"

    def hook_device(self, path: str) -> str | None:
        device_id, _, mac = path.partition(".")
        # Bytes: compare_digest raises on a str with non-ASCII characters (a path may hold
        # any), which answered 500 (found by tests/fuzz/test_mobile_fuzz.py).
        expected = self._mac("hook", device_id).encode()
        if not device_id or not hmac.compare_digest(mac.encode(errors="replace"), expected):
            return None
        return device_id

    async def admit(self, authorization: str, client: str | None) -> str | None:
        """Who may register (``POST /device``), checked before the body is read: an
        admin's app token (``Bearer``), or a single-use enrollment code (``Code``), whose
        hash is returned to be consumed with the registration. Never open: anything else
        is a 401. ``client``: the caller's address, which failures are counted under."""
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "code" and value:
            return hash_secret(normalise_code(value))
        if scheme == "bearer" and value:
            now = utcnow()
            prefix = lookup_prefix(value, APP_TOKEN_PREFIX)
            found = await self.hub.store.app_token_by_prefix(prefix, now) if prefix else None
            if found is not None and hmac.compare_digest(hash_secret(value), found[1]):
                await self.hub.store.app_token_used(found[0].id, now)
                return None
            refusal = ApiError(401, "unauthorized", "unknown, expired or revoked app token")
            raise self.hub.auth.failures.refuse(client, refusal)
        raise ApiError(401, "unauthorized", "an app registration token is required")

    async def register(
        self, code_hash: str | None, body: RegisterRequest, client: str | None
    ) -> tuple[Device, str]:
        """A new app phone, admitted by ``admit``."""
        now = utcnow()
        device_id = new_id()
        token, prefix = new_credential(DEVICE_PREFIX)
        result = await self.hub.store.register_device(
            device_id=device_id,
            name=body.name,
            hardware_id=f"app:{device_id}",  # the app has no stable id: each registration is new
            sims=[s.as_sim() for s in body.sim_cards],
            fcm_token=body.push_token,
            token_prefix=prefix,
            token_hash=hash_secret(token),
            now=now,
            enrollment_code_hash=code_hash,
            kind="app",
        )
        if result is None:
            refusal = ApiError(
                401, "invalid_enrollment_code", "enrollment code unknown, used or expired"
            )
            raise self.hub.auth.failures.refuse(client, refusal)
        log.info("app phone %s registered (%s)", result[0].id, body.name)
        return result[0], token

    async def device(self, authorization: str | None, client: str | None) -> Device:
        """The app phone a device token names. Anything else is a 401, the one answer
        that makes the app register again (§3.2). A token that names no phone counts as
        a failed authentication of ``client``."""
        scheme, _, value = (authorization or "").partition(" ")
        presented = scheme.lower() == "bearer" and value.strip()
        device = await self.hub.auth.resolve_device(value.strip()) if presented else None
        if device is None or device.kind != "app":
            refusal = ApiError(401, "unauthorized", "unknown or revoked device token")
            if presented and device is None:
                raise self.hub.auth.failures.refuse(client, refusal)
            raise refusal  # no token, or an agent's (a phone's own, not a guess)
        await self.seen(device.id)
        return device

    async def seen(self, device_id: str) -> None:
        now = time.monotonic()
        if now - self._seen.get(device_id, 0.0) < SEEN_INTERVAL:
            return
        if len(self._seen) > 100_000:
            self._seen.clear()
        self._seen[device_id] = now
        live = self.hub.registry.get(device_id)
        if live is not None:
            live.touch()
        await self.hub.store.device_seen(device_id, utcnow())

    async def update(self, device: Device, push_token: str | None, sims: list[Any]) -> None:
        """``PATCH /device`` at every app start: its SIM cards and push token (absent: the
        app is not on FCM now)."""
        await self.hub.store.update_device(device.id, utcnow(), sims=sims, fcm_token=push_token)
        live = self.hub.registry.get(device.id)
        if live is not None:
            live.sims = sims

    # -- messages -------------------------------------------------------------------------

    async def pull(self, device: Device, *, lifo: bool) -> list[dict[str, Any]]:
        """``GET /message``: the phone takes what is on offer to it (its accept) and, with
        no stream open, what waits pinned to it; it gets everything it holds and has not
        yet taken in hand."""
        hub = self.hub
        live = hub.registry.get(device.id)
        pinned = 0
        if live is None:  # nobody offers a phone without a stream: its pull is the offer
            quota = (
                device.daily_quota
                if device.daily_quota is not None
                else hub.settings.default_daily_quota
            )
            sent = device.sent_today if device.sent_day == utcnow().date().isoformat() else 0
            pinned = max(0, min(hub.settings.max_in_flight, quota - sent)) if device.enabled else 0
        claimed, held = await hub.store.app_pull(
            device.id, utcnow(), pinned=pinned, limit=PULL_LIMIT
        )
        for message_id, attempt in claimed:
            hub.dispatcher.accepted(message_id, device.id, attempt, True)
            self._relay(device.id, "accepted", mid=message_id, attempt=attempt, owner=True)
        held.sort(key=lambda m: (-m.priority, m.created_at), reverse=lifo)
        return [mobile_message(m) for m in held]

    async def report(self, device: Device, reports: list[StateReport]) -> None:
        """``PATCH /message``: each report applied on its own. A report about a message the
        phone does not own, or one that would move it backwards, changes nothing."""
        hub, settings = self.hub, self.hub.settings
        for report in reports:
            msg = await hub.store.get_message(report.id)
            if msg is None or msg.device_id != device.id:
                continue
            state, error = report.state_of(msg.recipient)
            now = utcnow()
            if msg.processed_at is None and state is not AppState.PENDING:
                await hub.store.mark_processed(msg.id, device.id, now)
            target = REPORTED_STATUS[state]
            recipient = code = text = None
            attempt: int | None = None
            status: Status | None = None
            if target is Status.SENT:
                recipient = await hub.store.mark_sent(msg.id, device.id, now)
                status = Status.SENT if recipient else None
            elif target is Status.DELIVERED:
                ok = await hub.store.mark_delivered(msg.id, device.id, now)
                status = Status.DELIVERED if ok else None
            elif target is Status.FAILED:
                code, text = failure_code(state, error)
                attempt = msg.attempt
                status = await hub.store.mark_failed(
                    msg.id,
                    device.id,
                    attempt,
                    error_code=code,
                    error=text[:1000],
                    retryable=False,  # the phone may have transmitted part of it
                    now=now,
                    retry_at=None,
                    max_attempts=settings.max_attempts,
                )
            if status is None:
                continue  # a duplicate, or a state going backwards: nothing changed
            hub.metrics.reported(device.id, status, code)
            hub.dispatcher.reported(msg.id, device.id, status, code, text, recipient, attempt)
            self._relay(
                device.id,
                "reported",
                mid=msg.id,
                status=status.value,
                error_code=code,
                error=text,
                recipient=recipient,
                report_attempt=attempt,
            )

    def _relay(self, device_id: str, kind: str, **answer: Any) -> None:
        """With several nodes, the phone's stream may be on another one: it passes the
        answer on to the node that made the offer (``Registry.relay_answer``)."""
        self.hub.registry.relay_answer(device_id, {"as": kind, **answer})

    def request_export(self, device_id: str | None, request: dict[str, str]) -> int:
        """Ask the app phones streaming to this node (or only ``device_id``) to post again
        the SMS they received in a time range (``MessagesExportRequested``, §4.2); the
        receiver drops what it already has. Returns how many were asked."""
        asked = 0
        for live in self.hub.registry.local():
            session = live.session
            if isinstance(session, AppSession) and device_id in (None, live.device_id):
                session.push(PushEvent.MESSAGES_EXPORT_REQUESTED, request)
                asked += 1
        return asked

    # -- what the phone syncs ---------------------------------------------------------------

    def settings_for(self, device: Device) -> dict[str, Any]:
        """``GET /settings``: the key to sign webhooks with (so the hub can check them),
        and what the admin chose of the app's own settings; never ``gateway.*``."""
        webhooks: dict[str, Any] = {"signing_key": self.signing_key(device.id)}
        s = self.hub.settings
        if s.app_webhooks_internet_required is not None:
            webhooks["internet_required"] = s.app_webhooks_internet_required
        found: dict[str, Any] = {"webhooks": webhooks}
        if s.app_ping_interval is not None:
            found["ping"] = {"interval_seconds": s.app_ping_interval}
        return found

    def webhooks_for(self, device: Device, base_url: str) -> list[dict[str, Any]]:
        """``GET /webhooks``: the hub's own receiver for the SMS the phone receives."""
        url = f"{base_url.rstrip('/')}{PREFIX}/webhooks/{self.hook_path(device.id)}"
        return [
            {
                "id": RECEIVED_SMS_WEBHOOK,
                "deviceId": device.id,
                "url": url,
                "event": "sms:received",
            }
        ]

    async def receive(
        self,
        path: str,
        body: bytes,
        timestamp: str | None,
        signature: str | None,
        client: str | None,
    ) -> None:
        """A webhook the phone posted to its receiving URL: checked (the URL's secret,
        then the signature over the raw body), then a received SMS is stored once per
        envelope id. Raises ``ApiError``; returning means 2xx. A wrong URL or signature
        counts as a failed authentication of ``client``."""
        failures = self.hub.auth.failures
        device_id = self.hook_device(path)
        device = await self.hub.store.get_device(device_id) if device_id else None
        if device is None:
            raise failures.refuse(client, ApiError(401, "unauthorized", "unknown receiving URL"))
        if not timestamp or not signature:
            raise ApiError(401, "unauthorized", "X-Timestamp and X-Signature are required")
        if not signature_valid(self.signing_key(device.id), body, timestamp, signature):
            refusal = ApiError(401, "invalid_signature", "the signature does not match the body")
            raise failures.refuse(client, refusal)
        envelope = Envelope.model_validate_json(body)
        if envelope.event != "sms:received":
            return  # nothing else is asked for; a stale subscription gets its 2xx
        sms = ReceivedSms.model_validate(envelope.payload)
        sim = sms.sim_number - 1 if sms.sim_number else None
        stored = await self.hub.store.store_inbound(
            Inbound(
                id=new_id(),
                device_id=device.id,
                local_id=envelope.id,  # a retried envelope keeps its id: stored once
                sender=sms.from_number,
                body=sms.message,
                sim_slot=sim,
                received_at=parse_app_time(sms.received_at),
                created_at=utcnow(),
            )
        )
        if stored:
            await opt_keyword(self.hub, sms.from_number, sms.message)
        await self.seen(device.id)
