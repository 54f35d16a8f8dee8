"""Bulk sends: ``POST /sms/batch`` (JSON or CSV), ``GET /sms/batch/{id}``.

Every row goes through the same checks as a single message; invalid rows are reported
by row number and do not stop the others. The valid ones are stored in one transaction
and left to the outbox, which spreads them over the eligible phones within each phone's
in-flight limit and daily quota.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from smsgw.api import api
from smsgw.api.framework import Call, parse_model, query_values, read_body
from smsgw.api.messages import prepare
from smsgw.api.models import DispatchIn, ErrorOut, HttpUrl, Instant, Strict, Variables, one_of
from smsgw.auth import Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError, validation_details
from smsgw.idempotency import HEADER as IDEMPOTENCY_HEADER
from smsgw.idempotency import request_hash
from smsgw.store import Batch, Message

MAX_ROWS = 10_000


class BatchRow(Strict):
    to: str = Field(min_length=1, max_length=64)
    variables: Variables | None = None
    custom_id: str | None = Field(default=None, min_length=1, max_length=100)


class BatchOptions(Strict):
    """Exactly one of message and template_id."""

    model_config = ConfigDict(json_schema_extra=one_of("message", "template_id"))

    name: str | None = Field(default=None, max_length=100)
    message: str | None = Field(default=None, min_length=1, max_length=1600)
    template_id: str | None = Field(default=None, max_length=64)
    smart_encoding: StrictBool = False
    send_at: Instant | None = None
    ttl: StrictFloat | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    expires_at: Instant | None = None
    priority: StrictInt = Field(default=0, ge=-100, le=100)
    metadata: dict[str, Any] | None = None
    callback_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _text_source(self) -> BatchOptions:
        if (self.message is None) == (self.template_id is None):
            raise ValueError("give either message or template_id")
        return self


class CsvOptions(BatchOptions):
    """The options of a CSV batch, from the query string: text, read as numbers and
    booleans where the JSON body takes those types strictly."""

    smart_encoding: bool = False
    ttl: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    priority: int = Field(default=0, ge=-100, le=100)


class BatchIn(BatchOptions):
    recipients: list[BatchRow] = Field(min_length=1, max_length=MAX_ROWS)


class RowError(BaseModel):
    row: int = Field(description="1-based index in recipients (CSV: data line number)")
    to: str | None
    code: str
    message: str


class BatchCreated(BaseModel):
    batch_id: str
    accepted: int
    rejected: int
    errors: list[RowError]


class BatchOut(BaseModel):
    id: str
    name: str | None
    created_at: datetime
    total: int
    rejected: int
    by_status: dict[str, int]
    done: bool = Field(description="no message of the batch is PENDING or QUEUED any more")


async def _rows(request: Request, limit: int) -> tuple[BatchOptions, list[dict[str, Any]], Any]:
    """Options and raw rows from a JSON body, or from CSV plus query-string options."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await read_body(request, limit)
    if ctype == "text/csv":
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid_csv", "CSV must be UTF-8") from None
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or "to" not in reader.fieldnames:
            raise ApiError(422, "invalid_csv", "the CSV needs a header row with a 'to' column")
        options: BatchOptions = parse_model(CsvOptions, query_values(request))
        rows: list[dict[str, Any]] = []
        for line in reader:
            if len(rows) >= MAX_ROWS:
                raise ApiError(422, "too_many_rows", f"at most {MAX_ROWS} rows per batch")
            to = (line.pop("to", None) or "").strip()
            variables = {k: v for k, v in line.items() if k is not None and v is not None}
            rows.append({"to": to, "variables": variables or None})
        if not rows:
            raise ApiError(422, "invalid_csv", "the CSV has no data rows")
        return options, rows, {"csv": text, "query": sorted(request.query_params.items())}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if (
        isinstance(data, dict)
        and isinstance(data.get("recipients"), list)
        and (len(data["recipients"]) > MAX_ROWS)
    ):
        raise ApiError(422, "too_many_rows", f"at most {MAX_ROWS} rows per batch")
    body = parse_model(BatchIn, data)
    rows = [r.model_dump() for r in body.recipients]
    return body, rows, data


@api.route(
    "POST",
    "/sms/batch",
    tag="sms",
    scope=Scope.SEND,
    summary="Send to up to 10,000 recipients (JSON, or text/csv with a 'to' column)",
    responses={
        202: BatchCreated,
        400: ErrorOut,
        401: ErrorOut,
        403: ErrorOut,
        413: ErrorOut,
        422: ErrorOut,
    },
    body=BatchIn,
    raw_body=True,
)
async def create_batch(call: Call) -> Response:
    hub, request = call.hub, call.request
    options, rows, fingerprint_source = await _rows(request, hub.settings.max_batch_bytes)

    async def run() -> Response:
        batch_id = new_id()
        messages: list[Message] = []
        errors: list[RowError] = []
        common = options.model_dump(exclude={"name", "recipients"}, exclude_none=True)
        for index, row in enumerate(rows, start=1):
            try:
                body = DispatchIn.model_validate({**common, **row, "wait": False})
                messages.append(await prepare(hub, call.principal, body, batch_id=batch_id))
            except ValidationError as exc:
                first = validation_details(exc)[0]
                errors.append(
                    RowError(
                        row=index,
                        to=row.get("to"),
                        code="invalid_request",
                        message=f"{first['field']}: {first['message']}",
                    )
                )
            except ApiError as exc:
                if exc.status == 429 and exc.code != "recipient_rate_limited":
                    raise  # a key-wide limit stops the batch, not just the row
                errors.append(
                    RowError(row=index, to=row.get("to"), code=exc.code, message=exc.message)
                )
        batch = Batch(
            id=batch_id,
            name=options.name,
            total=len(messages),
            rejected=len(errors),
            created_at=utcnow(),
        )
        await hub.store.create_batch(batch, messages)
        if messages and messages[0].template_id is not None:
            await hub.store.count_template_use(messages[0].template_id, len(messages))
        hub.dispatcher.wake(due=True)
        out = BatchCreated(
            batch_id=batch_id, accepted=len(messages), rejected=len(errors), errors=errors
        )
        return JSONResponse(out.model_dump(mode="json"), status_code=202)

    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and call.principal is not None:
        owner = call.principal.key_id or call.principal.name
        fingerprint = request_hash("POST", request.url.path, fingerprint_source)
        return await hub.idempotency.run(owner, key, fingerprint, run)
    return await run()


@api.route(
    "GET",
    "/sms/batch/{batch_id}",
    tag="sms",
    scope=Scope.READ,
    summary="A batch's progress: counts per status",
    responses={200: BatchOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def get_batch(call: Call) -> BatchOut:
    batch = await call.hub.store.get_batch(call.path("batch_id"))
    if batch is None:
        raise ApiError(404, "batch_not_found", f"no batch {call.path('batch_id')}")
    open_ = batch.by_status.get("PENDING", 0) + batch.by_status.get("QUEUED", 0)
    return BatchOut(
        id=batch.id,
        name=batch.name,
        created_at=batch.created_at,
        total=batch.total,
        rejected=batch.rejected,
        by_status=batch.by_status,
        done=open_ == 0,
    )
