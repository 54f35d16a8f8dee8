"""Who may call what: every route of the hub against every kind of credential (issue 21).

One table with two uses. ``tests/smsgw/test_access_table.py`` sends each row's probe with
each credential to a live hub and expects exactly the answer written here, and fails if a
route of the app has no row (or a row names no route). ``docs/access.md`` is this table
rendered (``python -m smsgw.access_table > docs/access.md``); a test holds the file equal
to the rendering, so the documentation cannot drift from what the hub answers.

A row's answers are written out by the helpers below, one per family of routes that check
credentials the same way (smsgw's API by scope, SMSGate's API, the stock app's API, the
dashboard, public routes), or literally where a route is its own case.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Credential:
    name: str  # the column's header
    what: str  # the legend


# The columns, in order. Each is sent as ``Authorization: Bearer <secret>`` (as the Basic
# password on the rows marked so); "none" sends no credential at all.
CREDENTIALS: tuple[Credential, ...] = (
    Credential("none", "no credential"),
    Credential("agent", "an agent phone's device token (`dev_…`, `POST /devices/register`)"),
    Credential(
        "app phone", "a stock-app phone's device token (`dev_…`, `POST /api/mobile/v1/device`)"
    ),
    Credential("app token", "an app registration token (`apt_…`, `POST /devices/app-tokens`)"),
    Credential("read", "an API key with the scope `read`"),
    Credential("send", "an API key with the scope `send`"),
    Credential("admin", "an API key with the scope `admin`"),
    Credential("expired JWT", "an expired access token of SMSGate's API, issued to an admin key"),
    Credential("expired app token", "an app registration token past its `expires_at`"),
    Credential("revoked", "a revoked API key (it had `admin`)"),
)
KINDS = tuple(c.name for c in CREDENTIALS)

# The probe's values for path parameters: ids that name nothing (a 404 once the route
# lets the caller in), a plausible number where the route parses one.
_PARAMS = {"number": "+12025550123"}
_UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Row:
    method: str
    route: str  # as the app declares it (a Mount: its prefix; the agent's socket: its path)
    takes: str  # the credential the route is for, as the documentation says it
    answers: tuple[int, ...]  # one per credential, in ``CREDENTIALS`` order
    probe: str  # the path requested
    body: Any = None  # the JSON body sent (None: no body)
    basic: bool = False  # the secret goes as the password of ``Authorization: Basic``

    def answer(self, kind: str) -> int:
        return self.answers[KINDS.index(kind)]


def _row(
    method_route: str,
    takes: str,
    answers: dict[str, int],
    *,
    probe: str | None = None,
    body: Any = None,
    basic: bool = False,
) -> Row:
    method, route = method_route.split(" ", 1)
    assert set(answers) == set(KINDS), f"{method_route}: an answer for every credential"
    if probe is None:
        probe = re.sub(r"\{(\w+)\}", lambda m: _PARAMS.get(m.group(1), _UNKNOWN), route)
    if body is None and method in ("POST", "PUT", "PATCH"):
        body = {}  # an empty object: what a granted caller gets is the route's own refusal
    return Row(method, route, takes, tuple(answers[k] for k in KINDS), probe, body, basic)


def _all(status: int) -> dict[str, int]:
    return dict.fromkeys(KINDS, status)


def client(method_route: str, scope: str, granted: int, **kw: Any) -> Row:
    """smsgw's API: an API key with ``scope`` (admin implies every scope). A device token is
    403 ``wrong_credential``; anything else that is not a valid key is 401."""
    answers = _all(401)
    answers.update({"agent": 403, "app phone": 403})
    for key in ("read", "send", "admin"):
        answers[key] = granted if key in (scope, "admin") else 403
    return _row(method_route, f"key: `{scope}`", answers, **kw)


def smsgate(method_route: str, scope: str, granted: int, **kw: Any) -> Row:
    """SMSGate's API: an API key (Basic password or Bearer) or an access token, whose
    SMSGate scope needs the smsgw ``scope``. Every other credential, device tokens too, is
    401 in SMSGate's error body."""
    answers = _all(401)
    for key in ("read", "send", "admin"):
        answers[key] = granted if key in (scope, "admin") else 403
    return _row(method_route, f"SMSGate: key or token, `{scope}`", answers, **kw)


