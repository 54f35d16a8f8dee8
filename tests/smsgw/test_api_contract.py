"""The API's contract (issue 21): /openapi.json says what the hub does (statuses, query
parameters, nullability, strict types), every error code the code can answer is in the
README's table, and a 405 names every method of its path."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from smsgw import numbers
from smsgw.auth import ALL_SCOPES
from smsgw.errors import _HTTP_CODES
from tests.harness import Farm, HubServer

ROOT = Path(__file__).resolve().parents[2]
TO = "+12025550999"


async def spec_of(hub: HubServer) -> dict[str, Any]:
    async with hub.client(key=None) as c:
        spec: dict[str, Any] = (await c.get("/openapi.json")).json()
    return spec


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def schema_of(spec: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    name = ref["$ref"].rsplit("/", 1)[1]
    schema: dict[str, Any] = spec["components"]["schemas"][name]
    return schema


def nullable(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(s == {"type": "null"} for s in prop.get("anyOf", ()))


# -- the schema ------------------------------------------------------------------------


async def test_every_operation_documents_what_the_framework_answers(hub: HubServer) -> None:
    """400 (not JSON) and 413 (too large) on every operation with a body, 422 on every one
    with a query model, and no query or path parameter without a schema."""
    spec = await spec_of(hub)
    bodies = queries = 0
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        if "requestBody" in op:
            bodies += 1
            assert {"400", "413"} <= set(op["responses"]), where
        for param in op.get("parameters", []):
            assert param["schema"], f"{where}: {param['name']} has an empty schema"
            if param["in"] == "query":
                queries += 1
                assert "422" in op["responses"], where
    assert bodies > 30 and queries > 15  # the walk saw the API, not an empty document
    # The one found by the fuzzer: a NUL byte to POST /opt-outs is a documented 400.
    assert {"400", "413"} <= set(spec["paths"]["/opt-outs"]["post"]["responses"])
    async with hub.client() as c:
        r = await c.post("/opt-outs", content=b"\x00")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


async def test_query_parameters_are_published_with_their_schemas(hub: HubServer) -> None:
    spec = await spec_of(hub)

    def params(path: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p["schema"] for p in spec["paths"][path]["get"]["parameters"]}

    assert params("/opt-outs")["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 1000,
        "default": 100,
    }
    assert params("/sms/")["status"] == {"$ref": "#/components/schemas/Status"}
    assert params("/sms/")["since"] == {"type": "string", "format": "date-time"}
    assert params("/sms/inbound")["from"]["type"] == "string"
    assert params("/stats").keys() == {"from", "to"}
    assert params("/templates")["active"] == {"type": "boolean"}
    deliveries = params("/webhooks/{webhook_id}/deliveries")
    assert deliveries["status"]["enum"] == ["pending", "succeeded", "dead"]


async def test_an_empty_query_value_is_absent(hub: HubServer, api: httpx.AsyncClient) -> None:
    """``?limit=`` is what a form or a template with an unset value sends: the default."""
    hook = (
        await api.post("/webhooks", json={"url": "http://127.0.0.1:9/", "events": ["*"]})
    ).json()
    for url in [
        "/opt-outs?limit=&cursor=",
        "/sms/?limit=&status=&cursor=&since=&device_id=",
        "/sms/inbound?from=&limit=",
        "/stats?from=&to=",
        "/templates?active=&category=",
        f"/webhooks/{hook['id']}/deliveries?status=&limit=",
    ]:
        r = await api.get(url)
        assert r.status_code == 200, (url, r.text)
    # A value that is there is still checked.
    for url in ["/opt-outs?limit=abc", "/opt-outs?limit=0", "/sms/?status=LOST"]:
        r = await api.get(url)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request", url


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/devices/enrollment-codes", {"ttl_seconds": True}, "ttl_seconds"),
        ("/devices/enrollment-codes", {"ttl_seconds": "60"}, "ttl_seconds"),
        ("/sms/dispatch", {"to": TO, "message": "x", "wait": 0}, "wait"),
        ("/sms/dispatch", {"to": TO, "message": "x", "wait": "false"}, "wait"),
        ("/sms/dispatch", {"to": TO, "message": "x", "priority": True}, "priority"),
        ("/sms/dispatch", {"to": TO, "message": "x", "priority": "5"}, "priority"),
        ("/sms/dispatch", {"to": TO, "message": "x", "ttl": True}, "ttl"),
        ("/sms/dispatch", {"to": TO, "message": "x", "timeout": "5"}, "timeout"),
        ("/sms/dispatch", {"to": TO, "message": "x", "send_at": 4102444800}, "send_at"),
        ("/sms/dispatch", {"to": TO, "template_id": "t", "variables": {"a": True}}, "variables.a"),
        ("/sms/send", {"to": TO, "message": "x", "device_id": "d", "sim_slot": True}, "sim_slot"),
        ("/sms/preview", {"message": "x", "smart_encoding": 1}, "smart_encoding"),
        ("/sms/batch", {"message": "x", "recipients": [{"to": TO}], "priority": True}, "priority"),
        ("/otp/send", {"to": TO, "length": True}, "length"),
        ("/otp/send", {"to": TO, "alphanumeric": "yes"}, "alphanumeric"),
        ("/keys", {"name": "k", "scopes": ["send"], "rate_limit_rpm": True}, "rate_limit_rpm"),
        ("/templates", {"name": "t", "body": "b", "active": 1}, "active"),
        ("/webhooks", {"url": "http://127.0.0.1:9/", "events": ["*"], "enabled": 1}, "enabled"),
    ],
)
async def test_numbers_and_booleans_are_read_strictly(
    api: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    """true is not a number of seconds (it was: a code valid for 1 s), 0 is not false,
    "5" is not 5, and a date is not a Unix time: as the schema says."""
    r = await api.post(path, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert err["details"][0]["field"].startswith(field)  # a union adds its member: variables.a.str
    assert (await api.get("/sms/", params={"limit": 500})).json()["items"] == []


async def test_numbers_of_the_right_type_and_csv_options_are_still_read(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post("/devices/enrollment-codes", json={"ttl_seconds": 60})  # an int: seconds
    assert r.status_code == 201
    r = await api.post("/sms/dispatch", json={"to": TO, "message": "x", "wait": False, "ttl": 60})
    assert r.status_code == 202
    # A CSV batch's options come from the query string, which has only text.
    r = await api.post(
        "/sms/batch",
        params={"message": "hi", "priority": "5", "ttl": "60", "smart_encoding": "true"},
        content=f"to\n{TO}\n",
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text


async def test_patch_bodies_take_null_where_the_schema_says_so(
    hub: HubServer, api: httpx.AsyncClient, farm: Farm
) -> None:
    """For every field of every PATCH body: null is accepted (it clears) where the schema
    declares it nullable, and refused with 422 where it does not."""
    phone = await farm.add(connect=False)
    await api.patch(f"/devices/{phone.device_id}", json={"daily_quota": 5, "fcm_token": "f"})
    template = {"name": "t", "body": "hi", "category": "c"}
    template = (await api.post("/templates", json=template)).json()
    hook = {"url": "http://127.0.0.1:9/", "events": ["*"], "description": "d"}
    hook = (await api.post("/webhooks", json=hook)).json()
    creds = {"account_sid": "AC1", "auth_token": "t"}
    route = {"kind": "twilio", "name": "tw", "credentials": creds}
    route = (await api.post("/routes", json=route)).json()
    ids = {
        "device_id": phone.device_id,
        "template_id": template["id"],
        "webhook_id": hook["id"],
        "route_id": route["id"],
    }
    spec = await spec_of(hub)
    checked = 0
    for method, path, op in operations(spec):
        if method != "PATCH" or path.startswith("/api/"):  # the stock app's and SMSGate's
            continue
        body = schema_of(spec, op["requestBody"]["content"]["application/json"]["schema"])
        url = path.format(**ids)
        for name, prop in body["properties"].items():
            r = await api.patch(url, json={name: None})
            if nullable(prop):
                assert r.status_code == 200, (path, name, r.text)
            else:
                assert r.status_code == 422, (path, name, r.text)
                assert r.json()["error"]["details"][0]["field"] == name
            checked += 1
    assert checked >= 12
    # What null means where it is taken: cleared, back to the default.
    d = (await api.get(f"/devices/{phone.device_id}")).json()
    assert hub.settings is not None and d["daily_quota"] == hub.settings.default_daily_quota
    assert (await api.get(f"/templates/{template['id']}")).json()["category"] is None
    assert (await api.get(f"/webhooks/{hook['id']}")).json()["description"] is None
    r = await api.patch(f"/devices/{phone.device_id}", json={"name": "renamed"})
    assert r.status_code == 200 and r.json()["name"] == "renamed"


async def test_formats_and_one_of_rules_are_in_the_schema(hub: HubServer) -> None:
    spec = await spec_of(hub)
    schemas = spec["components"]["schemas"]
    scopes = schemas["KeyIn"]["properties"]["scopes"]["items"]
    assert set(scopes["enum"]) == ALL_SCOPES  # what issue_api_key takes
    webhook_in = spec["paths"]["/webhooks"]["post"]["requestBody"]["content"]["application/json"]
    assert schema_of(spec, webhook_in["schema"])["properties"]["url"]["format"] == "uri"
    assert "E.164" in schemas["DispatchIn"]["properties"]["to"]["description"]
    rules = schemas["DispatchIn"]["allOf"]
    assert [b["required"] for b in rules[0]["oneOf"]] == [["message"], ["template_id"]]
    assert [b["required"] for b in schemas["OtpVerifyIn"]["oneOf"]] == [["otp_id"], ["to"]]
    async with hub.client() as c:
        r = await c.post("/keys", json={"name": "k", "scopes": ["root"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_scopes"
        # The one-of rule's branch "message, and template_id null" is what the code takes.
        r = await c.post(
            "/sms/dispatch", json={"to": TO, "message": "x", "template_id": None, "wait": False}
        )
        assert r.status_code == 202


async def test_a_405_names_every_method_of_its_path(api: httpx.AsyncClient) -> None:
    for method, path, allowed in [
        ("TRACE", "/health", "GET, HEAD"),
        ("TRACE", "/devices/x", "DELETE, GET, HEAD, PATCH"),  # three routes, one path
        ("PUT", "/keys", "GET, HEAD, POST"),
        ("PUT", "/sms/dispatch", "DELETE, GET, HEAD, POST"),  # GET, DELETE: /sms/{message_id}
        ("PUT", "/api/3rdparty/v1/messages", "GET, HEAD, POST"),
    ]:
        r = await api.request(method, path)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (method, path)
    assert (await api.request("TRACE", "/health")).json()["error"]["code"] == "method_not_allowed"


# -- the README's error table ----------------------------------------------------------

# Calls that answer an error, and where their code argument is.
_CODE_ARG = {"ApiError": 1, "over_limit": 0, "error_response": 1, "_reject": 1}
# Places that pass a code on rather than name one (their codes are added below).
_PASS_ON = {
    ("smsgw/errors.py", "over_limit"),
    ("smsgw/errors.py", "api_error_handler"),
    ("smsgw/errors.py", "http_error_handler"),
    ("smsgw/api/device_ws.py", "_reject"),
    ("smsgw/idempotency.py", "run"),
    ("smsgw/api/messages.py", "recipient_e164"),  # numbers.InvalidNumber's codes
    ("smsgw/api/phone.py", "validate_number"),  # the same
    ("smsgw/api/webhooks.py", "_missing"),  # "<what>_not_found", from its callers
}


def codes_in_code() -> set[str]:
    """Every error code smsgw can answer, read from its source."""
    codes = {numbers.INVALID_NUMBER, numbers.NOT_MOBILE, numbers.MISSING_REGION}
    codes |= {_HTTP_CODES[404], _HTTP_CODES[405]}  # Starlette's router: unknown path, method
    for file in sorted((ROOT / "smsgw").rglob("*.py")):
        rel = file.relative_to(ROOT).as_posix()
        tree = ast.parse(file.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(func):
                if not isinstance(node, ast.Call):
                    continue
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                if name == "_missing" and isinstance(node.args[1], ast.Constant):
                    codes.add(f"{node.args[1].value}_not_found")
                    continue
                if name not in _CODE_ARG or len(node.args) <= _CODE_ARG[name]:
                    continue
                arg = node.args[_CODE_ARG[name]]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    codes.add(arg.value)
                else:
                    assert (rel, func.name) in _PASS_ON, (
                        f"{rel}:{node.lineno} in {func.name}: a code the test cannot read; "
                        "name it literally or add the place to _PASS_ON"
                    )
    return codes


def codes_in_readme() -> set[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n### Errors\n", 1)[1].split("\n#", 1)[0]
    codes: set[str] = set()
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            codes |= {c for c in re.findall(r"`([^`]+)`", cells[2]) if re.fullmatch(r"[a-z_]+", c)}
    return codes


def test_the_readme_error_table_lists_every_code_and_only_those() -> None:
    in_code, in_readme = codes_in_code(), codes_in_readme()
    assert len(in_code) > 50
    assert sorted(in_code - in_readme) == [], "codes the README's error table does not list"
    assert sorted(in_readme - in_code) == [], "codes in the README's table nothing answers"
