"""The agent as users install it: its own distribution, and one file with nothing installed.

Both tests fetch packages from PyPI (as `make agent` and a phone do) and take a few
tens of seconds. The first installs ``android_client/`` in a fresh virtual environment
with no C compiler (``CC=false``) and websockets from its source, as on Termux; the
second builds ``smsgw-agent.pyz``, downloads it from a real hub, and enrolls and runs
it against that hub with a Python that has nothing installed (``-I``, a venv without
pip), until a dispatched message is SENT through it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import venv
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.harness import HubServer, wait_for

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy"))
import agent_pyz  # noqa: E402  (deploy/agent_pyz.py: what `make agent` runs)

HEAVY = {"pydantic", "pydantic-core", "asyncpg", "uvloop", "httptools", "grpcio",
         "cryptography", "redis", "firebase-admin", "smsgw"}  # fmt: skip


def _venv(path: Path, *, pip: bool) -> Path:
    venv.EnvBuilder(with_pip=pip, clear=True).create(path)
    return path / "bin" / "python"


def test_the_agent_installs_alone_without_a_compiler(tmp_path: Path) -> None:
    python = _venv(tmp_path / "venv", pip=True)
    env = {**os.environ, "CC": "false", "CXX": "false", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("BUILD_EXTENSION", None)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-binary", "websockets",
         str(ROOT / "android_client")],
        check=True, env=env, timeout=600,
    )  # fmt: skip
    agent = tmp_path / "venv" / "bin" / "smsgw-agent"
    shown = subprocess.run([str(agent), "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "enroll" in shown.stdout, shown.stderr
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    installed = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert "smsgw-agent" in installed
    assert not installed & HEAVY, installed & HEAVY
    # The wire format and the protocol import without anything of the hub.
    check = "import android_client.wire, android_client.protocol, android_client.agent"
    subprocess.run([str(python), "-I", "-c", check], check=True, timeout=60)
    # The modem backend is an extra: without it, choosing it says which to install.
    says = (
        "from android_client.agent import RunOptions, make_backend, AgentError\n"
        "try:\n"
        "    make_backend(RunOptions(backend='modem', port='/dev/null'), None, None)\n"
        "except AgentError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [str(python), "-I", "-c", says], capture_output=True, text=True, check=True, timeout=60
    )
    assert "pip install 'smsgw-agent[modem]'" in out.stdout, out


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("dist") / "smsgw-agent.pyz"
    agent_pyz.build(target)
    return target


@pytest.fixture
async def hub_with_agent(tmp_path: Path, pyz: Path) -> AsyncIterator[HubServer]:
    server = await HubServer(tmp_path / "hub.db", agent_pyz=str(pyz)).start()
    yield server
    await server.stop()


async def _run(*args: str, timeout: float = 60) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_the_zipapp_enrolls_and_runs_with_nothing_installed(
    hub_with_agent: HubServer, pyz: Path, tmp_path: Path
) -> None:
    hub = hub_with_agent
    bare = _venv(tmp_path / "bare", pip=False)
    async with hub.client() as api, httpx.AsyncClient(base_url=hub.url) as public:
        # What the phone downloads, as the enrollment answer says.
        r = await public.get("/agent/smsgw-agent.pyz")
        assert r.status_code == 200 and r.content == await asyncio.to_thread(pyz.read_bytes)
        digest = (await public.get("/agent/smsgw-agent.pyz.sha256")).text
        assert digest == f"{hashlib.sha256(r.content).hexdigest()}  smsgw-agent.pyz\n"
        downloaded = tmp_path / "smsgw-agent.pyz"
        await asyncio.to_thread(downloaded.write_bytes, r.content)
        r = await api.post("/devices/enrollment-codes", json={})
        assert r.status_code == 201, r.text
        code, install = r.json()["code"], r.json()["install"]
        assert install == [
            f"curl -fLo smsgw-agent.pyz {hub.url}/agent/smsgw-agent.pyz",
            f"python3 smsgw-agent.pyz enroll --server {hub.url} --code {code}",
        ]
        shown = await _run(str(bare), "-I", str(downloaded), "--help")
        assert "enroll" in shown and "simulate" in shown
        state = tmp_path / "state"
        await _run(str(bare), "-I", str(downloaded), "enroll", "--server", hub.url,
                   "--code", code, "--name", "zipapp-phone", "--state-dir", str(state))  # fmt: skip
        agent = await asyncio.create_subprocess_exec(
            str(bare), "-I", str(downloaded), "run", "--backend", "simulated",
            "--state-dir", str(state), "--min-interval", "0",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:

            async def online() -> bool:
                items = (await api.get("/devices/")).json()["items"]
                return any(d["name"] == "zipapp-phone" and d["online"] for d in items)

            await wait_for(online, timeout=30, what="the zipapp's phone online")
            r = await api.post("/sms/dispatch", json={"to": "+12025550123", "message": "hi"})
            assert r.status_code == 200 and r.json()["status"] == "SENT", r.text
        finally:
            agent.terminate()
            _, err = await asyncio.wait_for(agent.communicate(), 30)
        assert agent.returncode == 0, err.decode()[-2000:]


async def test_a_hub_without_the_file_says_how_to_build_it(tmp_path: Path) -> None:
    hub = await HubServer(tmp_path / "hub.db", agent_pyz=str(tmp_path / "none.pyz")).start()
    try:
        await _refuses(hub)
    finally:
        await hub.stop()


async def _refuses(hub: HubServer) -> None:
    async with httpx.AsyncClient(base_url=hub.url) as c:
        r = await c.get("/agent/smsgw-agent.pyz")
        assert r.status_code == 404 and "make agent" in r.json()["error"]["message"]
        assert (await c.get("/agent/smsgw-agent.pyz.sha256")).status_code == 404
