"""The real agent process (``python -m android_client``) against a real hub: killed
mid-send it transmits once, and inbound SMS received while the hub is down arrive once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from faketermux import FakeTermux

import tests.harness as harness
from android_client.agent import AgentDir, agent_status, enroll_agent
from tests.harness import ADMIN_KEY, HubServer, wait_for

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    """``python -m android_client run …`` with its output in a log file."""

    def __init__(self, state: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.argv = [sys.executable, "-m", "android_client", "run", "--state-dir", str(state)]
        self.argv += args
        self.env = env
        self.log = state.parent / f"agent-{id(self)}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> AgentProcess:
        with self.log.open("wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env, cwd=REPO
            )
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        """Fail at once, with the agent's output, instead of timing out on a dead agent."""
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.output()}")

    async def wait(self, timeout: float = 15) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self.wait()


async def cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "android_client",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=REPO,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def events(state: Path, message_id: str) -> list[str]:
    """What the simulated radio did with this message, across agent processes."""
    log = AgentDir(state).transmit_log
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines() if line]
    return [e["event"] for e in lines if e["message_id"] == message_id]


async def online(api: httpx.AsyncClient, device_id: str, agent: AgentProcess) -> bool:
    agent.check_alive()
    return bool((await api.get(f"/devices/{device_id}")).json()["online"])


async def status_of(api: httpx.AsyncClient, message_id: str) -> str:
    return str((await api.get(f"/sms/{message_id}")).json()["status"])


async def has_status(api: httpx.AsyncClient, message_id: str, expected: str) -> bool:
    return await status_of(api, message_id) == expected


def settled(state: Path) -> bool:
    info = agent_status(state)
    return info["unacked_reports"] == 0 and sum(info["held"].values()) == 0


@contextlib.contextmanager
def fixed_port(port: int) -> Iterator[None]:
    """Make HubServer bind ``port`` (a restarted hub keeps its address)."""

    def bound() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "free_socket", bound)
        yield


async def test_agent_killed_between_accept_and_send_transmits_once(tmp_path: Path) -> None:
    hub = await HubServer(tmp_path / "hub.db").start()
    state = tmp_path / "agent"
    common = ("--backend", "simulated", "--min-interval", "0", "--sim-no-deliver")
    common += ("--backoff-max", "0.3")
    agents: list[AgentProcess] = []
    try:
        code, out = await cli(
            "enroll", "--server", hub.url, "--api-key", ADMIN_KEY, "--state-dir", str(state)
        )
        assert code == 0 and "enrolled as device" in out, out
        creds = AgentDir(state).credentials()
        assert creds is not None

        slow = await AgentProcess(state, *common, "--sim-send-delay", "60").start()
        agents.append(slow)
        async with hub.client() as api:
            await wait_for(lambda: online(api, creds.device_id, slow), 20, "agent online")
            r = await api.post(
                "/sms/dispatch",
                json={"to": "+12025550141", "message": "exactly once", "wait": False},
            )
            assert r.status_code == 202, r.text
            mid = r.json()["message_id"]
            await wait_for(lambda: events(state, mid) == ["sending"], 15, "radio busy")
            assert await status_of(api, mid) == "QUEUED"  # accepted and owned, not sent
            await slow.kill()
            assert agent_status(state)["held"]["owned"] == 1

            fast = await AgentProcess(state, *common).start()
            agents.append(fast)
            await wait_for(lambda: has_status(api, mid, "SENT"), 20, "SENT at the hub")
            await wait_for(lambda: settled(state), 10, "report acknowledged")
            # Started twice (the first one died on the radio), left the phone once.
            assert events(state, mid) == ["sending", "sending", "sent"]
            assert await fast.terminate() == 0, fast.output()

        code, out = await cli("status", "--json", "--state-dir", str(state))
        info = json.loads(out)
        assert code == 0 and info["enrolled"] and not info["running"]
        assert info["last_stop"]["reason"] == "stopped"
        assert info["sent_today"] == 2  # a transmission counts when it starts
    finally:
        for proc in agents:
            await proc.kill()
        await hub.stop()


async def test_inbound_while_the_hub_is_down_arrives_once(tmp_path: Path) -> None:
    termux = FakeTermux(tmp_path / "termux")
    termux.add_sms(1, "history: never forwarded", received="2023-12-31 10:00:00")
    db = tmp_path / "hub.db"
    hub = await HubServer(db).start()
    port = hub.port
    state = tmp_path / "agent"
    creds = await enroll_agent(state, hub.url, api_key=ADMIN_KEY, name="termux-e2e")
    args = ("--backend", "termux", "--min-interval", "0", "--poll-interval", "0.1")
    args += ("--tool-timeout", "10", "--backoff-max", "0.3")
    agents = [await AgentProcess(state, *args, env=termux.env()).start()]
    try:
        async with hub.client() as api:
            await wait_for(lambda: online(api, creds.device_id, agents[0]), 20, "agent online")
        assert termux.calls("termux-wake-lock")
        await hub.stop()

        termux.add_sms(2, "sent while the hub was down", number="+15550177")
        await wait_for(lambda: agent_status(state)["unacked_inbound"] == 1, 15, "SMS stored")
        with fixed_port(port):
            hub = await HubServer(db).start()
        async with hub.client() as api:

            async def inbound() -> list[dict[str, Any]]:
                items: list[dict[str, Any]] = (await api.get("/sms/inbound")).json()["items"]
                return items

            async def arrived() -> bool:
                return len(await inbound()) == 1

            await wait_for(arrived, 20, "inbound SMS at the hub")
            await wait_for(lambda: agent_status(state)["unacked_inbound"] == 0, 10, "acked")
            [sms] = await inbound()
            assert (sms["from"], sms["body"], sms["local_id"]) == (
                "+15550177",
                "sent while the hub was down",
                "termux-2",
            )

            # A restarted agent does not forward it again (nor the history).
            assert await agents[0].terminate() == 0, agents[0].output()
            assert termux.calls("termux-wake-unlock")
            polls = len(termux.calls("termux-sms-list"))
            agents.append(await AgentProcess(state, *args, env=termux.env()).start())
            await wait_for(lambda: online(api, creds.device_id, agents[1]), 20, "back online")
            await wait_for(
                lambda: len(termux.calls("termux-sms-list")) >= polls + 3, 10, "a few polls"
            )
            assert len(await inbound()) == 1

            # Sending goes through termux-sms-send, text on stdin.
            r = await api.post(
                "/sms/dispatch",
                json={"to": "+12025550142", "message": "via termux", "wait": False},
            )
            mid = r.json()["message_id"]
            await wait_for(lambda: has_status(api, mid, "SENT"), 20, "SENT")
            [send] = termux.calls("termux-sms-send")
            assert (send["args"], send["stdin"]) == (["-n", "+12025550142"], "via termux")

            # The admin removes the phone: the agent stops and says to enroll again.
            assert (await api.delete(f"/devices/{creds.device_id}")).status_code in (200, 204)
            assert await agents[1].wait() == 4
            assert "enroll again" in agents[1].output()
    finally:
        for proc in agents:
            await proc.kill()
        await hub.stop()
