"""The OpenAPI 3.1 document, generated from the declared endpoints and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from smsgw import __version__
from smsgw.api.framework import Api, Endpoint
from smsgw.api.models import ErrorOut

_DESCRIPTION = (
    "Self-hosted SMS gateway. Authenticate with `X-API-Key: <key>` or "
    "`Authorization: Bearer <key>`. Every error has the shape "
    '`{"error": {"code": "...", "message": "..."}}` (SMSGate\'s API under '
    '`/api/3rdparty/v1` answers `{"message": "...", "code": "..."}`, as its clients expect). '
    "Phones connect to `GET /ws/device` (a WebSocket, not listed here): the device protocol "
    "is documented in docs/protocol.md and defined in android_client/wire.py."
)


def build_openapi(api: Api) -> dict[str, Any]:
    models: set[type[BaseModel]] = set()
    for ep in api.endpoints:
        models.update(m for m in (ep.body, ep.query, *ep.responses.values()) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, defs = models_json_schema(
        [(m, "validation") for m in ordered] + [(m, "serialization") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )

    def ref(model: type[BaseModel], mode: str) -> dict[str, Any]:
        return dict(refs[(model, mode)])  # type: ignore[index]

    schemas: dict[str, Any] = defs.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for ep in api.endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": ep.handler.__name__,
            "responses": {},
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", ep.path)
        ]
        if ep.query is not None:
            params.extend(_query_params(ep.query, schemas))
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body, "validation")}},
            }
        for status, model in sorted(_responses(ep).items()):
            resp: dict[str, Any] = {"description": _reason(status)}
            if model is not None:
                resp["content"] = {"application/json": {"schema": ref(model, "serialization")}}
            op["responses"][str(status)] = resp
        if ep.scope is not None:
            op["security"] = [{"ApiKey": []}, {"Bearer": []}]
            op["description"] = f"Requires a client key with scope `{ep.scope}`."
        elif ep.security:
            op["description"] = f"Authentication: {ep.security}."
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "smsgw", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _query_params(query: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    """The query model's fields as parameters, each with its validation schema. Absent
    (or empty: ``?limit=``) is the default, so null, which a query string cannot say, is
    left out of each schema, and an optional one allows the empty value."""
    model = schemas[query.__name__]
    required = set(model.get("required", ()))
    params = []
    for name, prop in model["properties"].items():
        schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
        options = [s for s in schema.pop("anyOf", ()) if s != {"type": "null"}]
        if len(options) == 1:
            schema.update(options[0])
        elif options:
            schema["anyOf"] = options
        if schema.get("default", 0) is None:
            del schema["default"]
        described = schema.pop("description", None)  # a type's own (E164), if the field has none
        params.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "schema": schema,
                "description": prop.get("description") or described or "",
                # ?since= is taken as absent (framework.query_values), not as a bad date.
                **({} if name in required else {"allowEmptyValue": True}),
            }
        )
    return params


def _responses(ep: Endpoint) -> dict[int, type[BaseModel] | None]:
    """The endpoint's answers, with those the framework gives any operation of its kind:
    400 (not JSON) and 413 (too large) to every one with a body, 422 to every one with a
    query model, 429 to every one that refuses credentials. In the error body the endpoint
    already documents (SMSGate's on its API)."""
    out = dict(ep.responses)
    error = next((m for s, m in sorted(out.items()) if s >= 400 and m is not None), ErrorOut)
    added = ([400, 413] if ep.body is not None else []) + ([422] if ep.query is not None else [])
    if 401 in out:  # a refused credential, past the per-address limit (smsgw/ratelimit.py)
        added.append(429)
    for status in added:
        out.setdefault(status, error)
    return out


def _reason(status: int) -> str:
    return {
        200: "OK",
        201: "Created",
        202: "Accepted: still in the outbox",
        204: "No Content",
        400: "Invalid JSON",
        401: "Missing or bad credentials",
        403: "Key lacks the scope",
        404: "Unknown id",
        409: "Conflict",
        413: "Body too large",
        415: "Not JSON",
        422: "Invalid fields",
        429: "Too many requests (or failed authentications): see Retry-After",
        503: "Not ready",
    }.get(status, "")
