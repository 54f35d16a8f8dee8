"""Build smsgw-agent.pyz: the agent and its pure-Python dependencies in one file.

``python deploy/agent_pyz.py dist/smsgw-agent.pyz`` (``make agent``). The file runs with a
bare ``python3`` 3.11+ and nothing installed (``python3 smsgw-agent.pyz enroll …``), which
is what a phone under Termux or a modem box needs; the hub serves it at
``GET /agent/smsgw-agent.pyz`` (docs/android.md).

Everything inside must be pure Python: websockets is built from its source without its C
speedups (it falls back to Python), and any compiled module left over is removed. The
modem backend's pyserial is included too, so one file serves phones and modem boxes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPILED = (".so", ".pyd", ".dylib")


def build(target: Path) -> str:
    """Write the zipapp to ``target``; returns its SHA-256."""
    with tempfile.TemporaryDirectory(prefix="smsgw-agent-pyz-") as tmp:
        staging = Path(tmp) / "app"
        env = {**os.environ, "BUILD_EXTENSION": "no", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        subprocess.run(
            [
                sys.executable, "-m", "pip", "install", "--quiet", "--no-compile", "--no-warn-conflicts",
                "--target", str(staging),
                "--no-binary", "websockets",  # its source: pure Python without a compiler
                f"{ROOT / 'android_client'}[modem]",
            ],
            check=True,
            env=env,
        )  # fmt: skip
        for path in list(staging.rglob("*")):
            if path.name == "__pycache__" and path.is_dir():
                shutil.rmtree(path)
            elif path.suffix in COMPILED:
                path.unlink()
        shutil.rmtree(staging / "bin", ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(
            staging,
            target,
            interpreter="/usr/bin/env python3",
            main="android_client.__main__:main",
            compressed=True,
        )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    Path(f"{target}.sha256").write_text(f"{digest}  {target.name}\n")
    return digest


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "dist/smsgw-agent.pyz")
    digest = build(out)
    print(f"{out} ({out.stat().st_size // 1024} KiB), sha256 {digest}")
