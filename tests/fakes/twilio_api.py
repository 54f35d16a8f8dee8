"""A stand-in for Twilio's Programmable Messaging API, written from Twilio's API reference
(not from the SDK): the SDK is pointed at it (``api_base_url``) by the tests.

- ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``: HTTP Basic auth AccountSid:
  AuthToken (else 401, code 20003), form fields To, From, Body, StatusCallback; an invalid
  To is 400 code 21211; the answer is 201 with the Message resource (``sid`` "SM" and 32
  hex digits, ``status`` "queued", ``num_segments`` a string, ``price`` null at creation).
  Errors have Twilio's shape: ``{"code", "message", "more_info", "status"}``.
- Status callbacks: form POSTs to the message's StatusCallback (MessageSid, SmsSid,
  MessageStatus, AccountSid, From, To, ApiVersion, ErrorCode when failed), signed with
  ``X-Twilio-Signature``: base64(HMAC-SHA1(auth token, URL + each parameter's name and
  value, sorted by name)), as Twilio documents it ("Webhooks security").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from smsgw.clock import utcnow
from tests.harness import free_socket, wait_for

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature as Twilio computes it."""
    data = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def _error(status: int, code: int, message: str) -> JSONResponse:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return JSONResponse(body, status_code=status)


@dataclass
class Sent:
    sid: str
    account_sid: str
    to: str
    from_: str
    body: str
    status_callback: str | None


@dataclass
class FakeTwilio:
    accounts: dict[str, str]  # AccountSid -> AuthToken
    auto_callbacks: bool = True  # "sent" then "delivered", signed, after each message
    refuse_numbers: set[str] = field(default_factory=set)  # answered 21211
    fail_next: list[int] = field(default_factory=list)  # HTTP statuses to answer first
    received: list[Sent] = field(default_factory=list)
    callbacks: list[tuple[str, int]] = field(default_factory=list)  # (status, hub's answer)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route(
                    "/2010-04-01/Accounts/{account}/Messages.json",
                    self._create,
                    methods=["POST"],
                )
            ]
        )

    async def start(self) -> FakeTwilio:
        sock = free_socket()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        self._tasks: set[asyncio.Task[None]] = set()
        await wait_for(lambda: self._server.started, what="fake twilio")
        return self

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 10)

    def _authorized(self, request: Request, account: str) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        token = self.accounts.get(user)
        return user == account and token is not None and hmac.compare_digest(token, password)

    async def _create(self, request: Request) -> Response:
        account = request.path_params["account"]
        if not self._authorized(request, account):
            return _error(401, 20003, "Authenticate")
        if self.fail_next:
            status = self.fail_next.pop(0)
            code = 20429 if status == 429 else 20500
            return _error(status, code, "Too Many Requests" if status == 429 else "Internal")
        # A form body (application/x-www-form-urlencoded), read without python-multipart.
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        to, from_, body = (
            str(form.get("To", "")),
            str(form.get("From", "")),
            str(form.get("Body", "")),
        )
        callback = form.get("StatusCallback")
        if not _E164.match(to) or to in self.refuse_numbers:
            return _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not body:
            return _error(400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        sent = Sent(sid, account, to, from_, body, str(callback) if callback else None)
        self.received.append(sent)
        now = format_datetime(utcnow())
        resource: dict[str, Any] = {
            "account_sid": account,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": now,
            "date_sent": None,
            "date_updated": now,
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": None,
            "num_media": "0",
            "num_segments": str(max(1, -(-len(body) // 153) if len(body) > 160 else 1)),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued",
            "subresource_uris": {
                "media": f"/2010-04-01/Accounts/{account}/Messages/{sid}/Media.json"
            },
            "to": to,
            "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        }
        if self.auto_callbacks and sent.status_callback:
            task = asyncio.create_task(self._report(sent, ["sent", "delivered"]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return JSONResponse(resource, status_code=201)

    def callback_params(
        self, sent: Sent, status: str, error_code: str | None = None
    ) -> dict[str, str]:
        params = {
            "AccountSid": sent.account_sid,
            "ApiVersion": "2010-04-01",
            "From": sent.from_,
            "MessageSid": sent.sid,
            "MessageStatus": status,
            "SmsSid": sent.sid,
            "SmsStatus": status,
            "To": sent.to,
        }
        if error_code is not None:
            params["ErrorCode"] = error_code
        return params

    async def callback(
        self, sent: Sent, status: str, error_code: str | None = None, *, sign: bool = True
    ) -> int:
        """POST one status callback for ``sent``, as Twilio would; the hub's status."""
        assert sent.status_callback is not None
        params = self.callback_params(sent, status, error_code)
        headers = {}
        if sign:
            token = self.accounts[sent.account_sid]
            headers["X-Twilio-Signature"] = twilio_signature(token, sent.status_callback, params)
        async with httpx.AsyncClient() as client:
            r = await client.post(sent.status_callback, data=params, headers=headers)
        self.callbacks.append((status, r.status_code))
        return r.status_code

    async def _report(self, sent: Sent, statuses: list[str]) -> None:
        await asyncio.sleep(0.05)
        for status in statuses:
            await self.callback(sent, status)
