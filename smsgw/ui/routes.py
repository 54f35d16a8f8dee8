"""The dashboard's routes, its sign-in and sign-out, and the files the hub serves itself
(the dashboard's script and style, Swagger UI for /docs): no page loads from another host.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from smsgw.auth import Scope, client_address
from smsgw.errors import ApiError
from smsgw.ui import actions, live, pages
from smsgw.ui.page import page, read_form, sessions
from smsgw.ui.sessions import csrf_ok

STATIC = Path(__file__).parent / "static"


def _swagger_files() -> Path:
    # swagger-ui-py carries Swagger UI's files; only they are used, not its handlers.
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed (a dependency of smsgw)")
    return Path(spec.origin).parent / "static"


SWAGGER = _swagger_files()

DOCS_PAGE = """<!doctype html>
<html><head><title>smsgw API</title><meta charset="utf-8">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/init.js"></script>
</body></html>"""
# Outside the page: a Content-Security-Policy without 'unsafe-inline' can cover /docs too.
DOCS_INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});\n'


def _local(target: str | None) -> str:
    """Where to go after sign-in: a path of the dashboard, never another host."""
    if not target:
        return "/ui/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/ui/"):
        return "/ui/"
    return parts.path


async def sign_in_form(request: Request) -> Response:
    return await _sign_in_page(request, None, 200, request.query_params.get("next"))


async def _sign_in_page(
    request: Request, error: str | None, status: int, after: str | None = None
) -> Response:
    ui = sessions(request)
    nonce, token = await ui.sign_in_token(request)
    context = {
        "who": None,
        "error": error,
        "csrf": token,
        "next": _local(after),
    }
    response = page(request, "sign_in.html", context, status)
    ui.remember_sign_in(request, response, nonce)
    return response


async def sign_in(request: Request) -> Response:
    ui = sessions(request)
    try:
        form = {k: v[-1] for k, v in (await read_form(request)).items()}
    except ApiError as exc:
        return await _sign_in_page(request, exc.message, exc.status)
    after = form.get("next")
    if not await ui.sign_in_token_ok(request, form.get("csrf", "")):
        return await _sign_in_page(request, "the form expired: try again", 403, after)
    secret = form.get("key", "").strip()
    auth = request.app.state.hub.auth
    principal = await auth.resolve_client(secret) if secret else None
    if principal is None:
        refusal = ApiError(401, "unauthorized", "invalid or revoked API key")
        if secret:  # a key that is wrong, not a form sent empty, counts as a failure
            refusal = auth.failures.refuse(client_address(request), refusal)
        page = await _sign_in_page(request, refusal.message, refusal.status, after)
        page.headers.update(refusal.headers or {})  # Retry-After on a 429
        return page
    if not principal.allows(Scope.READ):
        return await _sign_in_page(request, "the dashboard needs a key with 'read'", 403, after)
    cookie, _ = await ui.start(principal, secret)
    response = RedirectResponse(_local(after), status_code=303)
    ui.set_cookie(request, response, cookie)
    return response


async def sign_out(request: Request) -> Response:
    ui = sessions(request)
    who = await ui.current(request)
    response = RedirectResponse("/ui/sign-in", status_code=303)
    if who is not None:
        token = (await read_form(request)).get("csrf", [""])[-1]
        if not csrf_ok(who, token):
            return HTMLResponse("the form's CSRF token is missing or wrong", 403)
        await ui.end(who, response)
    return response


async def docs(request: Request) -> Response:
    return HTMLResponse(DOCS_PAGE)


async def docs_init(request: Request) -> Response:
    return Response(DOCS_INIT, media_type="text/javascript")


def routes() -> list[BaseRoute]:
    return [
        Route("/docs", docs),
        Route("/docs/static/init.js", docs_init),
        Mount("/docs/static", StaticFiles(directory=SWAGGER)),
        Route("/ui", lambda r: RedirectResponse("/ui/", 308)),
        Mount("/ui/static", StaticFiles(directory=STATIC)),
        Route("/ui/sign-in", sign_in_form, methods=["GET"]),
        Route("/ui/sign-in", sign_in, methods=["POST"]),
        Route("/ui/sign-out", sign_out, methods=["POST"]),
        Route("/ui/", pages.overview),
        Route("/ui/phones", pages.phones),
        Route("/ui/phones/events", live.phone_events),
        Route("/ui/phones/add", actions.add_phone, methods=["POST"]),
        Route("/ui/phones/{device_id}", pages.phone),
        Route("/ui/phones/{device_id}", actions.patch_phone, methods=["POST"]),
        Route("/ui/phones/{device_id}/remove", actions.remove_phone, methods=["POST"]),
        Route("/ui/messages", pages.message_list),
        Route("/ui/messages/{message_id}", pages.message),
        Route("/ui/messages/{message_id}/cancel", actions.cancel, methods=["POST"]),
        Route("/ui/send", pages.send_form),
        Route("/ui/send", actions.send, methods=["POST"]),
        Route("/ui/send/preview", actions.preview, methods=["POST"]),
        Route("/ui/inbox", pages.inbox),
        Route("/ui/webhooks", pages.webhook_list),
        Route("/ui/webhooks/{webhook_id}", pages.webhook),
        Route("/ui/deliveries/{delivery_id}/replay", actions.replay, methods=["POST"]),
        Route("/ui/keys", pages.key_list),
        Route("/ui/keys", actions.create_key, methods=["POST"]),
        Route("/ui/keys/{key_id}/revoke", actions.revoke_key, methods=["POST"]),
        Route("/ui/templates", pages.template_list),
        Route("/ui/templates", actions.create_template, methods=["POST"]),
        Route("/ui/templates/{template_id}/delete", actions.delete_template, methods=["POST"]),
        Route("/ui/opt-outs", pages.opt_out_list),
        Route("/ui/opt-outs", actions.add_opt_out, methods=["POST"]),
        Route("/ui/opt-outs/{number}/remove", actions.remove_opt_out, methods=["POST"]),
    ]
