"""The dashboard's forms: each converts its fields and runs the API endpoint that does it."""

from __future__ import annotations

import segno
from starlette.responses import Response

from smsgw.api import devices, keys, messages, optouts, templates, webhooks
from smsgw.api.models import (
    AppTokenIn,
    DevicePatch,
    DispatchIn,
    EnrollmentCodeIn,
    KeyIn,
    OptOutIn,
    PreviewIn,
    TemplateIn,
)
from smsgw.errors import ApiError
from smsgw.ui import bridge
from smsgw.ui.bridge import call
from smsgw.ui.page import Ui, action, back


def _int(ui: Ui, name: str) -> int | None:
    raw = ui.field(name)
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(422, "invalid_request", f"{name}: a whole number is expected") from None


def _checked(ui: Ui, name: str) -> bool:
    return ui.field(name) in ("on", "true", "1")


# -- phones ------------------------------------------------------------------------------


@action
async def patch_phone(ui: Ui) -> Response:
    device_id = ui.path("device_id")
    fields: dict[str, object] = {}
    if "enabled" in ui.form:
        fields["enabled"] = ui.field("enabled") == "true"
    if "daily_quota" in ui.form:
        fields["daily_quota"] = _int(ui, "daily_quota")
    if ui.field("name"):
        fields["name"] = ui.field("name")
    body = bridge.model(ui, DevicePatch, fields)
    p = await call(ui, devices.patch_device, body=body, device_id=device_id)
    state = "enabled" if p.enabled else "disabled"
    return back(f"/ui/phones/{device_id}", f"{p.name}: {state}, quota {p.daily_quota}/day")


@action
async def remove_phone(ui: Ui) -> Response:
    await call(ui, devices.delete_device, device_id=ui.path("device_id"))
    return back("/ui/phones", "phone removed")


def qr_svg(data: str) -> str:
    """An inline SVG QR code (segno), for a phone's camera."""
    return str(segno.make(data, error="m").svg_inline(scale=4, border=2))


@action
async def add_phone(ui: Ui) -> Response:
    kind = ui.field("kind", "agent")
    if kind == "app":
        token = await call(
            ui,
            devices.create_app_token,
            body=bridge.model(ui, AppTokenIn, {"name": ui.field("name") or None}),
        )
        return ui.render("phone_added.html", kind="app", token=token, qr=qr_svg(token.server_url))
    code = await call(ui, devices.create_enrollment_code, body=EnrollmentCodeIn())
    return ui.render(
        "phone_added.html", kind="agent", code=code, qr=qr_svg("\n".join(code.install))
    )


# -- messages ----------------------------------------------------------------------------


@action
async def preview(ui: Ui) -> Response:
    """The send form's live preview (htmx posts it as the text changes)."""
    text = ui.field("message")
    if not text:
        return ui.render("preview.html", preview=None)
    body = bridge.model(
        ui, PreviewIn, {"message": text, "smart_encoding": _checked(ui, "smart_encoding")}
    )
    return ui.render("preview.html", preview=await call(ui, messages.preview, body=body))


@action
async def send(ui: Ui) -> Response:
    fields = {
        "to": ui.field("to"),
        "message": ui.field("message"),
        "smart_encoding": _checked(ui, "smart_encoding"),
    }
    try:
        result = await call(ui, messages.dispatch, body=bridge.model(ui, DispatchIn, fields))
    except ApiError as exc:
        return ui.render("send.html", exc.status, result=None, error=exc, form=fields)
    return ui.render("send.html", result=result, form={})


@action
async def cancel(ui: Ui) -> Response:
    msg = await call(ui, messages.cancel_message, message_id=ui.path("message_id"))
    return back(f"/ui/messages/{msg.id}", "cancelled")


# -- webhooks ------------------------------------------------------------------------------


@action
async def replay(ui: Ui) -> Response:
    d = await call(ui, webhooks.replay_delivery, delivery_id=ui.path("delivery_id"))
    to = f"/ui/webhooks/{d.webhook_id}" if d.webhook_id else "/ui/webhooks"
    return back(to, f"delivery {d.id} queued again")


# -- keys, templates, opt-outs -----------------------------------------------------------------


@action
async def create_key(ui: Ui) -> Response:
    body = bridge.model(ui, KeyIn, {"name": ui.field("name"), "scopes": ui.lists.get("scopes")})
    created = await call(ui, keys.create_key, body=body)
    listed = (await call(ui, keys.list_keys)).items
    return ui.render("keys.html", keys=listed, created=created)


@action
async def revoke_key(ui: Ui) -> Response:
    await call(ui, keys.revoke_key, key_id=ui.path("key_id"))
    return back("/ui/keys", "key revoked: its dashboard sessions ended with it")


@action
async def create_template(ui: Ui) -> Response:
    fields = {"name": ui.field("name"), "body": ui.field("body"), "category": ui.field("category")}
    t = await call(ui, templates.create_template, body=bridge.model(ui, TemplateIn, fields))
    return back("/ui/templates", f"template {t.name} created")


@action
async def delete_template(ui: Ui) -> Response:
    await call(ui, templates.delete_template, template_id=ui.path("template_id"))
    return back("/ui/templates", "template deleted")


@action
async def add_opt_out(ui: Ui) -> Response:
    fields = {"number": ui.field("number"), "reason": ui.field("reason")}
    await call(ui, optouts.add_opt_out, body=bridge.model(ui, OptOutIn, fields))
    return back("/ui/opt-outs", "number opted out")


@action
async def remove_opt_out(ui: Ui) -> Response:
    await call(ui, optouts.remove_opt_out, number=ui.path("number"))
    return back("/ui/opt-outs", "opt-out removed")
