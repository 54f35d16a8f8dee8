"""A live fuzzer of the app-phone API, ``/api/mobile/v1``, and its webhook receiver
(issue 21): a real hub serves a well-behaved stand-in of the stock app
(tests/fakes/smsgate_app.py), which sends the hub's dispatches and posts the SMS it
receives, while fuzz clients call every endpoint with a valid app device token (of a
phone of their own), an invalid one, or none, and bodies that are mutated (wrong types,
unknown fields, reports about the good phone's messages), huge (over the body limit),
not JSON, not UTF-8, nested too deep; and post signed and unsigned envelopes to the
receiver, at its real URL and at made-up ones, with odd signature headers.

What must hold: every answer is one its operation documents in /openapi.json (or the
429 of too many failed authentications), never a 5xx, and an error has the API's error
shape; the hub logs no error and answers /health throughout; every dispatch ends SENT or
DELIVERED on the good phone and each SMS it posted is stored once.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.app_farm import MOBILE, Apps
from tests.fakes.smsgate_app import FakeApp, gson
from tests.fuzz.budget import SECONDS, SEED, scaled
from tests.fuzz.mutate import Mutator
from tests.fuzz.test_device_fuzz import ErrorLog, messages
from tests.harness import HubServer, wait_for

pytestmark = pytest.mark.hub_settings(default_daily_quota=1_000_000, recipient_hourly_limit=None)

DISPATCHES = scaled(40)
RECEIVED = scaled(20)
MAX_REQUESTS = scaled(1500)
FUZZ_CLIENTS = 4

# The app's dates (its zone, three fraction digits), at the edges: no UTC equivalent, a
# month 13, Android 6's "+-5:00", an offset of a day.
DATES = [
    "2026-01-01T00:00:00.000+07:00",
    "9999-12-31T23:59:59.000-14:00",
    "0001-01-01T00:00:00.000+14:00",
    "2026-13-45T99:99:99",
    "2026-01-01T00:00:00.000+-5:00",
    "2026-01-01T00:00:00+99:99",
    "nope",
    5,
]

# (method, path template) of every operation of the mobile API, as /openapi.json has them.
OPERATIONS = [
    ("POST", "/device"),
    ("PATCH", "/device"),
    ("GET", "/device"),
    ("GET", "/message"),
    ("PATCH", "/message"),
    ("GET", "/settings"),
    ("GET", "/webhooks"),
    ("POST", "/webhooks/{key}"),
    ("GET", "/events"),
    ("GET", "/user/code"),
]


@dataclass
class Stats:
    requests: int = 0
    statuses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)
    health: list[float] = field(default_factory=list)


def sign(key: str, body: bytes, stamp: str) -> str:
    return hmac.new(key.encode(), body + stamp.encode(), hashlib.sha256).hexdigest()


class MobileFuzzer:
    def __init__(
        self, hub: HubServer, spec: dict[str, Any], rng: random.Random, mutator: Mutator,
        stats: Stats, own: FakeApp, good_ids: list[str],
    ) -> None:  # fmt: skip
        self.hub, self.rng, self.mutator, self.stats = hub, rng, mutator, stats
        self.own, self.good_ids = own, good_ids
        self.documented: dict[tuple[str, str], set[int]] = {}
        for method, path in OPERATIONS:
            responses = spec["paths"][MOBILE + path][method.lower()]["responses"]
            self.documented[method, path] = {int(code) for code in responses}

    def token(self) -> dict[str, str] | dict[str, bytes]:
        r = self.rng
        own = self.own
        return r.choice(
            [
                *[{"Authorization": f"Bearer {own.token}"}] * 12,
                {},
                {"Authorization": "Bearer dev_nope_nope"},
                {"Authorization": "Bearer"},
                {"Authorization": f"Basic {own.token}"},
                {"Authorization": "Code 000000"},
                {"Authorization": f"bearer {own.token}x"},
                {"Authorization": "Bearer \u00e9t\u00e9".encode("latin-1")},
            ]
        )

    def body(self) -> bytes:
        """A request body: the app's own shapes broken, or not JSON at all."""
        r, m = self.rng, self.mutator
        roll = r.random()
        if roll < 0.25:
            states = ["Pending", "Processed", "Sent", "Delivered", "Failed", "Cancelled", "Lost", 3]
            recipient = {"phoneNumber": "+12025550100", "state": r.choice(states)}
            if r.random() < 0.5:
                recipient["error"] = "RESULT_" + m.word().upper()
            report = {
                "id": r.choice(self.good_ids or ["x"]) if r.random() < 0.6 else m.word(),
                "state": r.choice(states),
                "recipients": [recipient],
                "states": {"Sent": r.choice(DATES)},
            }
            if r.random() < 0.5:
                report = m.broken(report)
            return json.dumps(r.choice([[report], report, [report] * r.randint(2, 20)])).encode()
        if roll < 0.45:
            sim = {"slotIndex": m.odd(), "simNumber": 1, "phoneNumber": m.odd()}
            device = {"id": self.own.device_id, "name": m.odd(), "pushToken": m.odd(),
                      "simCards": [sim]}  # fmt: skip
            return json.dumps(m.broken(device) if r.random() < 0.7 else device).encode()
        if roll < 0.55:
            return json.dumps(m.odd()).encode()
        if roll < 0.62:
            return r.choice([b"", b"{", b"\xff\xfe{}", b"null", b"\x00", b'{"id": "\xc3\x28"}'])
        if roll < 0.7:
            return (r.choice(["[", '{"a":']) * r.choice([1_000, 100_000])).encode()
        if roll < 0.75:
            return b'{"name": "' + b"x" * (1024 * 1024 + 10) + b'"}'  # over the body limit
        return json.dumps(m.broken(m.frame())).encode()

    def envelope(self) -> bytes:
        """An ``sms:received`` envelope, each field usually right (so that bodies reach
        the store), sometimes wrong or odd."""
        r, m = self.rng, self.mutator

        def pick(good: Any, *bad: Any) -> Any:
            return good if r.random() < 0.7 else r.choice([*bad, m.odd()])

        sms = {
            "message": pick(f"fuzz {m.word()}", "STOP", "\x00 nul", "a" * 70_000, ""),
            "receivedAt": pick(DATES[0], *DATES[1:]),
            # Not a number the dispatches go to: a STOP from it is an opt-out (a 422 then).
            "sender": pick("+12025550299", "", "\x00", None, "x" * 200),
            "simNumber": pick(1, 0, 18, 10**30, "1", None),
        }
        envelope = {
            "id": pick(m.word(), "", "x" * 200, "\x00", 7),
            "event": pick("sms:received", "sms:sent", "mms:received", "", None),
            "deviceId": self.own.device_id,
            "payload": sms,
        }
        if r.random() < 0.2:
            envelope = m.broken(envelope)
        return json.dumps(envelope, ensure_ascii=r.random() < 0.5).encode(errors="replace")

    async def request(self, client: httpx.AsyncClient) -> None:
        r = self.rng
        # The receiver three times as often: its bodies reach the store only when the URL,
        # the signature and the envelope are all right.
        method, path = r.choice([*OPERATIONS, OPERATIONS[7], OPERATIONS[7]])
        headers: dict[str, Any] = dict(self.token())
        content: bytes | None = None
        url = MOBILE + path
        if path == "/webhooks/{key}":
            own_url = self.own.webhooks[0]["url"] if self.own.webhooks else ""
            key = own_url.rsplit("/", 1)[-1]
            url = (
                MOBILE
                + "/webhooks/"
                + (
                    key
                    if r.random() < 0.7
                    else r.choice(
                        [
                            key + "x",
                            "%C3%A9." + key,
                            key.split(".")[0] + ".\u00e9",
                            "x" * 3000,
                            "%00",
                            self.mutator.word(),
                        ]
                    )
                )
            )
            content = self.envelope() if r.random() < 0.8 else self.body()
            stamp = str(int(time.time()))
            if r.random() < 0.3:
                stamp = r.choice(["", "\u00e9", "1" * 100])
            signature = sign(self.own.signing_key, content, stamp)
            headers = {
                "X-Timestamp": stamp.encode("latin-1", errors="replace"),
                "X-Signature": (
                    signature
                    if r.random() < 0.7
                    else r.choice([signature.upper(), "00", "", "\u00e9\u00e9"])
                ).encode("latin-1"),
            }
        elif method in ("POST", "PATCH"):
            content = self.body()
        if path == "/message" and method == "GET" and r.random() < 0.5:
            url += "?order=" + r.choice(["fifo", "lifo", "", "random", "%00"])
        if path == "/events":
            headers = {"Authorization": r.choice(["Bearer dev_nope_nope", "Bearer", ""])}
        if content is not None and r.random() < 0.8:
            headers["Content-Type"] = r.choice(["application/json", "text/plain", "x/y"])
        try:
            answer = await client.request(method, url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            self.stats.problems.append(f"{method} {url[:80]}: {exc!r}")
            return
        self.stats.requests += 1
        self.check(method, path, url, answer)

    def check(self, method: str, path: str, url: str, answer: httpx.Response) -> None:
        status = answer.status_code
        self.stats.statuses[f"{method} {path}", status] += 1
        where = f"{method} {url[:80]} -> {status} {answer.text[:200]}"
        allowed = self.documented[method, path] | {429}
        if status >= 500 or status not in allowed:
            self.stats.problems.append(f"undocumented: {where}")
        if status >= 400:
            try:
                error = answer.json()["error"]
                assert isinstance(error["code"], str) and isinstance(error["message"], str)
            except (ValueError, KeyError, TypeError, AssertionError):
                self.stats.problems.append(f"not the error shape: {where}")
            if status == 429 and "retry-after" not in answer.headers:
                self.stats.problems.append(f"429 without Retry-After: {where}")

    async def run(self, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=self.hub.url, timeout=30) as client:
            while time.monotonic() < deadline and self.stats.requests < MAX_REQUESTS:
                await self.request(client)


async def test_the_app_phone_api_survives_a_fuzzer_beside_a_well_behaved_app(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    rng = random.Random(SEED)
    good = await apps.add(name="good")
    own = await apps.add(name="fuzz", start=False)  # registered, never streaming: offered nothing
    assert (await own.register()).status_code == 201
    await own.sync_settings()
    await own.sync_webhooks()
    spec = (await api.get("/openapi.json")).json()
    errors = ErrorLog()
    watched = [logging.getLogger("smsgw"), logging.getLogger("uvicorn")]
    for logger in watched:
        logger.addHandler(errors)
    stats = Stats()
    ids: list[str] = []
    mutator = Mutator(rng, ids)
    try:
        deadline = time.monotonic() + SECONDS
        fuzzers = [
            asyncio.create_task(
                MobileFuzzer(hub, spec, random.Random(rng.random()), mutator, stats, own, ids).run(
                    deadline
                )
            )
            for _ in range(FUZZ_CLIENTS)
        ]

        async def well_behaved() -> None:
            for i in range(max(DISPATCHES, RECEIVED)):
                if i < DISPATCHES:
                    body = {"to": f"+1202555{100 + i % 100:04d}", "message": f"app {i}",
                            "wait": False}  # fmt: skip
                    r = await api.post("/sms/dispatch", json=body)
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["message_id"])
                if i < RECEIVED:
                    [answer] = await good.receive_sms("+12025550111", f"hello {i}")
                    assert answer.status_code == 204, answer.text
                await asyncio.sleep(SECONDS / max(DISPATCHES, RECEIVED))

        await well_behaved()
        await asyncio.gather(*fuzzers)

        async def finished() -> bool:
            found = await messages(api)
            return all(found[mid]["status"] in ("SENT", "DELIVERED") for mid in ids)

        await wait_for(finished, 60, "every dispatch SENT or DELIVERED")
    finally:
        for logger in watched:
            logger.removeHandler(errors)

    found = await messages(api)
    assert {found[mid]["device_id"] for mid in ids} == {good.device_id}
    inbound = (await api.get("/sms/inbound", params={"limit": 500})).json()["items"]
    from_good = [i for i in inbound if i["device_id"] == good.device_id]
    assert sorted(i["body"] for i in from_good) == sorted(f"hello {i}" for i in range(RECEIVED))
    by_status = collections.Counter(status for (_, status), n in stats.statuses.items()
                                    for _ in range(n))  # fmt: skip
    print(
        f"\nmobile fuzz (seed {SEED}, {SECONDS:g} s budget): {stats.requests} requests, "
        f"statuses {dict(sorted(by_status.items()))}; {len(ids)} dispatches and {RECEIVED} "
        f"received SMS of the good app; {len(inbound) - len(from_good)} SMS stored from the "
        f"fuzzer's own phone"
    )
    assert stats.requests >= 200, "the fuzzer hardly ran"
    assert not stats.problems, "\n".join(stats.problems[:10])
    assert not errors.records, "\n".join(errors.lines()[:5])
    assert (await api.get("/health")).status_code == 200
    assert re.fullmatch(r"[0-9a-f-]+", good.device_id or "")


async def test_what_the_mobile_fuzzer_found_is_a_4xx(
    hub: HubServer, api: httpx.AsyncClient, apps: Apps
) -> None:
    """Each of these answered 500 before: a receiving URL or a signature with a non-ASCII
    character (hmac.compare_digest raises on such a str), JSON nested deeper than
    json.loads goes, a received SMS dated where UTC has no date (the store's write
    overflowed); and on PostgreSQL a received SMS with U+0000 (text cannot hold it)."""
    app = await apps.add(start=False)
    assert (await app.register()).status_code == 201
    await app.sync_settings()
    await app.sync_webhooks()
    url = app.webhooks[0]["url"]
    envelope = app.envelope("+12025550299", "hi \x00", app.webhooks[0])
    async with httpx.AsyncClient(timeout=30) as c:
        device, _, _ = url.rpartition(".")
        r = await c.post(device + ".%C3%A9", content=gson(envelope))
        assert r.status_code == 401, r.text
        body = gson(envelope)
        headers = {"X-Timestamp": "1", "X-Signature": "\u00e9".encode("latin-1")}
        r = await c.post(url, content=body, headers=headers)
        assert r.status_code == 401, r.text
        auth = {"Authorization": f"Bearer {app.token}"}
        r = await c.patch(hub.url + MOBILE + "/message", content=b"[" * 100_000, headers=auth)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        far = dict(envelope, id="far")
        far["payload"] = dict(envelope["payload"], receivedAt="9999-12-31T23:59:59.000-05:00")
        r = await app.post_webhook(url, far)
        assert r.status_code == 400, r.text
        r = await app.post_webhook(url, envelope)  # U+0000 in the text, on either engine
        assert r.status_code == 204, r.text
    [stored] = (await api.get("/sms/inbound")).json()["items"]
    assert stored["body"] == "hi \ufffd"
