"""Webhook signatures, and the verification snippet the README gives to users."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from smsgw.signature import SignatureError, sign, signature_header, verify

BODY = b'{"id":"e1","type":"message.sent","created_at":"2026-11-22T00:00:00Z","data":{}}'


def test_sign_and_verify_round_trip() -> None:
    now = int(time.time())
    header = signature_header(["whsec_a"], now, BODY)
    assert header == f"t={now},v1={sign('whsec_a', now, BODY)}"
    assert verify(header, BODY, "whsec_a") == now


def test_rotation_header_verifies_with_either_secret() -> None:
    now = int(time.time())
    header = signature_header(["new", "old"], now, BODY)
    assert header.count("v1=") == 2
    verify(header, BODY, "new")
    verify(header, BODY, "old")
    with pytest.raises(SignatureError):
        verify(header, BODY, "other")


@pytest.mark.parametrize(
    "header",
    [None, "", "v1=abc", "t=notanumber,v1=abc", "t=123", "garbage", "t=²,v1=abc", "t=١٢٣,v1=abc"],
)
def test_malformed_headers_are_refused(header: str | None) -> None:
    with pytest.raises(SignatureError):
        verify(header, BODY, "whsec_a")


def test_tampered_body_and_old_timestamps_are_refused() -> None:
    now = int(time.time())
    header = signature_header(["s"], now, BODY)
    with pytest.raises(SignatureError, match="no signature"):
        verify(header, BODY + b" ", "s")
    stale = signature_header(["s"], now - 301, BODY)
    with pytest.raises(SignatureError, match="tolerance"):
        verify(stale, BODY, "s")


def readme_verify() -> Any:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```python\n(import hashlib.*?def verify.*?)```", readme, re.S)
    assert block, "the README's verification snippet is missing"
    namespace: dict[str, Any] = {}
    exec(block.group(1), namespace)
    return namespace["verify"]


def test_the_readme_snippet_agrees_with_the_hub() -> None:
    check = readme_verify()
    now = int(time.time())
    assert check(signature_header(["s"], now, BODY), BODY, "s")
    assert check(signature_header(["x", "s"], now, BODY), BODY, "s")
    assert not check(signature_header(["s"], now, BODY), BODY + b"!", "s")
    assert not check(signature_header(["s"], now - 600, BODY), BODY, "s")
    assert not check("t=1", BODY, "s")
