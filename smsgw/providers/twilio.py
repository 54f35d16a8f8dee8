"""Twilio (docs/routes.md): Programmable Messaging through the official SDK, asynchronously
(``AsyncTwilioHttpClient``, with no retries of its own: a retried POST could send twice).

- Send: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` with To, From, Body and
  StatusCallback (the route's callback URL); the answer's ``sid`` is the message's id at
  Twilio. ``api_base_url`` replaces ``https://api.twilio.com`` (regional edge, proxy, tests).
- Refusals: Twilio's error code is kept (21211 invalid To, 21610 unsubscribed, ...).
  HTTP 429 or 5xx, or a connection that could not be opened, are transient (the message
  was not taken): tried again later. Any other failure after the request left (a timeout,
  a reset) may or may not have sent it: ``route_unknown``, not retried (at most once).
- Callbacks: form POSTs to StatusCallback, signed with ``X-Twilio-Signature`` (HMAC-SHA1
  of the URL and sorted form parameters under the auth token), checked with the SDK's
  ``RequestValidator``. They carry no price: the cost is the route's configured price.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from smsgw.providers import Accepted, Refused, Report, segment_price
from smsgw.store.records import Message, Route, Status

log = logging.getLogger("smsgw.routes")

SIGNATURE_HEADER = "X-Twilio-Signature"
TIMEOUT = 15.0
# MessageStatus -> what it makes of the message (None: nothing yet).
STATUSES: dict[str, Status | None] = {
    "accepted": None,
    "scheduled": None,
    "queued": None,
    "sending": None,
    "sent": Status.SENT,
    "delivered": Status.DELIVERED,
    "read": Status.DELIVERED,
    "undelivered": Status.FAILED,
    "failed": Status.FAILED,
    "canceled": Status.FAILED,
}
THROTTLED = 20429


def _retryable(status: int, code: int | None) -> bool:
    return status == 429 or status >= 500 or code == THROTTLED


class TwilioProvider:
    async def send(self, message: Message, route: Route, callback_url: str) -> Accepted | Refused:
        import aiohttp
        from twilio.base.exceptions import TwilioRestException
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        creds = route.credentials
        http = AsyncTwilioHttpClient(timeout=TIMEOUT)
        client = Client(creds["account_sid"], creds["auth_token"], http_client=http)
        if route.api_base_url:
            client.api.base_url = route.api_base_url.rstrip("/")
        try:
            sent = await client.messages.create_async(
                to=message.recipient,
                from_=route.sender,
                body=message.body,
                status_callback=callback_url,
            )
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            return Refused(
                str(code if code is not None else exc.status),
                str(exc.msg)[:500],
                retryable=_retryable(int(exc.status), code),
            )
        except aiohttp.ClientConnectorError as exc:  # never reached Twilio: safe to retry
            return Refused("provider_unreachable", str(exc)[:500], retryable=True)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The request may have reached Twilio: at most once, no retry.
            return Refused("route_unknown", f"{type(exc).__name__}: {exc}"[:500])
        finally:
            await http.close()
        segments = int(sent.num_segments) if sent.num_segments else None
        return Accepted(
            str(sent.sid),
            cost=segment_price(message, route, segments),
            currency=route.currency or (sent.price_unit or None),
        )

    def verify_callback(
        self, route: Route, url: str, params: Mapping[str, list[str]], signature: str | None
    ) -> bool:
        from twilio.request_validator import RequestValidator

        if not signature:
            return False
        # Twilio sends each parameter once; the validator takes a flat mapping.
        flat = {k: v[0] for k, v in params.items() if v}
        validator = RequestValidator(route.credentials["auth_token"])
        return bool(validator.validate(url, flat, signature))

    def parse_callback(self, params: Mapping[str, list[str]]) -> Report | None:
        sid = (params.get("MessageSid") or params.get("SmsSid") or [""])[0]
        status = (params.get("MessageStatus") or params.get("SmsStatus") or [""])[0]
        if not sid or status not in STATUSES:
            return None
        code = (params.get("ErrorCode") or [""])[0] or None
        return Report(sid, STATUSES[status], code)
