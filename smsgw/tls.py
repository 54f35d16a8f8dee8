"""A local certificate authority for serving the hub over HTTPS on a LAN (``smsgw tls init``).

The stock app's release build speaks plain HTTP only to 127.0.0.1 (docs/smsgate-app.md),
so a hub at ``192.168.x.y`` needs a certificate the phone trusts. No public CA issues one
for a private address; this makes a CA of the user's own, whose certificate they install
on the phone once (Android: Settings > Security > Install a certificate > CA certificate,
or download it from ``GET /tls/ca.crt``), and a server certificate for the hub's addresses
and names, signed by it. Re-running with other hosts keeps the CA, so phones that trust
it keep trusting the hub. Built with ``cryptography``; nothing here is hand-rolled.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.crt", "ca.key"
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
CA_DAYS = 3650
# Android and browsers refuse server certificates valid for longer than 825 days.
SERVER_DAYS = 825
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Issued:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_created: bool


def _key() -> ec.EllipticCurvePrivateKey:
    # P-256: every Android version the app supports (5.0+) accepts it, and it is small.
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created with owner-only permissions: the key is never readable by others, not even
    # between open and chmod.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def parse_hosts(hosts: list[str]) -> list[str]:
    """The hosts a certificate names: IP addresses or DNS names, each checked."""
    found: list[str] = []
    for raw in hosts:
        host = raw.strip().lower()
        if not host:
            continue
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not all(_LABEL.match(x) for x in host.rstrip(".").split(".")):
                raise ValueError(f"not an IP address or a host name: {raw!r}") from None
        if host not in found:
            found.append(host)
    if not found:
        raise ValueError("name at least one --host: the hub's LAN address or name")
    return found


def _create_ca(
    directory: Path, now: dt.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "smsgw"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"smsgw local CA {now:%Y-%m-%d}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, key)
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        return None
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: not a key this tool made")
    return cert, key


def init(directory: Path, hosts: list[str], now: dt.datetime | None = None) -> Issued:
    """The CA in ``directory`` (made the first time, reused after) and a new server
    certificate for ``hosts``, signed by it."""
    now = now or dt.datetime.now(dt.UTC)
    names = parse_hosts(hosts)
    directory.mkdir(parents=True, exist_ok=True)
    loaded = _load_ca(directory)
    ca_created = loaded is None
    ca_cert, ca_key = loaded if loaded is not None else _create_ca(directory, now)
    key = _key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=SERVER_DAYS), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(directory / SERVER_KEY, key)
    # The chain the server presents: its own certificate, then the CA's.
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
        serialization.Encoding.PEM
    )
    (directory / SERVER_CERT).write_bytes(chain)
    return Issued(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY, ca_created)


def ca_of(cert_path: Path) -> bytes | None:
    """The CA certificate to hand to phones for a hub serving ``cert_path``: the last
    certificate of its chain when that one is a CA (what ``init`` writes), else None."""
    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
    except (OSError, ValueError):
        return None
    if len(chain) < 2:
        return None
    last = chain[-1]
    try:
        constraints = last.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    return last.public_bytes(serialization.Encoding.PEM) if constraints.ca else None