def app_phone(method_route: str, granted: int, *, anonymous: int = 401, **kw: Any) -> Row:
    """The stock app's API: the app phone's own device token; everything else is 401, the
    one answer that makes the app register again."""
    answers = _all(401)
    answers.update({"app phone": granted, "none": anonymous})
    return _row(method_route, "app phone's token", answers, **kw)


def public(method_route: str, status: int, **kw: Any) -> Row:
    """No credential needed; whatever is sent is not looked at."""
    return _row(method_route, "none", _all(status), **kw)


def page(route: str, **kw: Any) -> Row:
    """A dashboard page: a signed-in session (a cookie), never a header credential; without
    one, 303 to the sign-in form."""
    return _row(f"GET {route}", "dashboard session", _all(303), **kw)


def form(route: str, **kw: Any) -> Row:
    """A dashboard form post: a session and its CSRF token; without a session, 401."""
    return _row(f"POST {route}", "dashboard session + CSRF", _all(401), **kw)


_HEARTBEAT = {"battery": 50, "charging": False, "signal": 3}
_DEVICE = {"name": "probe", "hardware_id": "access-table-probe"}

ROWS: tuple[Row, ...] = (
    # -- smsgw's API ------------------------------------------------------------------------
    client("POST /sms/dispatch", "send", 422),
    client("POST /sms/send", "send", 422),
    client("DELETE /sms/{message_id}", "send", 404),
    client("GET /sms/{message_id}", "read", 404),
    client("GET /sms/", "read", 200),
    client("GET /sms/inbound", "read", 200),
    client("POST /sms/batch", "send", 422),
    client("GET /sms/batch/{batch_id}", "read", 404),
    client("POST /sms/preview", "send", 422),
    client("GET /phone/validate/{number}", "read", 200),
    client("POST /templates", "send", 422),
    client("GET /templates", "read", 200),
    client("GET /templates/{template_id}", "read", 404),
    client("PATCH /templates/{template_id}", "send", 404),
    client("DELETE /templates/{template_id}", "send", 404),
    client("POST /otp/send", "send", 422),
    client("POST /otp/verify", "send", 422),
    client("GET /opt-outs", "admin", 200),
    client("POST /opt-outs", "admin", 422),
    client("DELETE /opt-outs/{number}", "admin", 404),
    client("POST /devices/enrollment-codes", "admin", 201),
    # An enrollment code in the body, or an admin key: the probe sends no code.
    client("POST /devices/register", "admin", 201, body=_DEVICE),
    client("GET /devices/", "read", 200),
    client("GET /devices/{device_id}", "read", 404),
    client("PATCH /devices/{device_id}", "admin", 404),
    client("DELETE /devices/{device_id}", "admin", 404),
    client("POST /devices/app-tokens", "admin", 201),
    client("GET /devices/app-tokens", "admin", 200),
    client("DELETE /devices/app-tokens/{token_id}", "admin", 404),
    client("POST /keys", "admin", 422),
    client("GET /keys", "admin", 200),
    client("DELETE /keys/{key_id}", "admin", 404),
    client("GET /stats", "read", 200),
    client("POST /webhooks", "admin", 422),
    client("GET /webhooks", "admin", 200),
    client("GET /webhooks/callback-secret", "admin", 200),
    client("GET /webhooks/{webhook_id}", "admin", 404),
    client("PATCH /webhooks/{webhook_id}", "admin", 404),
    client("DELETE /webhooks/{webhook_id}", "admin", 404),
    client("POST /webhooks/{webhook_id}/rotate-secret", "admin", 404),
    client("GET /webhooks/{webhook_id}/deliveries", "admin", 404),
    client("GET /webhooks/deliveries/{delivery_id}", "admin", 404),
    client("POST /webhooks/deliveries/{delivery_id}/replay", "admin", 404),
    client("POST /routes", "admin", 422),
    client("GET /routes", "admin", 200),
    client("GET /routes/{route_id}", "admin", 404),
    client("PATCH /routes/{route_id}", "admin", 404),
    client("DELETE /routes/{route_id}", "admin", 404),
    # A provider's delivery callback: its signature is the credential (docs/routes.md);
    # an unknown route is refused like a forged signature (403), which tells nothing.
    _row("POST /routes/{route_id}/callback", "the provider's signature", _all(403)),
    # Without SMSGW_METRICS_TOKEN (as here): an admin key. With it: that Bearer token only.
    client("GET /metrics", "admin", 200),
    # -- the agent's own --------------------------------------------------------------------
    _row(
        "POST /devices/heartbeat",
        "agent's token",
        {**_all(401), "agent": 200, "app phone": 403},
        body=_HEARTBEAT,
    ),
    # The WebSocket upgrade (not a Starlette route: smsgw/api/device_ws.py); 101: the
    # socket is open.
    _row("GET /ws/device", "agent's token", {**_all(401), "agent": 101, "app phone": 403}),
    # -- public -----------------------------------------------------------------------------
    public("GET /health", 200),
    public("GET /ready", 200),
    public("GET /openapi.json", 200),
    public("GET /tls/ca.crt", 404),  # no `smsgw tls init` on the probed hub
    public("GET /agent/smsgw-agent.pyz", 404),  # no `make agent` for the probed hub
    public("GET /agent/smsgw-agent.pyz.sha256", 404),
    public("GET /docs", 200),
    public("GET /docs/static/init.js", 200),
    public("GET /docs/static", 200, probe="/docs/static/swagger-ui.css"),
    # -- SMSGate's 3rd-party API ----------------------------------------------------------
    smsgate("POST /api/3rdparty/v1/messages", "send", 400),
    smsgate("POST /api/3rdparty/v1/message", "send", 400),
    smsgate("GET /api/3rdparty/v1/messages", "read", 200),
    smsgate("GET /api/3rdparty/v1/messages/{message_id}", "read", 404),
    smsgate("DELETE /api/3rdparty/v1/messages/{message_id}", "send", 404),
    smsgate("GET /api/3rdparty/v1/devices", "read", 200),
    smsgate("GET /api/3rdparty/v1/device", "read", 200),
    smsgate("DELETE /api/3rdparty/v1/devices/{device_id}", "admin", 404),
    smsgate("GET /api/3rdparty/v1/settings", "admin", 200),
    smsgate("PATCH /api/3rdparty/v1/settings", "admin", 200),
    smsgate("PUT /api/3rdparty/v1/settings", "admin", 200),
    smsgate("GET /api/3rdparty/v1/webhooks", "admin", 200),
    smsgate("POST /api/3rdparty/v1/webhooks", "admin", 400),
    smsgate("DELETE /api/3rdparty/v1/webhooks/{webhook_id}", "admin", 404),
    smsgate("GET /api/3rdparty/v1/inbox", "read", 200),
    smsgate("POST /api/3rdparty/v1/inbox/refresh", "admin", 400),
    smsgate("POST /api/3rdparty/v1/inbox/export", "admin", 400),
    smsgate("POST /api/3rdparty/v1/messages/inbox/export", "admin", 400),
    smsgate("GET /api/3rdparty/v1/logs", "read", 501),
    smsgate("GET /api/3rdparty/v1/inbox/{message_id}/attachments/{part_id}", "read", 501),
    smsgate("DELETE /api/3rdparty/v1/auth/token/{jti}", "admin", 204),
    # Any key may ask for tokens of scopes it holds (the probe asks for none: 400).
    _row(
        "POST /api/3rdparty/v1/auth/token",
        "SMSGate: key or token",
        {**_all(401), "read": 400, "send": 400, "admin": 400},
    ),
    # Only a refresh token (from /auth/token), which no column holds.
    _row("POST /api/3rdparty/v1/auth/token/refresh", "refresh token", _all(401)),
    public("GET /api/3rdparty/v1/health", 200),
    public("GET /api/3rdparty/v1/health/ready", 200),
    public("GET /api/3rdparty/v1/health/startup", 200),
    public("GET /api/3rdparty/v1/health/live", 200),
    # -- the stock app's API ------------------------------------------------------------
    _row(
        "POST /api/mobile/v1/device",
        "app token, or `Code <enrollment code>`",
        {**_all(401), "app token": 400},
    ),
    app_phone("PATCH /api/mobile/v1/device", 400),
    app_phone("GET /api/mobile/v1/device", 200, anonymous=200),  # anonymous: its address
    app_phone("GET /api/mobile/v1/message", 200),
    app_phone("PATCH /api/mobile/v1/message", 400),
    app_phone("GET /api/mobile/v1/settings", 200),
    app_phone("GET /api/mobile/v1/webhooks", 200),
    app_phone("GET /api/mobile/v1/events", 200),  # a stream: the probe reads its status
    # The receiving URL's secret (in the path) and the body's signature; headers: nothing.
    _row("POST /api/mobile/v1/webhooks/{key}", "URL secret + signature", _all(401)),
    # An admin key as the Basic password (as the app's "user code" screen sends it).
    _row(
        "GET /api/mobile/v1/user/code",
        "admin key (Basic)",
        {**_all(401), "admin": 200},
        basic=True,
    ),
    # -- the dashboard ------------------------------------------------------------------------
    public("GET /ui", 308),  # to /ui/
    public("GET /ui/static", 200, probe="/ui/static/ui.css"),
    public("GET /ui/sign-in", 200),
    # The form's own CSRF token (bound to its cookie) comes first: none sent here.
    _row("POST /ui/sign-in", "an API key in the form", _all(403)),
    _row("POST /ui/sign-out", "dashboard session + CSRF", _all(303)),  # no session: to sign-in
    page("/ui/"),
    page("/ui/phones"),
    page("/ui/phones/events"),
    page("/ui/phones/{device_id}"),
    form("/ui/phones/add"),
    form("/ui/phones/{device_id}"),
    form("/ui/phones/{device_id}/remove"),
    page("/ui/messages"),
    page("/ui/messages/{message_id}"),
    form("/ui/messages/{message_id}/cancel"),
    page("/ui/send"),
    form("/ui/send"),
    form("/ui/send/preview"),
    page("/ui/inbox"),
    page("/ui/webhooks"),
    page("/ui/webhooks/{webhook_id}"),
    form("/ui/deliveries/{delivery_id}/replay"),
    page("/ui/keys"),
    form("/ui/keys"),
    form("/ui/keys/{key_id}/revoke"),
    page("/ui/templates"),
    form("/ui/templates"),
    form("/ui/templates/{template_id}/delete"),
    page("/ui/opt-outs"),
    form("/ui/opt-outs"),
    form("/ui/opt-outs/{number}/remove"),
)


