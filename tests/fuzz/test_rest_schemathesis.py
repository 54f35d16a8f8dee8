"""REST fuzzing (issue 21): schemathesis against a live hub and the ``/openapi.json`` it serves.

Every operation of the document is called with each kind of credential: none, a read
key, a send key, an admin key, an agent's device token, an app phone's device token. Data
is drawn both as the schema says (positive) and against it (negative), and path
parameters name things that exist on the hub about half the time. Every answer must have:
no 5xx (501 where documented: SMSGate endpoints smsgw does not implement), a status the
operation documents, a body that matches the schema documented for that status, the
documented content type, the one error shape for every 4xx (``{"error": {"code",
"message"}}``; SMSGate's ``{"message", "code"}`` on its API), and for a request the schema
says is invalid, no success.

Budget. Each operation is fuzzed in full (schemathesis' deterministic coverage cases:
boundaries, missing and wrong-typed fields, and ``SMSGW_FUZZ_EXAMPLES`` random examples, 5
by default) with the credentials it is meant for (``entitled``); with the others, which it
refuses before reading anything, with a few random examples (``REFUSED_EXAMPLES``).
Unset, the run is derandomized and seeded (``SMSGW_FUZZ_SEED``, default 21), so CI sees the
same cases every time; set, each run draws new ones (from a random seed, which a failure
names, unless ``SMSGW_FUZZ_SEED`` is set too). A long local run (docs/testing.md)::

    SMSGW_FUZZ_EXAMPLES=300 .venv/bin/pytest tests/fuzz/test_rest_schemathesis.py --timeout=0

The hub is ``HubServer`` on an event loop in a thread of its own (schemathesis' calls
block). Schemathesis makes its tests at collection, before any hub runs, so it reads the
document from the hub's own code; ``test_the_fuzzed_document_is_the_one_served`` checks it
is the one the live hub serves.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st
from schemathesis import BaseSchema, Case, CheckContext, GenerationMode
from schemathesis.core.failures import Failure
from schemathesis.core.transport import Response

import smsgw.app  # noqa: F401  (imports every module that declares endpoints on the Api)
from smsgw.api import api
from smsgw.api.openapi import build_openapi
from smsgw.errors import THIRDPARTY_PREFIX
from tests.harness import ADMIN_KEY, HubServer

T = TypeVar("T")

# schemathesis' own strategies draw with ``random`` (hypothesis warns; nothing to act on).
pytestmark = pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")

LONG = bool(os.environ.get("SMSGW_FUZZ_EXAMPLES", "").strip())
EXAMPLES = int(os.environ.get("SMSGW_FUZZ_EXAMPLES", "").strip() or 5)
REFUSED_EXAMPLES = max(2, EXAMPLES // 5)
# Fixed in CI; a long run draws a new one unless told (a failure names it, to replay).
SEED = int(
    os.environ.get("SMSGW_FUZZ_SEED", "").strip() or (random.randrange(2**31) if LONG else 21)
)

CREDENTIALS = ["none", "read", "send", "admin", "agent", "app"]
TO = "+12025550999"
OPTED_OUT = "+12025550998"

# Limits that would answer 429 to a fuzzer sending the same few values over and over are
# raised (their 429s have tests of their own in tests/smsgw). A short dispatch deadline:
# a case with ``wait: true`` and no phone online answers in a fraction of a second.
HUB_SETTINGS: dict[str, Any] = {
    "dispatch_deadline": 0.2,
    "recipient_hourly_limit": 1_000_000,
    "otp_max_per_hour": 1_000_000,
    "otp_resend_cooldown": 0.0,
    "otp_max_attempts": 1_000_000,
    "otp_max_failures_per_hour": 1_000_000,
    "auth_failure_limit": 0,  # the per-address limit on failed authentications: off
}
MAX_WAIT = 0.2  # a dispatch's own ``timeout`` is cut to this

# Streams until the client goes away: schemathesis would wait for its end.
EXCLUDED = [("GET", "/api/mobile/v1/events")]

# What each kind of credential is for, read from the operation's documented
# authentication; the credentials an operation is not for get the small budget.
DEVICE_TOKEN = "Bearer device token (from POST /api/mobile/v1/device)"


def entitled(op: dict[str, Any]) -> set[str]:
    description: str = op.get("description", "")
    for scope in ("read", "send", "admin"):
        if f"scope `{scope}`" in description:
            return {scope, "admin"}
    if "SMSGate" in description:
        return {"read", "send", "admin"}
    if "DeviceToken" in description:
        return {"agent"}
    if DEVICE_TOKEN in description:
        return {"app", "none"} if "none, or" in description else {"app"}
    if "ApiKey or enrollment code" in description or "metrics" in op.get("summary", "").lower():
        return {"admin", "none"}
    return {"none"}  # public, or credentials of a kind the fuzzer does not hold


# -- the hub -----------------------------------------------------------------------------


class ThreadedHub:
    """A ``HubServer`` on an event loop in a thread of its own."""

    def __init__(self, db_path: Path, **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = HubServer(db_path, **overrides)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def start(self) -> ThreadedHub:
        self.thread.start()
        self.run(self.server.start())
        return self

    def stop(self) -> None:
        try:
            self.run(self.server.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()

    @property
    def url(self) -> str:
        return self.server.url


@dataclass
class World:
    """The live hub, a credential of each kind, and the ids of things on it: ``known``
    names what exists, ``spare`` what DELETE may take (never a credential in use)."""

    hub: ThreadedHub
    credentials: dict[str, dict[str, str]]
    known: dict[str, str]
    spare: dict[str, str]


def _ok(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code in (200, 201, 202), (r.request.url, r.status_code, r.text)
    body: dict[str, Any] = r.json()
    return body


def _populate(c: httpx.Client, tag: str) -> dict[str, str]:
    """One of each thing a path can name; ``tag`` tells the two sets apart."""
    key = _ok(c.post("/keys", json={"name": f"{tag}-read", "scopes": ["read"]}))
    send = _ok(c.post("/keys", json={"name": f"{tag}-send", "scopes": ["send"]}))
    agent = _ok(c.post("/devices/register", json={"name": tag, "hardware_id": f"hw-{tag}"}))
    app_token = _ok(c.post("/devices/app-tokens", json={"name": tag}))
    bearer = {"Authorization": f"Bearer {app_token['token']}"}
    app = _ok(c.post("/api/mobile/v1/device", json={"name": f"{tag}-app"}, headers=bearer))
    template = _ok(c.post("/templates", json={"name": tag, "body": "Hi {{name}}"}))
    hook = _ok(c.post("/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["*"]}))
    message = _ok(c.post("/sms/dispatch", json={"to": TO, "message": tag, "wait": False}))
    batch = _ok(c.post("/sms/batch", json={"message": tag, "recipients": [{"to": TO}]}))
    return {
        "message_id": message["message_id"],
        "batch_id": batch["batch_id"],
        "device_id": agent["device_id"],
        "template_id": template["id"],
        "webhook_id": hook["id"],
        "token_id": app_token["id"],
        "key_id": key["id"],
        # Credentials, not path parameters:
        "read_key": key["key"],
        "send_key": send["key"],
        "agent_token": agent["device_token"],
        "app_token": app["token"],
    }


def seed(hub: ThreadedHub) -> World:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with httpx.Client(base_url=hub.url, headers=admin, timeout=30) as c:
        known, spare = _populate(c, "fuzz"), _populate(c, "spare")
        for number in (OPTED_OUT, "+12025550997"):
            _ok(c.post("/opt-outs", json={"number": number}))
        known["number"], spare["number"] = OPTED_OUT, "+12025550997"
        # A webhook delivery (the hook's URL refuses connections: it stays pending).
        cancelled = _ok(c.post("/sms/dispatch", json={"to": TO, "message": "c", "wait": False}))
        _ok(c.delete(f"/sms/{cancelled['message_id']}"))
        deliveries: list[dict[str, Any]] = []
        deadline = time.monotonic() + 5
        while not deliveries and time.monotonic() < deadline:
            time.sleep(0.1)
            deliveries = _ok(c.get(f"/webhooks/{known['webhook_id']}/deliveries"))["items"]
        if deliveries:
            known["delivery_id"] = deliveries[0]["id"]
    credentials = {
        "none": {},
        "read": {"Authorization": f"Bearer {known['read_key']}"},
        "send": {"Authorization": f"Bearer {known['send_key']}"},
        "admin": admin,
        "agent": {"Authorization": f"Bearer {known['agent_token']}"},
        "app": {"Authorization": f"Bearer {known['app_token']}"},
    }
    return World(hub, credentials, known, spare)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    hub = ThreadedHub(tmp_path_factory.mktemp("rest-fuzz") / "hub.db", **HUB_SETTINGS).start()
    try:
        yield seed(hub)
    finally:
        hub.stop()


# -- the schema and its checks -----------------------------------------------------------

DOCUMENT = build_openapi(api)


def date_times() -> st.SearchStrategy[str]:
    """RFC 3339 date-times over all a datetime can hold, with any offset to the minute, the
    first and last second of years 1 and 9999 often: what UTC cannot hold (9999-12-31T23:59
    at -01:00) was a 500 in several places (docs/testing.md)."""
    offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
    zones = st.one_of(st.just(UTC), offsets)
    anywhen = st.datetimes(datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59), timezones=zones)
    edges = st.sampled_from([datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)])
    at_edges = st.tuples(edges, zones).map(lambda dz: dz[0].replace(tzinfo=dz[1]))
    return st.one_of(anywhen, at_edges).map(lambda d: d.isoformat())


# For every schema in this process (only this module's): schemathesis' own date-times
# reach the edges (9999-12-31, ±23:59) too rarely for a small budget.
schemathesis.openapi.format("date-time", date_times())

_CHECKS = {
    "enabled": False,
    "not_a_server_error": {"enabled": True, "expected-statuses": ["2xx", "3xx", "4xx", "501"]},
    "status_code_conformance": {"enabled": True},
    "content_type_conformance": {"enabled": True},
    "response_schema_conformance": {"enabled": True},
    "response_headers_conformance": {"enabled": True},
    "negative_data_rejection": {"enabled": True},
}


def _config(examples: int, *, coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "mode": "all",
                "max-examples": examples,
                "deterministic": not LONG,
                "database": "none",
                "with-security-parameters": False,  # the credential is the test's parameter
            },
            "phases": {
                "examples": {"enabled": coverage},
                "coverage": {"enabled": coverage},
                "stateful": {"enabled": False},
            },
            "checks": _CHECKS,
            "request-timeout": 20,
        }
    )


def _schema(examples: int, *, coverage: bool) -> BaseSchema:
    schema: BaseSchema = schemathesis.openapi.from_dict(
        DOCUMENT, config=_config(examples, coverage=coverage)
    )
    for method, path in EXCLUDED:
        schema = schema.exclude(method=method, path=path)
    return schema


FULL = _schema(EXAMPLES, coverage=True)
LIGHT = _schema(REFUSED_EXAMPLES, coverage=False)


def _for(credential: str, *, full: bool) -> Callable[[Any], bool]:
    def matches(ctx: Any) -> bool:
        op = DOCUMENT["paths"][ctx.operation.path][ctx.operation.method.lower()]
        return (credential in entitled(op)) == full

    return matches


def error_shape(ctx: CheckContext, response: Response, case: Case[Any]) -> bool | None:
    """Every 4xx and 5xx, documented or not, in the one error shape (SMSGate's on its
    API), with the headers its status calls for."""
    if response.status_code < 400:
        return None
    path = case.operation.path
    try:
        body = json.loads(response.content or b"")
    except ValueError:
        body = None
    if path.startswith(THIRDPARTY_PREFIX):
        ok = isinstance(body, dict) and isinstance(body.get("message"), str)
        shape = '{"message": ..., "code": ...}'
    else:
        err = body.get("error") if isinstance(body, dict) else None
        ok = isinstance(err, dict) and all(isinstance(err.get(k), str) for k in ("code", "message"))
        shape = '{"error": {"code": ..., "message": ...}}'
    if not ok:
        raise Failure(
            operation=case.operation.label,
            title="Not the one error shape",
            message=f"a {response.status_code} answered {response.content[:200]!r}, not {shape}",
        )
    needed = {401: "www-authenticate", 405: "allow", 429: "retry-after"}.get(response.status_code)
    if needed and needed not in {k.lower() for k in response.headers}:
        raise Failure(
            operation=case.operation.label,
            title="Error without its header",
            message=f"a {response.status_code} without {needed}",
        )
    return True


# -- the call ----------------------------------------------------------------------------


def _prepare(case: Case[Any], world: World) -> None:
    """Name things that exist about half the time (what DELETE may take on DELETE), and
    keep a dispatch from waiting long. Only positive cases' path parameters are replaced:
    a negative case stays exactly what schemathesis made it."""
    positive = case.meta is not None and case.meta.generation.mode == GenerationMode.POSITIVE
    ids = world.spare if case.method.upper() == "DELETE" else world.known
    for name, value in list((case.path_parameters or {}).items()):
        if positive and name in ids and zlib.crc32(str(value).encode()) % 2 == 0:
            case.path_parameters[name] = ids[name]
    body = case.body
    if isinstance(body, dict):
        timeout = body.get("timeout")
        if isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0:
            body["timeout"] = min(timeout, MAX_WAIT)


def _run(case: Case[Any], credential: str, world: World) -> None:
    _prepare(case, world)
    try:
        case.call_and_validate(
            base_url=world.hub.url,
            headers=world.credentials[credential],
            additional_checks=[error_shape],
        )
    except Exception as exc:
        exc.add_note(f"replay: SMSGW_FUZZ_EXAMPLES={EXAMPLES} SMSGW_FUZZ_SEED={SEED}")
        raise


def _fuzz_test(credential: str, *, full: bool) -> Callable[..., None]:
    chosen = (FULL if full else LIGHT).include(_for(credential, full=full))

    @chosen.parametrize()
    def test(case: Case[Any], world: World) -> None:
        _run(case, credential, world)

    return test  # type: ignore[no-any-return]


# One test per credential and budget; each is one pytest item per operation, e.g.
# test_rest_admin[POST /sms/dispatch] and test_rest_admin_refused[GET /api/mobile/v1/message].
for _credential in CREDENTIALS:
    globals()[f"test_rest_{_credential}"] = _fuzz_test(_credential, full=True)
    globals()[f"test_rest_{_credential}_refused"] = _fuzz_test(_credential, full=False)


def test_the_fuzzed_document_is_the_one_served(world: World) -> None:
    served = httpx.get(f"{world.hub.url}/openapi.json", timeout=30).json()
    assert served == json.loads(json.dumps(DOCUMENT))
    assert {"delivery_id", "message_id", "batch_id"} <= world.known.keys()  # ids exist


def test_every_operation_is_fuzzed_with_the_credentials_it_is_for() -> None:
    ops = [(p, m, op) for p, ops in DOCUMENT["paths"].items() for m, op in ops.items()]
    assert len(ops) > 80
    for path, method, op in ops:
        kinds = entitled(op)
        assert kinds <= set(CREDENTIALS), (method, path)
        if op.get("security"):  # a client key's scope
            assert "admin" in kinds, (method, path)
    assert entitled(DOCUMENT["paths"]["/devices/heartbeat"]["post"]) == {"agent"}
    assert entitled(DOCUMENT["paths"]["/api/mobile/v1/message"]["get"]) == {"app"}
    assert entitled(DOCUMENT["paths"]["/sms/"]["get"]) == {"read", "admin"}
    assert entitled(DOCUMENT["paths"]["/health"]["get"]) == {"none"}
