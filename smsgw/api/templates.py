"""Message templates: CRUD under ``/templates``; messages use them by ``template_id``."""

from __future__ import annotations

from smsgw.api import api
from smsgw.api.framework import Call, Reply
from smsgw.api.models import (
    BODY_ERRORS,
    ErrorOut,
    TemplateIn,
    TemplateList,
    TemplateOut,
    TemplatePatch,
    TemplateQuery,
)
from smsgw.auth import Scope
from smsgw.clock import new_id, utcnow
from smsgw.errors import ApiError
from smsgw.store import Conflict, Template
from smsgw.templating import variables


def template_out(t: Template) -> TemplateOut:
    return TemplateOut(
        id=t.id,
        name=t.name,
        body=t.body,
        category=t.category,
        active=t.active,
        variables=variables(t.body),
        usage_count=t.usage_count,
        created_at=t.created_at,
        updated_at=t.updated_at,
    )


@api.route(
    "POST",
    "/templates",
    tag="templates",
    scope=Scope.SEND,
    body=TemplateIn,
    summary="Create a template ({{variable}} placeholders)",
    responses={201: TemplateOut, 409: ErrorOut, **BODY_ERRORS},
)
async def create_template(call: Call) -> Reply:
    body: TemplateIn = call.body
    now = utcnow()
    t = Template(
        id=new_id(),
        name=body.name,
        body=body.body,
        category=body.category,
        active=body.active,
        usage_count=0,
        created_at=now,
        updated_at=now,
    )
    try:
        await call.hub.store.create_template(t)
    except Conflict as exc:
        raise ApiError(409, "template_name_taken", str(exc)) from None
    return Reply(template_out(t), 201)


@api.route(
    "GET",
    "/templates",
    tag="templates",
    scope=Scope.READ,
    query=TemplateQuery,
    summary="List templates",
    responses={200: TemplateList, **BODY_ERRORS},
)
async def list_templates(call: Call) -> TemplateList:
    q: TemplateQuery = call.body
    rows = await call.hub.store.list_templates(category=q.category, active=q.active)
    return TemplateList(items=[template_out(t) for t in rows])


async def _template_or_404(call: Call) -> Template:
    t = await call.hub.store.get_template(call.path("template_id"))
    if t is None:
        raise ApiError(404, "template_not_found", f"no template {call.path('template_id')}")
    return t


@api.route(
    "GET",
    "/templates/{template_id}",
    tag="templates",
    scope=Scope.READ,
    summary="One template, with its usage count",
    responses={200: TemplateOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def get_template(call: Call) -> TemplateOut:
    return template_out(await _template_or_404(call))


@api.route(
    "PATCH",
    "/templates/{template_id}",
    tag="templates",
    scope=Scope.SEND,
    body=TemplatePatch,
    summary="Change a template",
    responses={200: TemplateOut, 404: ErrorOut, 409: ErrorOut, **BODY_ERRORS},
)
async def patch_template(call: Call) -> TemplateOut:
    body: TemplatePatch = call.body
    fields = body.model_dump(exclude_unset=True)  # null for name, body or active: 422 already
    try:
        t = await call.hub.store.update_template(call.path("template_id"), utcnow(), **fields)
    except Conflict as exc:
        raise ApiError(409, "template_name_taken", str(exc)) from None
    if t is None:
        raise ApiError(404, "template_not_found", f"no template {call.path('template_id')}")
    return template_out(t)


@api.route(
    "DELETE",
    "/templates/{template_id}",
    tag="templates",
    scope=Scope.SEND,
    summary="Delete a template",
    responses={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
)
async def delete_template(call: Call) -> Reply:
    if not await call.hub.store.delete_template(call.path("template_id")):
        raise ApiError(404, "template_not_found", f"no template {call.path('template_id')}")
    return Reply(None, 204)
