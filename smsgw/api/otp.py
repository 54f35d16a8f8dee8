"""One-time passwords: send a code by SMS, verify it.

Codes come from ``secrets`` and are stored only as HMAC-SHA256(hub secret, id:code); they
are compared in constant time and never logged or returned (the OTP message's body is
redacted in every API response). One active code per number, at most
``SMSGW_OTP_MAX_ATTEMPTS`` tries per code, a resend cooldown and an hourly cap per number,
and at most ``SMSGW_OTP_MAX_FAILURES_PER_HOUR`` wrong codes per number across its codes.
OTP messages leave the outbox ahead of ordinary traffic.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from datetime import timedelta

from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.messages import recipient_e164, segmented, sendable
from smsgw.api.models import BODY_ERRORS, ErrorOut, OtpSendIn, OtpSent, OtpVerified, OtpVerifyIn
from smsgw.auth import Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError, over_limit
from smsgw.store import Message, Otp, Status

DEFAULT_TEXT = "Your verification code is {code}. It expires in {minutes} minutes."
_DIGITS = "0123456789"
_ALNUM = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read aloud and typed by people


def code_hash(secret: str, otp_id: str, code: str) -> str:
    return hmac.new(
        secret.encode(), f"{otp_id}:{code.strip().upper()}".encode(), hashlib.sha256
    ).hexdigest()


@api.route(
    "POST",
    "/otp/send",
    tag="otp",
    scope=Scope.SEND,
    body=OtpSendIn,
    summary="Send a one-time code by SMS",
    responses={201: OtpSent, **BODY_ERRORS, 429: ErrorOut},
    idempotent=True,
)
async def send_otp(call: Call) -> Reply:
    body: OtpSendIn = call.body
    hub, settings = call.hub, call.hub.settings
    to = await sendable(hub, body.to, call.principal)
    now = utcnow()
    recent = await hub.store.otp_sends_since(to, now - timedelta(hours=1))
    if recent:
        since_last = (now - recent[0]).total_seconds()
        if since_last < settings.otp_resend_cooldown:
            wait = math.ceil(settings.otp_resend_cooldown - since_last)
            raise ApiError(
                429,
                "otp_cooldown",
                f"a code was sent to {to} {since_last:.0f} s ago",
                headers={"Retry-After": str(wait)},
            )
    if len(recent) >= settings.otp_max_per_hour:
        wait = math.ceil((recent[-1] + timedelta(hours=1) - now).total_seconds())
        raise ApiError(
            429,
            "otp_rate_limited",
            f"at most {settings.otp_max_per_hour} codes per number per hour",
            headers={
                "Retry-After": str(max(1, wait)),
                "X-RateLimit-Limit": str(settings.otp_max_per_hour),
            },
        )
    alphabet = _ALNUM if body.alphanumeric else _DIGITS
    code = "".join(secrets.choice(alphabet) for _ in range(body.length))
    minutes = max(1, body.expiry_seconds // 60)
    text = (
        (body.template or DEFAULT_TEXT).replace("{code}", code).replace("{minutes}", str(minutes))
    )
    seg = segmented(hub, text, smart=True)
    expires = now + timedelta(seconds=body.expiry_seconds)
    otp_id = new_id()
    message = Message(
        id=new_id(),
        recipient=to,
        body=seg.text,
        status=Status.PENDING,
        created_at=now,
        updated_at=now,
        expires_at=expires,
        parts=seg.segments,
        encoding=seg.encoding,
        priority=settings.otp_priority,
        sensitive=True,
        sms_type="otp",  # a route policy may take only these (docs/routes.md)
    )
    otp = Otp(
        id=otp_id,
        recipient=to,
        code_hash=code_hash(hub.otp_secret, otp_id, code),
        message_id=message.id,
        attempts=0,
        max_attempts=settings.otp_max_attempts,
        created_at=now,
        expires_at=expires,
    )
    await hub.store.create_otp(otp, message)
    hub.dispatcher.wake(due=True)
    return Reply(OtpSent(otp_id=otp_id, expires_at=expires, message_id=message.id), 201)


@api.route(
    "POST",
    "/otp/verify",
    tag="otp",
    scope=Scope.SEND,
    body=OtpVerifyIn,
    summary="Check a code (by otp_id, or the latest code sent to a number)",
    responses={200: OtpVerified, 404: ErrorOut, **BODY_ERRORS, 429: ErrorOut},
)
async def verify_otp(call: Call) -> OtpVerified:
    body: OtpVerifyIn = call.body
    hub, now = call.hub, utcnow()
    if body.otp_id is not None:
        otp = await hub.store.get_otp(body.otp_id)
    else:
        assert body.to is not None
        otp = await hub.store.latest_otp(recipient_e164(hub, body.to))
    if otp is None:
        raise ApiError(404, "otp_not_found", "no such code (or it was cleaned up after expiry)")
    # The per-number limit across codes: each attempt takes a place in the number's window
    # before the code is checked (so concurrent guesses cannot all slip under the limit),
    # and gives it back unless it turns out a wrong code.
    failures, limit = hub.limits.otp_failures, hub.settings.otp_max_failures_per_hour
    stamp = time.monotonic()
    wait = failures.acquire(otp.recipient, limit, stamp)
    if wait is not None:
        message = f"more than {limit} failed verifications for this number within an hour"
        raise over_limit("otp_verify_rate_limited", message, wait, f"{limit}/hour")
    wrong = False
    try:
        correct = hmac.compare_digest(code_hash(hub.otp_secret, otp.id, body.code), otp.code_hash)
        updated = await hub.store.record_otp_attempt(otp.id, correct, now)
        if updated is None:
            current = await hub.store.get_otp(otp.id) or otp
            reason = _why_dead(current, now)
            return OtpVerified(verified=False, attempts_remaining=0, reason=reason)
        remaining = updated.max_attempts - updated.attempts
        if updated.verified_at is not None:
            return OtpVerified(verified=True, attempts_remaining=remaining)
        wrong = True
        return OtpVerified(verified=False, attempts_remaining=remaining, reason="wrong_code")
    finally:
        if not wrong:
            failures.release(otp.recipient, stamp)


def _why_dead(otp: Otp, now: object) -> str:
    if otp.verified_at is not None:
        return "used"
    if otp.superseded_at is not None:
        return "superseded"
    if otp.attempts >= otp.max_attempts:
        return "too_many_attempts"
    return "expired"
