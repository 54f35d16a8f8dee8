"""Bulk sends through a real hub: JSON and CSV, per-row errors, progress, phones draining."""

from __future__ import annotations

import httpx

from tests.harness import Farm, HubServer, wait_for


async def test_json_batch_reports_bad_rows_and_sends_the_rest(
    api: httpx.AsyncClient, farm: Farm
) -> None:
    tpl = (await api.post("/templates", json={"name": "hi", "body": "Hi {{name}}"})).json()
    rows = [
        {"to": "+12025550101", "variables": {"name": "Ada"}},
        {"to": "not a number", "variables": {"name": "X"}},
        {"to": "+12025550102"},  # missing variable
        {"to": "+12025550103", "variables": {"name": "Bo"}, "custom_id": "r3"},
    ]
    r = await api.post(
        "/sms/batch", json={"name": "launch", "template_id": tpl["id"], "recipients": rows}
    )
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 2 and out["rejected"] == 2
    assert [(e["row"], e["code"]) for e in out["errors"]] == [
        (2, "invalid_number"),
        (3, "missing_variable"),
    ]
    status = (await api.get(f"/sms/batch/{out['batch_id']}")).json()
    assert status["total"] == 2 and status["by_status"] == {"PENDING": 2}
    assert status["name"] == "launch" and status["done"] is False
    phones = [await farm.add(deliver=False) for _ in range(2)]

    async def done() -> bool:
        return bool((await api.get(f"/sms/batch/{out['batch_id']}")).json()["done"])

    await wait_for(done, what="the batch to go out")
    sent = sorted(body for p in phones for _, _, body in p.backend.transmitted)
    assert sent == ["Hi Ada", "Hi Bo"]
    assert (await api.get(f"/templates/{tpl['id']}")).json()["usage_count"] == 2
    found = (await api.get("/sms/", params={"custom_id": "r3"})).json()["items"]
    assert len(found) == 1 and found[0]["recipient"] == "+12025550103"


async def test_csv_batch_with_variable_columns(api: httpx.AsyncClient) -> None:
    csv_text = "to,name\n+12025550201,Ada\n+12025550202,Bo\n12,Cy\n"
    r = await api.post(
        "/sms/batch",
        params={"message": "Hello {{name}}", "priority": "3"},
        content=csv_text,
        headers={"Content-Type": "text/csv"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 0 and r.json()["rejected"] == 3  # message has no template
    tpl = (await api.post("/templates", json={"name": "h", "body": "Hello {{name}}"})).json()
    r = await api.post(
        "/sms/batch",
        params={"template_id": tpl["id"], "priority": "3"},
        content=csv_text,
        headers={"Content-Type": "text/csv"},
    )
    out = r.json()
    assert out["accepted"] == 2 and [e["row"] for e in out["errors"]] == [3]
    items = (await api.get("/sms/", params={"limit": 10})).json()["items"]
    assert sorted(i["body"] for i in items) == ["Hello Ada", "Hello Bo"]
    assert {i["priority"] for i in items} == {3}


async def test_batch_bad_input(hub: HubServer, api: httpx.AsyncClient) -> None:
    def post_csv(text: str, **params: str) -> object:
        return api.post(
            "/sms/batch",
            params={"message": "m", **params},
            content=text,
            headers={"Content-Type": "text/csv"},
        )

    r = await post_csv("number\n+12025550201\n")
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_csv"  # type: ignore[attr-defined]
    r = await post_csv("to\n")
    assert r.status_code == 422  # type: ignore[attr-defined]
    r = await api.post("/sms/batch", content=b"\xff\xfe", headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    r = await api.post("/sms/batch", json={"message": "m", "recipients": []})
    assert r.status_code == 422
    r = await api.post("/sms/batch", json={"recipients": [{"to": "+12025550201"}]})
    assert r.status_code == 422  # neither message nor template
    many = [{"to": "+12025550201"}] * 10_001
    r = await api.post("/sms/batch", json={"message": "m", "recipients": many})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_rows"
    r = await api.post("/sms/batch", content=b"{oops", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert (await api.get("/sms/batch/nope")).status_code == 404
    assert (await api.get("/sms/")).json()["items"] == []


async def test_batch_is_idempotent(api: httpx.AsyncClient) -> None:
    body = {"message": "m", "recipients": [{"to": "+12025550301"}, {"to": "+12025550302"}]}
    headers = {"Idempotency-Key": "batch-1"}
    a = await api.post("/sms/batch", json=body, headers=headers)
    b = await api.post("/sms/batch", json=body, headers=headers)
    assert a.json()["batch_id"] == b.json()["batch_id"]
    assert len((await api.get("/sms/")).json()["items"]) == 2


async def test_a_large_batch_is_stored_in_one_go(hub: HubServer, api: httpx.AsyncClient) -> None:
    hub.hub.settings.recipient_hourly_limit = None
    rows = [{"to": f"+1202555{i:04d}"} for i in range(2000)]
    r = await api.post("/sms/batch", json={"message": "bulk", "recipients": rows})
    assert r.status_code == 202 and r.json()["accepted"] == 2000
    status = (await api.get(f"/sms/batch/{r.json()['batch_id']}")).json()
    assert status["by_status"] == {"PENDING": 2000}
