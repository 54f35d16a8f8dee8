"""Secrets at rest: the values the hub must keep in clear to sign with, sealed under a key
from the environment when one is set.

Some secrets cannot be stored as hashes because the hub itself signs with them: webhook
secrets (and the previous one during a rotation), the hub's own keys in ``hub_secrets``
(the callback secret, the OTP and app-phone HMAC keys, the SMSGate API's JWT key, the
dashboard's cookie key) and the SMSGate API's ``webhooks.signing_key``. With
``SMSGW_SECRET_KEY`` set, the store writes each of them as
``enc:v1:<key id>:<base64url(nonce | AES-256-GCM ciphertext and tag)>`` and opens it when
it reads the row; without it they are stored as before, in clear.

The key is any string (a Fernet key, ``openssl rand -base64 32``, ...): HKDF-SHA256 turns
it into the AES key and, separately, into a short key id. The id is stored with each
value, so a value sealed under another key is told apart from a damaged one and named in
the error, and ``SMSGW_SECRET_KEY_PREVIOUS`` can still open what an old key sealed while
the store re-seals it under the new one (key rotation). The id reveals nothing of the
key: it is an independent HKDF output.

This module is the one place that encrypts and decrypts. The store calls it in two
places: ``Store.dec.secret`` (the row mapping of every secret column) and ``Store.box``
(every write of one); ``smsgw/store/secrets.py`` seals what is still in clear when the
store opens, and refuses to open when a sealed value cannot be opened: the hub never
signs with a value it could not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "enc:v1:"
SETTING = "SMSGW_SECRET_KEY"
PREVIOUS_SETTING = "SMSGW_SECRET_KEY_PREVIOUS"
# HKDF does not stretch a weak passphrase: anyone holding the database file can try
# guesses offline, so a key short enough to guess is refused outright.
MIN_KEY_CHARS = 16
_NONCE = 12
_SEALED = re.compile(r"enc:v1:([0-9a-f]{12}):([A-Za-z0-9_-]+={0,2})\Z")
_SALT = b"smsgw secretbox v1"


class SecretKeyError(Exception):
    """A sealed secret cannot be opened (no key, another key, or a damaged value), or the
    key setting itself is unusable. The message names the setting to fix."""


@dataclass(frozen=True, slots=True)
class _Key:
    id: str
    aead: AESGCM


def _derive(material: str, setting: str) -> _Key:
    if len(material) < MIN_KEY_CHARS:
        raise SecretKeyError(
            f"{setting} is {len(material)} characters; use at least {MIN_KEY_CHARS} random "
            'ones, e.g. python -c "import secrets; print(secrets.token_urlsafe(32))"'
        )
    raw = material.encode()
    key = HKDF(SHA256(), 32, _SALT, b"aes-256-gcm key").derive(raw)
    key_id = HKDF(SHA256(), 6, _SALT, b"key id").derive(raw).hex()
    return _Key(key_id, AESGCM(key))


def is_sealed(value: str) -> bool:
    return value.startswith(PREFIX)


class SecretBox:
    """Seals and opens the hub's stored secrets; without a key both are the identity."""

    def __init__(self, key: str | None = None, previous: str | None = None) -> None:
        if previous and not key:
            raise SecretKeyError(f"{PREVIOUS_SETTING} is set without {SETTING}")
        self._key = _derive(key, SETTING) if key else None
        self._keys = {self._key.id: self._key} if self._key else {}
        if previous:
            old = _derive(previous, PREVIOUS_SETTING)
            self._keys.setdefault(old.id, old)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    @property
    def key_id(self) -> str | None:
        """The id sealed values carry, or None without a key."""
        return self._key.id if self._key else None

    def seal(self, plain: str) -> str:
        """What to store for ``plain``: sealed under the key, or ``plain`` without one."""
        if self._key is None:
            return plain
        nonce = os.urandom(_NONCE)
        # The header is authenticated too: a value cannot be passed off under another id.
        header = f"{PREFIX}{self._key.id}:"
        sealed = self._key.aead.encrypt(nonce, plain.encode(), header.encode())
        return header + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str) -> str:
        """The secret a stored value holds; a value in clear is returned as it is."""
        if not is_sealed(stored):
            return stored
        found = _SEALED.match(stored)
        if found is None:
            raise SecretKeyError("a stored secret is damaged (not a value sealed by smsgw)")
        key_id, body = found.groups()
        key = self._keys.get(key_id)
        if key is None:
            raise SecretKeyError(self._unknown(key_id))
        try:
            blob = base64.urlsafe_b64decode(body)
            plain = key.aead.decrypt(blob[:_NONCE], blob[_NONCE:], stored[: -len(body)].encode())
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretKeyError(
                f"a stored secret sealed under key id {key_id} does not open with that key: "
                "the value is damaged"
            ) from None
        return plain.decode()

    def current(self, stored: str) -> bool:
        """Whether ``stored`` is already as this box writes: sealed under the key, or in
        clear when there is none."""
        if self._key is None:
            return not is_sealed(stored)
        return stored.startswith(f"{PREFIX}{self._key.id}:")

    def _unknown(self, key_id: str) -> str:
        if self._key is None:
            return (
                f"the database holds secrets sealed under a key (id {key_id}) and "
                f"{SETTING} is not set: set it to that key (the hub will not sign with "
                "values it cannot decrypt)"
            )
        known = ", ".join(sorted(self._keys))
        return (
            f"the database holds secrets sealed under key id {key_id}, but {SETTING} "
            f"(and {PREVIOUS_SETTING}, if set) are other keys (id {known}): set {SETTING} "
            f"to the key that sealed them, or that key as {PREVIOUS_SETTING} to rotate"
        )
