"""The dashboard's request layer: who is signed in, CSRF on every form, rendering, errors.

A view is declared with ``@view`` (pages: a session with ``read``) or ``@action`` (forms:
a session, the CSRF token, and then the scope the API's own endpoint declares, checked
by ``bridge.call``). An ``ApiError`` raised by an API handler becomes the same page with
the API's code and message, and the API's status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from smsgw.api.framework import read_body
from smsgw.auth import Scope
from smsgw.errors import ApiError
from smsgw.hub import Hub
from smsgw.ui.sessions import Sessions, SignedIn, csrf_ok

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
# Every page: scripts and styles from the hub only (no inline script anywhere, so an
# injected one cannot run), no framing (a signed-in admin cannot be clickjacked into a
# button), forms post only here.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(request: Request, template: str, context: dict[str, Any], status: int) -> Response:
    """A rendered page with the dashboard's security headers."""
    response = TEMPLATES.TemplateResponse(request, template, context, status_code=status)
    response.headers.update(SECURITY_HEADERS)
    return response


# A form is a few fields: far below the API's body limit.
MAX_FORM_BYTES = 64 * 1024


@dataclass(slots=True)
class Ui:
    """One dashboard request: the request, the hub, who is signed in, the form."""

    request: Request
    hub: Hub
    who: SignedIn
    form: dict[str, str] = field(default_factory=dict)
    lists: dict[str, list[str]] = field(default_factory=dict)

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        context.update(
            request=self.request,
            who=self.who.principal,
            csrf=self.who.session.csrf,
            notice=self.request.query_params.get("notice"),
            can_send=self.who.principal.allows(Scope.SEND),
            can_admin=self.who.principal.allows(Scope.ADMIN),
        )
        return page(self.request, template, context, status)

    def field(self, name: str, default: str = "") -> str:
        return self.form.get(name, default).strip()

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])


def sessions(request: Request) -> Sessions:
    found: Sessions = request.app.state.ui_sessions
    return found


def back(to: str, notice: str | None = None) -> Response:
    """After a form: 303 to a page (a reload does not post again), with a notice."""
    if notice:
        to += ("&" if "?" in to else "?") + urlencode({"notice": notice})
    return RedirectResponse(to, status_code=303)


View = Callable[[Ui], Awaitable[Response]]


def view(fn: View) -> Callable[[Request], Awaitable[Response]]:
    """A page: any session whose key can read."""
    return _endpoint(fn, post=False)


def action(fn: View) -> Callable[[Request], Awaitable[Response]]:
    """A form post: a session and its CSRF token; the scope is the API endpoint's."""
    return _endpoint(fn, post=True)


def _endpoint(fn: View, *, post: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        hub: Hub = request.app.state.hub
        who = await sessions(request).current(request)
        if who is None:
            if post or request.headers.get("hx-request"):
                return _refused(request, 401, "not_signed_in", "sign in again")
            return RedirectResponse(f"/ui/sign-in?next={request.url.path}", status_code=303)
        ui = Ui(request, hub, who)
        try:
            if post:
                await _read_form(ui)
                token = request.headers.get("x-csrf-token") or ui.form.get("csrf")
                if not csrf_ok(who, token):
                    raise ApiError(403, "csrf_failed", "the form's CSRF token is missing or wrong")
            elif not who.principal.allows(Scope.READ):
                raise ApiError(403, "insufficient_scope", "the dashboard needs a key with 'read'")
            return await fn(ui)
        except ApiError as exc:
            return ui.render("error.html", exc.status, code=exc.code, message=exc.message)

    endpoint.__name__ = fn.__name__
    return endpoint


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded form, size-limited like every body the hub reads."""
    raw = await read_body(request, MAX_FORM_BYTES)
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw.decode(errors="replace"), keep_blank_values=True):
        fields.setdefault(name, []).append(value)
    return fields


async def _read_form(ui: Ui) -> None:
    ui.lists = await read_form(ui.request)
    ui.form = {name: values[-1] for name, values in ui.lists.items()}


def _refused(request: Request, status: int, code: str, message: str) -> Response:
    context = {"who": None, "code": code, "message": message, "csrf": ""}
    return page(request, "error.html", context, status)
