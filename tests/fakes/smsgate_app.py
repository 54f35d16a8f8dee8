"""A stand-in for the stock "SMS Gateway for Android" app (v1.68) in private-server mode.

Written from ``../shared/specs/smsgate-wire.md`` (sections cited as §n), not from smsgw's
code: the requests the app makes, with its headers, its Gson bodies (nulls left out,
dates in the phone's own zone with three fraction digits, HTML-safe escapes), its
okhttp-sse reading of the event stream, and its handling of what the server answers. The
phone's radio is simulated: a pulled message is sent at once, unless told otherwise.

What it does, as the app does:

- ``start()``: app start. With a stored token ``PATCH /device`` (a 401 re-registers with
  ``POST /device`` and the private token, §3.2), then the settings and webhook syncs; in
  SSE mode the stream ``GET /events`` (§4.2), which pulls on every ``MessageEnqueued``
  and on every (re)connect.
- ``pull()``: ``GET /message?order=lifo`` (§3.4): new ids are taken into the local queue;
  a known id has its state sent again (the app's dedup).
- sending a local message: ``PATCH /message`` with one item per request (§3.5):
  Processed, then Sent (or Failed), then Delivered.
- ``receive_sms()``: an incoming SMS, posted as a signed ``sms:received`` webhook to
  each URL of the synced list (§5).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import ssl
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx

USER_AGENT = "me.capcom.smsgateway/1.68.0"
# The app's WebHookEvent enum (§3.7).
APP_EVENTS = frozenset(
    [
        "sms:received",
        "sms:sent",
        "sms:delivered",
        "sms:failed",
        "system:ping",
        "sms:data-received",
        "mms:received",
        "mms:downloaded",
        "app:started",
        "sms:cancelled",
    ]
)
NANOID = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def nanoid(size: int = 21) -> str:
    return "".join(secrets.choice(NANOID) for _ in range(size))


def gson(value: Any) -> bytes:
    """Gson's compact output: nulls omitted by the callers, ``< > & = '`` escaped (§2.2)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("=", "\\u003d").replace("'", "\\u0027").encode()


@dataclass
class LocalMessage:
    id: str
    text: str
    phone_numbers: list[str]
    sim_number: int | None
    valid_until: str | None
    state: str = "Pending"
    states: dict[str, str] = field(default_factory=dict)
    recipient_state: str = "Pending"
    error: str | None = None
    data_port: int | None = None  # a data SMS (``text`` is its base64 payload)
    with_delivery_report: bool = True
    encrypted: bool = False


