"""The dashboard calls the REST API's own handlers: one implementation of every rule.

``call(ui, handler, ...)`` runs an endpoint's handler as the signed-in key, with the
endpoint's declared scope for anything that changes state (a ``read`` key sees every
page; sending needs ``send``; managing phones, keys and webhooks needs ``admin``, as in
the API), the same per-key rate limit, and the body validated by the endpoint's own
pydantic model. Form fields arrive as strings: the action converts them to the types the
model declares before ``body``; the model then validates them as for a JSON caller.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from smsgw.api import api
from smsgw.api.framework import Call, Endpoint, Handler, Reply, count_request, parse_model
from smsgw.errors import ApiError
from smsgw.ui.page import Ui

M = TypeVar("M", bound=BaseModel)

_ENDPOINTS: dict[Handler, Endpoint] = {}


def endpoint_of(handler: Handler) -> Endpoint:
    if not _ENDPOINTS:
        _ENDPOINTS.update({ep.handler: ep for ep in api.endpoints})
    return _ENDPOINTS[handler]


def allowed(ui: Ui, handler: Handler) -> bool:
    """Whether the signed-in key may run this endpoint (pages hide what it may not)."""
    ep = endpoint_of(handler)
    return ep.method == "GET" or ep.scope is None or ui.who.principal.allows(ep.scope)


def model(ui: Ui, cls: type[M], data: dict[str, Any]) -> M:
    """A form's fields validated by an API body model (absent fields left to defaults)."""
    return parse_model(cls, {k: v for k, v in data.items() if v is not None and v != ""})


async def call(ui: Ui, handler: Handler, *, body: BaseModel | None = None, **path: str) -> Any:
    """The handler's result model (``None`` for an empty answer); ``ApiError`` as the API."""
    ep = endpoint_of(handler)
    principal = ui.who.principal
    if not allowed(ui, handler):
        raise ApiError(403, "insufficient_scope", f"this key lacks the '{ep.scope}' scope")
    if ep.method != "GET":
        count_request(ui.hub, principal)
    # The API's handlers read path parameters by the API's names, and the hub's public URL
    # from the request (the install commands and app settings they return).
    request = Request({**ui.request.scope, "path_params": path}, ui.request.receive)
    result = await handler(Call(request, ui.hub, principal, body))
    if isinstance(result, Reply):
        return result.model
    if isinstance(result, Response):
        raise TypeError(f"{handler.__name__} answers a raw response: not for the dashboard")
    return result
