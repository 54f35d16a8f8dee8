"""The agent in one file for phones and modem boxes: ``GET /agent/smsgw-agent.pyz``.

``make agent`` builds ``dist/smsgw-agent.pyz`` (``SMSGW_AGENT_PYZ``): the agent and its
pure-Python dependencies, run with a bare ``python3``. The hub serves it to the phones
it enrolls, as an app store would, with its SHA-256 beside it, so a user types two
lines on the phone (the enrollment answer lists them; docs/android.md).
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from starlette.responses import FileResponse, PlainTextResponse, Response

from smsgw.api import api
from smsgw.api.framework import Call
from smsgw.api.models import ErrorOut
from smsgw.errors import ApiError

NAME = "smsgw-agent.pyz"
_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256


def _built(call: Call) -> Path:
    path = Path(call.hub.settings.agent_pyz)
    if not path.is_file():
        raise ApiError(
            404,
            "agent_not_built",
            f"this hub has no {NAME}: build it with `make agent` (SMSGW_AGENT_PYZ={path})",
        )
    return path


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests.clear()
        _digests[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digests[key]


@api.route(
    "GET",
    f"/agent/{NAME}",
    tag="devices",
    scope=None,
    security=None,
    summary="The agent in one file: runs with python3 on a phone (Termux) or a modem box",
    responses={200: None, 404: ErrorOut},
)
async def agent_pyz(call: Call) -> Response:
    path = _built(call)
    return FileResponse(path, media_type="application/zip", filename=NAME)


@api.route(
    "GET",
    f"/agent/{NAME}.sha256",
    tag="devices",
    scope=None,
    security=None,
    summary="The SHA-256 of the agent's file, as sha256sum prints it",
    responses={200: None, 404: ErrorOut},
)
async def agent_pyz_sha256(call: Call) -> Response:
    path = _built(call)
    digest = await asyncio.to_thread(_sha256, path)  # a megabyte: off the event loop
    return PlainTextResponse(f"{digest}  {NAME}\n")


def install_lines(base_url: str, code: str) -> list[str]:
    """What a user types on the phone to install and enroll the agent."""
    base = base_url.rstrip("/")
    return [
        f"curl -fLo {NAME} {base}/agent/{NAME}",
        f"python3 {NAME} enroll --server {base} --code {code}",
    ]
