"""The OpenAPI 3.1 document, generated from the declared endpoints and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from smsgw import __version__
from smsgw.api.framework import Api

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
            for name, field in ep.query.model_fields.items():
                params.append(
                    {
                        "name": field.alias or name,
                        "in": "query",
                        "required": False,
                        "schema": {},
                        "description": field.description or "",
                    }
                )
        if params:
            op["parameters"] = params
        if ep.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": ref(ep.body, "validation")}},
            }
        for status, model in sorted(ep.responses.items()):
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
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


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
        503: "Not ready",
    }.get(status, "")
