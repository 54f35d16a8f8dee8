"""smsgw-agent enroll/run/status: state dir, exit codes and messages (no real hub)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fakehub import TIMEOUT, FakeHub

from android_client import agent
from android_client.__main__ import build_parser, main
from android_client.agent import AgentDir, AgentError, Credentials, RunOptions
from android_client.simulated import SimulatedBackend
from android_client.state import SqlitePhoneStore


def save_credentials(
    state_dir: Path, server: str = "http://127.0.0.1:9", token: str = "dev_ok"
) -> Credentials:
    creds = Credentials(
        server=server,
        device_id="dev-1",
        device_token=token,
        name="pixel",
        hardware_id=AgentDir(state_dir).hardware_id(),
        enrolled_at="2024-01-01T00:00:00+00:00",
    )
    AgentDir(state_dir).save_credentials(creds)
    return creds


def register_transport(seen: list[dict[str, object]], status: int = 201) -> httpx.MockTransport:
    tokens = iter(["dev_first", "dev_second"])

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        if status != 201:
            error = {"code": "invalid_enrollment_code", "message": "code expired"}
            return httpx.Response(status, json={"error": error})
        body = {"device_id": "d-1", "device_token": next(tokens), "ws_url": "ws://h/ws/device"}
        return httpx.Response(201, json=body)

    return httpx.MockTransport(handle)


async def test_enroll_keeps_one_hardware_id_and_a_private_token(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    seen: list[dict[str, object]] = []
    transport = register_transport(seen)
    first = await agent.enroll_agent(
        state, "http://hub:9000", code="ABCD-EFGH-JKLM", transport=transport
    )
    second = await agent.enroll_agent(
        state, "http://hub:9000", api_key="sk_admin", name="kitchen", transport=transport
    )
    assert seen[0]["hardware_id"] == seen[1]["hardware_id"] == first.hardware_id
    assert seen[0]["enrollment_code"] == "ABCD-EFGH-JKLM" and first.name.startswith("phone-")
    assert (second.device_token, second.name) == ("dev_second", "kitchen")
    assert AgentDir(state).credentials() == second
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    for name in ("credentials.json", "hardware_id"):
        assert stat.S_IMODE(os.stat(state / name).st_mode) == 0o600
    assert sorted(os.listdir(state)) == ["credentials.json", "hardware_id"]  # no temp files


async def test_enroll_refused_code_says_what_to_do(tmp_path: Path) -> None:
    transport = register_transport([], status=403)
    with pytest.raises(AgentError, match=r"code expired.*ask the admin for a new one") as info:
        await agent.enroll_agent(tmp_path, "http://hub", code="OLD", transport=transport)
    assert info.value.exit_code == agent.EXIT_FAILED
    assert AgentDir(tmp_path).credentials() is None


async def test_enroll_unreachable_hub(tmp_path: Path) -> None:
    with pytest.raises(AgentError, match=r"cannot reach the hub at http://127\.0\.0\.1:9"):
        await agent.enroll_agent(tmp_path, "http://127.0.0.1:9", code="X")


def test_enroll_needs_a_code_or_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["enroll", "--server", "http://h"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        build_parser().parse_args(["enroll", "--server", "h", "--code", "c", "--api-key", "k"])


def test_run_defaults() -> None:
    args = build_parser().parse_args(["run"])
    assert (args.backend, args.min_interval, args.daily_cap) == ("termux", 2.0, 90)
    assert args.sim_slots == (0,)
    args = build_parser().parse_args(["run", "--sim-slots", "0,1", "--daily-cap", "0"])
    assert args.sim_slots == (0, 1) and args.daily_cap == 0


def test_status_and_run_when_not_enrolled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--state-dir", str(tmp_path)]) == agent.EXIT_NOT_ENROLLED
    assert "enrolled:         no" in capsys.readouterr().out
    assert main(["status", "--json", "--state-dir", str(tmp_path)]) == agent.EXIT_NOT_ENROLLED
    info = json.loads(capsys.readouterr().out)
    assert info["enrolled"] is False and info["held"] == {
        "accepted": 0,
        "owned": 0,
        "transmitted": 0,
    }
    code = main(["run", "--backend", "simulated", "--state-dir", str(tmp_path)])
    assert code == agent.EXIT_NOT_ENROLLED
    err = capsys.readouterr().err
    assert "not enrolled" in err and "smsgw-agent enroll" in err


def test_run_without_termux_api_exits_with_a_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    save_credentials(tmp_path)
    with SqlitePhoneStore(tmp_path / "state.db") as store:
        store.put_report({"type": "sent", "id": "r1", "message_id": "m1", "attempt": 1})
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    code = main(["run", "--backend", "termux", "--state-dir", str(tmp_path), "-q"])
    assert code == agent.EXIT_BACKEND
    assert "pkg install termux-api" in capsys.readouterr().err
    info = agent.agent_status(tmp_path)
    assert info["unacked_reports"] == 1  # state kept
    assert info["last_stop"]["reason"] == "backend"
    assert info["running"] is False


async def test_refused_token_tells_the_user_to_enroll_again(hub: FakeHub, tmp_path: Path) -> None:
    save_credentials(tmp_path, server=hub.url, token="dev_revoked")
    opts = RunOptions(state_dir=tmp_path, backend="simulated", min_interval=0)
    with pytest.raises(AgentError, match=r"refused this device.s token.*enroll again") as info:
        await asyncio.wait_for(agent.run_agent(opts, out=lambda line: None), TIMEOUT)
    assert info.value.exit_code == agent.EXIT_REFUSED
    last = agent.agent_status(tmp_path)["last_connection"]
    assert (last["kind"], last["http_status"]) == ("refused", 401)


async def test_run_records_connections_and_stops_cleanly(auto_hub: FakeHub, tmp_path: Path) -> None:
    save_credentials(tmp_path, server=auto_hub.url)
    lines: list[str] = []
    connected = asyncio.Event()

    def out(line: str) -> None:
        lines.append(line)
        if line.startswith("connected"):
            connected.set()

    stop = asyncio.Event()
    opts = RunOptions(state_dir=tmp_path, backend="simulated", min_interval=0)
    task = asyncio.create_task(agent.run_agent(opts, stop=stop, out=out))
    await asyncio.wait_for(connected.wait(), TIMEOUT)
    assert agent.agent_status(tmp_path)["running"] is True
    hello = await (await auto_hub.next_session()).recv_type("hello")
    assert hello["app_version"].startswith("smsgw-agent/")
    stop.set()
    assert await asyncio.wait_for(task, TIMEOUT) == agent.EXIT_OK
    info = agent.agent_status(tmp_path)
    assert info["running"] is False and info["last_connected"]
    assert (info["last_connection"]["kind"], info["last_connection"]["close_code"]) == (
        "closed",
        1001,
    )
    assert info["last_stop"]["reason"] == "stopped"
    text = agent.format_status(info)
    assert "device dev-1 (pixel)" in text and "last connection:  closed" in text
    assert lines[0].startswith("agent running: device dev-1 (pixel) via simulated")


async def test_one_agent_per_state_dir(tmp_path: Path) -> None:
    state = AgentDir(tmp_path)
    with state.lock():
        assert state.is_running()
        with pytest.raises(AgentError, match="already running") as info, state.lock():
            pass
        assert info.value.exit_code == agent.EXIT_BUSY
        # Enrolling again would revoke the running agent's token under its feet.
        with pytest.raises(AgentError, match="stop the agent") as info:
            await agent.enroll_agent(tmp_path, "http://hub", code="X")
        assert info.value.exit_code == agent.EXIT_BUSY
    assert not state.is_running()


async def test_stop_during_a_slow_backend_start_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_credentials(tmp_path)
    started, closed = asyncio.Event(), asyncio.Event()

    class SlowStart(SimulatedBackend):
        async def start(self) -> None:
            started.set()
            await asyncio.sleep(60)  # e.g. a modem that does not answer

        async def aclose(self) -> None:
            closed.set()
            await super().aclose()

    monkeypatch.setattr(agent, "make_backend", lambda *a: SlowStart())
    stop = asyncio.Event()
    opts = RunOptions(state_dir=tmp_path, backend="simulated")
    task = asyncio.create_task(agent.run_agent(opts, stop=stop, out=lambda line: None))
    await asyncio.wait_for(started.wait(), TIMEOUT)
    stop.set()  # what SIGTERM does
    assert await asyncio.wait_for(task, TIMEOUT) == agent.EXIT_OK
    assert closed.is_set()


def test_modem_backend_is_imported_lazily_with_its_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    @dataclass
    class ModemConfig:
        port: str
        baudrate: int = 115200
        pin: str | None = None
        smsc: str | None = None
        retry_unconfirmed: bool = False

    class ModemBackend(SimulatedBackend):
        def __init__(self, config: ModemConfig, *, state: object = None) -> None:
            super().__init__()
            self.modem_config = config
            self.state = state

    fake = types.ModuleType("android_client.modem")
    fake.ModemConfig = ModemConfig  # type: ignore[attr-defined]
    fake.ModemBackend = ModemBackend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "android_client.modem", fake)
    with SqlitePhoneStore(tmp_path / "s.db") as store:
        opts = RunOptions(
            backend="modem", port="/dev/ttyUSB3", baudrate=9600, pin="1234", retry_unconfirmed=True
        )
        backend = agent.make_backend(opts, AgentDir(tmp_path), store)
        assert isinstance(backend, ModemBackend)
        assert backend.modem_config == ModemConfig("/dev/ttyUSB3", 9600, "1234", None, True)
        assert backend.state is store  # its delivery references outlive a restart
        with pytest.raises(AgentError, match="needs --port") as info:
            agent.make_backend(RunOptions(backend="modem"), AgentDir(tmp_path), store)
        assert info.value.exit_code == agent.EXIT_USAGE
