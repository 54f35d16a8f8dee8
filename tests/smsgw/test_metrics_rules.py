"""The shipped monitoring files against promtool and a live hub: ``deploy/prometheus/``
(alert rules, their unit tests on synthetic series, the example config) and
``deploy/grafana/smsgw.json`` (every metric it names exists in a real scrape, every
expression parses).

promtool comes from ``SMSGW_TEST_PROMTOOL`` (a path; ``none``: as if not installed),
``PATH`` or ``/usr/bin/promtool`` (``.ci/run`` installs Debian's ``prometheus``). Without
it the tests that need it skip, except under ``CI=true``, where they fail (as
tests/nginx.py does for nginx). The metric-name checks need no promtool and always run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from smsgw.api.metrics import _pool
from smsgw.store.sqlite import SqliteDriver
from smsgw.telemetry import HubMetrics
from tests.harness import Farm, HubServer, wait_for
from tests.pgtest import in_ci
from tests.scrape import samples, scrape, scrape_text

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "smsgw.json"
# Every metric of the hub is named smsgw_…; a PromQL expression names them as words.
METRIC = re.compile(r"\bsmsgw_[A-Za-z0-9_]+\b")


def promtool_binary() -> str | None:
    explicit = os.environ.get("SMSGW_TEST_PROMTOOL")
    if explicit:
        return None if explicit == "none" else explicit
    return shutil.which("promtool") or (
        "/usr/bin/promtool" if os.access("/usr/bin/promtool", os.X_OK) else None
    )


def require_promtool() -> str:
    """promtool's path; skips without it, or fails under ``CI=true``."""
    binary = promtool_binary()
    if binary is None:
        message = (
            "promtool not found (install Debian's prometheus as .ci/run does, "
            "or set SMSGW_TEST_PROMTOOL=/path/to/promtool)"
        )
        if in_ci():
            pytest.fail(f"CI=true: {message}")
        pytest.skip(message)
    return binary


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        [require_promtool(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def dashboard_exprs() -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets and the template
    variables' queries."""
    board = json.loads(DASHBOARD.read_text())
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", ()) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(board["panels"])
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and "smsgw_" in query:
            found.append(query)
    return found


def alert_exprs() -> list[str]:
    return re.findall(
        r"^\s+expr: \|?\s*\n?((?:.|\n)*?)(?=^\s+(?:for|labels):)",
        (PROMETHEUS / "alerts.yml").read_text(),
        re.M,
    )


def used_metrics(exprs: list[str]) -> set[str]:
    return {name for expr in exprs for name in METRIC.findall(expr)}


def engine_only(sqlite: bool) -> set[str]:
    """The sample names only the other engine's hub has, made by the code that makes
    them: the PostgreSQL pool's gauges, or the SQLite writer's histograms."""
    if sqlite:
        stub = SimpleNamespace(
            store=SimpleNamespace(driver=SimpleNamespace(pool_stats=lambda: (1, 1, 1)))
        )
        return {f.name for f in _pool(stub)}  # type: ignore[arg-type]
    metrics = HubMetrics()
    metrics.store_batch(1, 0.001)
    writer = (metrics.store_batch_size, metrics.store_commit_seconds)
    return {s.name for m in writer for family in m.collect() for s in family.samples}


async def scripted_farm(api: httpx.AsyncClient, farm: Farm) -> None:
    """Enough traffic for every live series to exist: an offer timeout and its failover,
    a dispatch delivered, a 404."""
    await farm.add("mute", never_accept=True, signal=4)
    good = await farm.add("good", signal=1)
    r = await api.post("/sms/dispatch", json={"to": "+12025550120", "message": "x"})
    assert r.status_code == 200 and r.json()["attempts"] == 2, r.text
    assert (await api.get("/sms/0190f5c2-0000-7000-8000-000000000000")).status_code == 404

    async def delivered() -> bool:
        labels = (("device", good.device_id), ("outcome", "delivered"))
        return (await scrape(api)).get(("smsgw_phone_messages_total", labels)) == 1

    await wait_for(delivered, what="the delivery report counted")


def test_the_alert_rules_check_and_fire_on_synthetic_series() -> None:
    out = promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS)
    assert "SUCCESS: 6 rules found" in out
    # Each alert fires where alerts_test.yml expects it, and nowhere else.
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS)
    tested = set(re.findall(r"alertname: (\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    rules = set(re.findall(r"- alert: (\w+)", (PROMETHEUS / "alerts.yml").read_text()))
    assert tested == rules, "every alert has a promtool test"


def test_the_example_prometheus_config_is_valid(tmp_path: Path) -> None:
    """The shipped file, with only its token file pointed at one that exists."""
    shipped = (PROMETHEUS / "prometheus.yml").read_text()
    config, n = re.subn(
        r"credentials_file: \S+", f"credentials_file: {tmp_path / 'token'}", shipped
    )
    assert n == 1
    (tmp_path / "token").write_text("scrape-me\n")
    (tmp_path / "prometheus.yml").write_text(config)
    shutil.copy(PROMETHEUS / "alerts.yml", tmp_path / "alerts.yml")
    out = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert "SUCCESS: 6 rules found" in out


def as_promql(expr: str) -> str:
    """A dashboard expression as Prometheus receives it: Grafana's variables replaced
    (``$job`` by All), its ``label_values(metric, label)`` as the query it stands for."""
    expr = expr.replace("$__rate_interval", "5m").replace('"$job"', '".*"')
    return re.sub(r"^label_values\((.+),\s*(\w+)\)$", r"group by (\2) (\1)", expr)


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """Each expression as a recording rule, which promtool parses."""
    rules = [
        {"record": f"smsgw_dashboard:expr_{i}", "expr": as_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    (tmp_path / "dashboard.yml").write_text(
        json.dumps({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    out = promtool("check", "rules", str(tmp_path / "dashboard.yml"))
    assert f"SUCCESS: {len(rules)} rules found" in out


async def test_a_live_scrape_passes_promtool(api: httpx.AsyncClient, farm: Farm) -> None:
    require_promtool()
    await scripted_farm(api, farm)
    text = await scrape_text(api)
    promtool("check", "metrics", stdin=text)  # the exposition and its names, linted


async def test_the_dashboard_and_alerts_name_only_metrics_a_hub_has(
    api: httpx.AsyncClient, farm: Farm, hub: HubServer
) -> None:
    await scripted_farm(api, farm)
    scraped = {name for name, _ in samples(await scrape_text(api))}
    sqlite = isinstance(hub.hub.store.driver, SqliteDriver)
    for what, exprs in (
        ("deploy/grafana/smsgw.json", dashboard_exprs()),
        ("deploy/prometheus/alerts.yml", alert_exprs()),
    ):
        used = used_metrics(exprs)
        assert used, f"{what}: no metric found in its expressions"
        missing = used - scraped
        assert missing <= engine_only(sqlite), f"{what} names metrics no hub has: {missing}"
    # The dashboard shows what the issue asks for.
    board = used_metrics(dashboard_exprs())
    for name in (
        "smsgw_phones_online",
        "smsgw_phone_battery_percent",
        "smsgw_phone_signal_bars",
        "smsgw_phone_last_seen_age_seconds",
        "smsgw_phone_messages_total",
        "smsgw_outbox_due_messages",
        "smsgw_outbox_oldest_due_age_seconds",
        "smsgw_dispatch_seconds_bucket",
        "smsgw_http_requests_total",
        "smsgw_webhook_deliveries",
    ):
        assert name in board, f"the dashboard does not show {name}"