class FakeApp:
    def __init__(
        self,
        server_url: str,
        private_token: str | None = None,
        *,
        name: str = "Google/sdk_gphone64_x86_64",
        sse: bool = True,
        push_token: str | None = None,
        tz_hours: int = 7,
        auto_send: bool = True,
        deliver: bool = True,
        fail_with: str | None = None,
        ignore_enqueued: bool = False,
        code: str | None = None,
        verify: ssl.SSLContext | bool = True,  # the phone's trust store (a user-installed CA)
    ) -> None:
        self.base = server_url  # as typed in the settings: concatenated, never normalised
        self.private_token = private_token
        self.code = code
        self.name = name
        self.sse = sse
        self.push_token = push_token
        self.zone = timezone(timedelta(hours=tz_hours))
        self.auto_send = auto_send
        self.deliver = deliver
        self.fail_with = fail_with
        self.ignore_enqueued = ignore_enqueued
        self.http = httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, timeout=30, verify=verify)
        self.device_id: str | None = None
        self.token: str | None = None
        self.login: str | None = None
        self.password: str | None = None
        self.registrations = 0
        self.local: dict[str, LocalMessage] = {}
        self.settings: dict[str, Any] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.signing_key = nanoid(8)  # the app's own random key until the server sets one
        self.events: list[str] = []
        self.stream_open = asyncio.Event()
        self._stream: asyncio.Task[None] | None = None
        self.opened_pull: asyncio.Task[None] | None = None
        self._work: set[asyncio.Task[Any]] = set()
        self.sim_cards = [
            {"slotIndex": 0, "simNumber": 1, "phoneNumber": "********1234", "carrierName": "****"}
        ]

    # -- HTTP ---------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base}/{path}"  # string concatenation, as GatewayApi.kt does

    def _device_auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _send(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        content = None
        if body is not None:
            content = gson(body)
            headers["Content-Type"] = "application/json"
        return await self.http.request(
            method, self._url(path), content=content, headers=headers, **kw
        )

    def now(self) -> str:
        """``yyyy-MM-dd'T'HH:mm:ss.SSSXXX`` in the phone's zone (§2.2)."""
        local = datetime.now(UTC).astimezone(self.zone)
        stamp = local.strftime("%Y-%m-%dT%H:%M:%S.") + f"{local.microsecond // 1000:03d}"
        offset = local.strftime("%z")
        return stamp + ("Z" if offset == "+0000" else f"{offset[:3]}:{offset[3:]}")

    # -- registration and start-up --------------------------------------------------------

    async def register(self) -> httpx.Response:
        body: dict[str, Any] = {"name": self.name, "simCards": self.sim_cards}
        if self.push_token:
            body["pushToken"] = self.push_token
        if self.code is not None:
            auth = {"Authorization": f"Code {self.code}"}
        elif self.private_token is not None:
            auth = {"Authorization": f"Bearer {self.private_token}"}
        else:
            auth = {}
        r = await self._send("POST", "device", body, headers=auth)
        if r.is_success:
            found = r.json()
            self.device_id, self.token = found["id"], found["token"]
            self.login, self.password = found.get("login"), found.get("password")
            self.registrations += 1
        return r

    async def start(self) -> None:
        """What the app does when it starts (§2.5, §3.2, §4.1)."""
        if self.token is None:
            r = await self.register()
            r.raise_for_status()
        else:
            body: dict[str, Any] = {"id": self.device_id, "simCards": self.sim_cards}
            if self.push_token:
                body["pushToken"] = self.push_token
            r = await self._send("PATCH", "device", body, headers=self._device_auth())
            if r.status_code == 401:  # the one answer that re-registers
                self.token = None
                (await self.register()).raise_for_status()
            else:
                r.raise_for_status()
        await self.sync_settings()
        await self.sync_webhooks()
        if self.sse and not self.push_token:
            self.stream_open.clear()
            self._stream = asyncio.create_task(self._run_stream())
            await asyncio.wait_for(self.stream_open.wait(), 10)
            if self.opened_pull is not None:  # settled, so a test's first offer is pushed
                await self.opened_pull

    async def sync_settings(self) -> None:
        r = await self._send("GET", "settings", headers=self._device_auth())
        r.raise_for_status()
        self.settings = r.json()
        key = self.settings.get("webhooks", {}).get("signing_key")
        if key:
            self.signing_key = key

    async def sync_webhooks(self) -> None:
        r = await self._send("GET", "webhooks", headers=self._device_auth())
        r.raise_for_status()
        hooks = r.json()
        for hook in hooks:  # an id and a url are required, and an event the app knows
            assert isinstance(hook["id"], str) and isinstance(hook["url"], str)
            assert hook["event"] in APP_EVENTS, hook  # an unknown name breaks the sync
        self.webhooks = hooks

    # -- the event stream (§4.2, okhttp-sse) ----------------------------------------------

    async def _run_stream(self) -> None:
        async with self.http.stream(
            "GET", self._url("events"), headers=self._device_auth(), timeout=None
        ) as r:
            ctype = r.headers.get("content-type", "").split(";")[0].strip()
            if not r.is_success or ctype != "text/event-stream":
                self.events.append(f"failed:{r.status_code}:{ctype}")
                self.stream_open.set()
                return
            self.opened_pull = asyncio.create_task(self.pull_and_send())  # on every open
            self.stream_open.set()
            name: str | None = None
            data: list[str] = []
            async for line in r.aiter_lines():
                if line == "":
                    if data:  # an event without data lines is dropped
                        await self._on_event(name or "MessageEnqueued", "\n".join(data))
                    name, data = None, []
                    continue
                if line.startswith(":"):
                    continue  # a comment: the keep-alive
                fname, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if fname == "event":
                    name = value
                elif fname == "data":
                    data.append(value)

    async def _on_event(self, name: str, data: str) -> None:
        self.events.append(name)
        if name == "MessageEnqueued" and not self.ignore_enqueued:
            self._spawn(self.pull_and_send())
        elif name == "WebhooksUpdated":
            self._spawn(self.sync_webhooks())
        elif name == "SettingsUpdated":
            self._spawn(self.sync_settings())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def drop_stream(self) -> None:
        """The phone loses its connection."""
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, httpx.HTTPError):
                await self._stream
            self._stream = None

    # -- messages ---------------------------------------------------------------------------

    async def pull(self) -> list[dict[str, Any]]:
        """``GET /message``, items handled in order (§3.4)."""
        r = await self._send("GET", "message?order=lifo", headers=self._device_auth())
        r.raise_for_status()
        items = r.json()
        for item in items:
            data = item.get("dataMessage")
            content = (
                data["data"]
                if data is not None
                else item.get("textMessage", {}).get("text") or item.get("message")
            )
            if item.get("state", "Pending") != "Pending" or content is None:
                continue
            if item["id"] in self.local:
                await self.report(self.local[item["id"]])  # dedup: send its state again
                continue
            self.local[item["id"]] = LocalMessage(
                id=item["id"],
                text=content,
                phone_numbers=list(item["phoneNumbers"]),
                sim_number=item.get("simNumber"),
                valid_until=item.get("validUntil"),
                states={"Pending": self.now()},
                data_port=data["port"] if data is not None else None,
                with_delivery_report=item.get("withDeliveryReport", True),
                encrypted=item.get("isEncrypted", False),
            )
        return items

    async def pull_and_send(self) -> None:
        await self.pull()
        if self.auto_send:
            await self.send_pending()

    async def send_pending(self) -> None:
        for msg in list(self.local.values()):
            if msg.state == "Pending":
                await self.transmit(msg)

    async def transmit(self, msg: LocalMessage) -> None:
        """The radio: Processed, then Sent or Failed, then Delivered (§3.5)."""
        await self.set_state(msg, "Processed")
        if self.fail_with is not None:
            await self.set_state(msg, "Failed", error=self.fail_with)
            return
        if msg.data_port is not None and not msg.encrypted:
            try:  # sendDataMessage() with the decoded bytes; bad base64 fails the message
                base64.b64decode(msg.text, validate=True)
            except ValueError:
                await self.set_state(msg, "Failed", error="Can't send message: bad base64")
                return
        await self.set_state(msg, "Sent")
        if self.deliver and msg.with_delivery_report:  # no report asked: it ends at Sent
            await self.set_state(msg, "Delivered")

    async def set_state(self, msg: LocalMessage, state: str, error: str | None = None) -> None:
        msg.state = msg.recipient_state = state
        msg.error = error
        msg.states.setdefault(state, self.now())
        await self.report(msg)

    async def report(self, msg: LocalMessage) -> httpx.Response:
        recipients = []
        for number in msg.phone_numbers:
            entry = {"phoneNumber": number, "state": msg.recipient_state}
            if msg.error is not None:
                entry["error"] = msg.error
            recipients.append(entry)
        body = [{"id": msg.id, "state": msg.state, "recipients": recipients, "states": msg.states}]
        r = await self._send("PATCH", "message", body, headers=self._device_auth())
        r.raise_for_status()
        return r

    # -- received SMS as webhooks (§5) -------------------------------------------------------

    def envelope(self, sender: str, text: str, hook: dict[str, Any]) -> dict[str, Any]:
        received = self.now()
        digest = hashlib.sha1(f"{sender}{received}{text}".encode()).hexdigest()[:8]
        return {
            "id": nanoid(),
            "webhookId": hook["id"],
            "event": "sms:received",
            "deviceId": self.device_id,
            "payload": {
                "message": text,
                "receivedAt": received,
                "messageId": digest,
                "sender": sender,
                "simNumber": 1,
                "phoneNumber": sender,
            },
        }

    async def post_webhook(
        self, url: str, envelope: dict[str, Any], *, key: str | None = None
    ) -> httpx.Response:
        body = gson(envelope)
        stamp = str(int(time.time()))
        signature = hmac.new(
            (key or self.signing_key).encode(), body + stamp.encode(), hashlib.sha256
        ).hexdigest()
        headers = {
            "Content-Type": "application/json",
            "X-Timestamp": stamp,
            "X-Signature": signature,
        }
        return await self.http.post(url, content=body, headers=headers)

    async def receive_sms(self, sender: str, text: str) -> list[httpx.Response]:
        answers = []
        for hook in self.webhooks:
            if hook["event"] == "sms:received":
                answers.append(
                    await self.post_webhook(hook["url"], self.envelope(sender, text, hook))
                )
        return answers

    async def close(self) -> None:
        await self.drop_stream()
        if self.opened_pull is not None and not self.opened_pull.done():
            self.opened_pull.cancel()
        for task in list(self._work):
            task.cancel()
        await asyncio.gather(*self._work, return_exceptions=True)
        await self.http.aclose()
