"""Fake Termux:API tools for tests: small Python scripts put first on PATH.

Every tool appends ``{"tool", "args", "stdin"}`` to ``calls.jsonl`` in its data dir and
prints what the real tool prints (same JSON shapes). A test changes a tool's answer with
``FakeTermux.answer`` (stdout, stderr, exit code, a delay to simulate a hang); the inbox
of ``termux-sms-list`` is ``inbox.json``, filled with ``add_sms``.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

TOOLS = (
    "termux-sms-send",
    "termux-sms-list",
    "termux-battery-status",
    "termux-telephony-deviceinfo",
    "termux-telephony-cellinfo",
    "termux-wake-lock",
    "termux-wake-unlock",
)

BATTERY = {
    "health": "GOOD",
    "percentage": 85,
    "plugged": "UNPLUGGED",
    "status": "DISCHARGING",
    "temperature": 27.5,
    "current": -310000,
}
DEVICE_INFO = {
    "data_enabled": "true",
    "data_activity": "none",
    "data_state": "connected",
    "device_id": None,
    "device_software_version": "01",
    "phone_count": 1,
    "phone_type": "gsm",
    "network_operator": "00101",
    "network_operator_name": "Acme",
    "network_country_iso": "us",
    "network_type": "lte",
    "network_roaming": False,
    "sim_country_iso": "us",
    "sim_operator": "00101",
    "sim_operator_name": "Acme",
    "sim_serial_number": None,
    "sim_subscriber_id": None,
    "sim_state": "ready",
}
CELL_INFO = [
    {"type": "lte", "registered": True, "asu": 30, "dbm": -90, "level": 3, "ci": 1, "pci": 2},
    {"type": "lte", "registered": False, "asu": 50, "dbm": -70, "level": 4, "ci": 3, "pci": 4},
]
DEFAULTS: dict[str, Any] = {
    "termux-battery-status": BATTERY,
    "termux-telephony-deviceinfo": DEVICE_INFO,
    "termux-telephony-cellinfo": CELL_INFO,
}

# -S: no site-packages, so each call starts in a few milliseconds.
SCRIPT = r"""#!{python} -S
import json, os, sys, time

tool = os.path.basename(sys.argv[0])
data = os.environ["FAKE_TERMUX_DIR"]
stdin = sys.stdin.read() if tool == "termux-sms-send" else None
with open(os.path.join(data, "calls.jsonl"), "a", encoding="utf-8") as fh:
    fh.write(json.dumps({"tool": tool, "args": sys.argv[1:], "stdin": stdin}) + "\n")

answer_file = os.path.join(data, tool + ".answer.json")
if os.path.exists(answer_file):
    with open(answer_file, encoding="utf-8") as fh:
        answer = json.load(fh)
    time.sleep(answer.get("sleep", 0))
    sys.stdout.write(answer.get("stdout", ""))
    sys.stderr.write(answer.get("stderr", ""))
    sys.exit(answer.get("exit", 0))

if tool == "termux-sms-list":
    opts = {"-l": "10", "-o": "0", "-t": "inbox"}
    args = sys.argv[1:]
    for flag, value in zip(args[::2], args[1::2]):
        opts[flag] = value
    inbox_file = os.path.join(data, "inbox.json")
    inbox = []
    if os.path.exists(inbox_file):
        with open(inbox_file, encoding="utf-8") as fh:
            inbox = json.load(fh)
    # Like Termux:API: newest first, offset and limit, then printed oldest first.
    newest = sorted(inbox, key=lambda m: (m["received"], m["_id"]), reverse=True)
    start = int(opts["-o"])
    page = newest[start:start + int(opts["-l"])]
    print(json.dumps(list(reversed(page)), indent=2))
elif tool in {defaults}:
    print(json.dumps({defaults}[tool], indent=2))
"""


class FakeTermux:
    """A directory of fake tools (``bin``) and their shared state (``data``)."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "bin"
        self.data = root / "data"
        self.bin.mkdir(parents=True)
        self.data.mkdir(parents=True)
        script = SCRIPT.replace("{python}", sys.executable).replace("{defaults}", repr(DEFAULTS))
        for tool in TOOLS:
            path = self.bin / tool
            path.write_text(script, encoding="utf-8")
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should see the fake tools."""
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "FAKE_TERMUX_DIR": str(self.data),
        }

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeTermux:
        """Put the fake tools first on this process's PATH."""
        monkeypatch.setenv("PATH", f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_TERMUX_DIR", str(self.data))
        return self

    def remove(self, *tools: str) -> None:
        for tool in tools or TOOLS:
            (self.bin / tool).unlink()

    def answer(
        self, tool: str, stdout: str = "", stderr: str = "", exit: int = 0, sleep: float = 0
    ) -> None:
        spec = {"stdout": stdout, "stderr": stderr, "exit": exit, "sleep": sleep}
        (self.data / f"{tool}.answer.json").write_text(json.dumps(spec), encoding="utf-8")

    def answer_json(self, tool: str, value: Any) -> None:
        self.answer(tool, stdout=json.dumps(value))

    def reset(self, tool: str) -> None:
        (self.data / f"{tool}.answer.json").unlink(missing_ok=True)

    def add_sms(
        self,
        sms_id: int,
        body: str,
        number: str = "+15550100",
        received: str = "2024-01-01 12:00:00",
        **extra: Any,
    ) -> None:
        inbox_file = self.data / "inbox.json"
        inbox = json.loads(inbox_file.read_text()) if inbox_file.exists() else []
        inbox.append(
            {
                "threadid": 1,
                "type": "inbox",
                "read": False,
                "number": number,
                "received": received,
                "body": body,
                "_id": sms_id,
                **extra,
            }
        )
        tmp = inbox_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(inbox), encoding="utf-8")
        tmp.replace(inbox_file)  # a concurrent termux-sms-list never reads half a file

    def calls(self, tool: str | None = None) -> list[dict[str, Any]]:
        path = self.data / "calls.jsonl"
        if not path.exists():
            return []
        calls = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [c for c in calls if tool is None or c["tool"] == tool]