INTRO = """\
# Who may call what

Every route of the hub against every kind of credential: the status each request gets.
Generated from `smsgw/access_table.py` (`python -m smsgw.access_table > docs/access.md`);
`tests/smsgw/test_access_table.py` sends every request of this table to a live hub and
expects exactly these answers, fails when a route of the app is missing from the table, and
fails when this page differs from the module's rendering.

How to read it:

- Each credential is sent as `Authorization: Bearer <secret>` (`X-API-Key` works as
  Bearer for API keys), except on the row marked *Basic*, where it is the password of
  `Authorization: Basic`. On SMSGate's API an API key also works as the Basic password.
- The probe is harmless: unknown ids in the path and an empty JSON object as the body of
  a `POST`, `PUT` or `PATCH` (except where the row's route needs more to reach its
  credential check: `POST /devices/register` sends a phone without an enrollment code,
  `POST /devices/heartbeat` a valid heartbeat). So a caller let in usually gets the
  route's own refusal: `404` (nothing by that id), `422` (smsgw's API) or `400` (SMSGate's
  and the app's APIs) for the empty body. Any of those, like `2xx`, means *allowed*.
- `401`: no valid credential for this route (missing, unknown, expired, revoked, or of a
  kind this route does not read). `403`: a valid credential that may not do this (a key
  without the scope, a device token on a client route, an app phone's token on the
  agent's). Past `SMSGW_AUTH_FAILURE_LIMIT` failed authentications a minute from one
  address, a 401 of a presented credential becomes `429` (README, "Rate limits"); the
  table is probed with that limit off.
- `GET` routes answer `HEAD` the same way. A method a path does not serve is `405`, an
  unknown path `404`, whatever the credential.
- The dashboard (`/ui/`) reads only its session cookie, never these headers: without a
  session a page is `303` to the sign-in form and a form post is `401`. Its own checks
  (the key's scopes, CSRF) are tested in `tests/smsgw/ui/`.
- `/metrics` here is without `SMSGW_METRICS_TOKEN`; with it, only that Bearer token.
"""


def render() -> str:
    """docs/access.md: the introduction, the legend and the table."""
    lines = [INTRO, "| Column | Credential |", "|---|---|"]
    lines += [f"| {c.name} | {c.what} |" for c in CREDENTIALS]
    lines.append("")
    header = ["Method", "Route", "Takes", *KINDS]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in ROWS:
        takes = row.takes + (" (*Basic*)" if row.basic else "")
        cells = [row.method, f"`{row.route}`", takes, *(str(a) for a in row.answers)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
