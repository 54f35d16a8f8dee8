"""HTTPS on a LAN: ``smsgw tls init`` makes a local CA and a server certificate, a hub
serves HTTPS with them (``SMSGW_TLS_CERT``/``SMSGW_TLS_KEY``), clients that trust the CA
connect and others do not, and the stock app stand-in registers over it."""

from __future__ import annotations

import ipaddress
import ssl
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from smsgw.cli import main
from smsgw.config import Settings
from smsgw.tls import CA_KEY, SERVER_DAYS, init, parse_hosts
from tests.fakes.smsgate_app import FakeApp
from tests.harness import ADMIN_KEY, HubServer


def test_init_makes_a_ca_and_a_server_certificate_for_the_hosts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = tmp_path / "tls"
    assert (
        main(["tls", "init", "--host", "192.168.1.20", "--host", "hub.lan", "--dir", str(d)]) == 0
    )
    out = capsys.readouterr().out
    assert "SMSGW_TLS_CERT=" in out and "created" in out
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    chain = x509.load_pem_x509_certificates((d / "server.crt").read_bytes())
    server = chain[0]
    assert chain[1] == ca  # the server presents its chain
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.1.20")]
    assert san.get_values_for_type(x509.DNSName) == ["hub.lan"]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert server.issuer == ca.subject
    ca.public_key().verify(  # signed by the CA
        server.signature,
        server.tbs_certificate_bytes,
        ec.ECDSA(server.signature_hash_algorithm),
    )
    life = server.not_valid_after_utc - server.not_valid_before_utc
    assert life <= timedelta(days=SERVER_DAYS, minutes=5)
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((d / key).stat().st_mode) == 0o600
    # Again with another host: the CA is kept (phones keep trusting), the server is new.
    ca_key = (d / CA_KEY).read_bytes()
    assert main(["tls", "init", "--host", "10.0.0.5", "--dir", str(d)]) == 0
    assert "kept" in capsys.readouterr().out
    assert (d / CA_KEY).read_bytes() == ca_key
    renewed = x509.load_pem_x509_certificates((d / "server.crt").read_bytes())[0]
    names = renewed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]


def test_bad_hosts_and_half_settings_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("-bad.lan", "under_score", "a" * 64 + ".lan", "sp ace", ""):
        with pytest.raises(ValueError):
            parse_hosts([bad])
    assert main(["tls", "init", "--host", "no way", "--dir", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert parse_hosts(["Hub.LAN", "hub.lan", "::1"]) == ["hub.lan", "::1"]
    with pytest.raises(ValueError, match="SMSGW_TLS_KEY"):
        Settings(tls_cert="server.crt")


async def test_a_hub_serves_https_that_trusting_clients_accept(tmp_path: Path) -> None:
    issued = init(tmp_path / "tls", ["127.0.0.1"])
    hub = await HubServer(
        tmp_path / "hub.db", tls_cert=str(issued.server_cert), tls_key=str(issued.server_key)
    ).start()
    url = f"https://127.0.0.1:{hub.port}"
    trusting = ssl.create_default_context(cafile=str(issued.ca_cert))
    try:
        async with httpx.AsyncClient(verify=trusting) as c:
            assert (await c.get(url + "/health")).status_code == 200
            r = await c.get(url + "/tls/ca.crt")
            assert r.status_code == 200
            assert r.headers["content-type"] == "application/x-x509-ca-cert"
            assert r.content == issued.ca_cert.read_bytes()
            r = await c.post(url + "/devices/app-tokens", json={}, headers={"X-API-Key": ADMIN_KEY})
            token = r.json()["token"]
        # The system's trust store does not know the local CA; the name must match too.
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(url + "/health")
        async with httpx.AsyncClient(verify=trusting) as c:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await c.get(f"https://localhost:{hub.port}/health")
        # Plain HTTP to the HTTPS port gets nothing served.
        async with httpx.AsyncClient() as c:
            with pytest.raises(httpx.HTTPError):
                await c.get(f"http://127.0.0.1:{hub.port}/health")
        # The app, trusting the CA as a user-installed one, registers and gets work.
        app = FakeApp(url + "/api/mobile/v1", token, verify=trusting)
        try:
            await app.start()
            assert app.webhooks[0]["url"].startswith(url)  # its hooks come back over HTTPS
            async with httpx.AsyncClient(verify=trusting, headers={"X-API-Key": ADMIN_KEY}) as c:
                r = await c.post(url + "/sms/dispatch", json={"to": "+12025550999", "message": "s"})
                assert r.json()["status"] == "SENT" and r.json()["device_id"] == app.device_id
            answers = await app.receive_sms("+12025550123", "over https")
            assert [a.status_code for a in answers] == [204]
        finally:
            await app.close()
    finally:
        await hub.stop()


async def test_no_ca_is_served_without_tls(hub: HubServer, api: httpx.AsyncClient) -> None:
    r = await api.get("/tls/ca.crt")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_the_server_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    late = datetime.now(UTC) + timedelta(days=3650 - 30)
    issued = init(tmp_path, ["hub.lan"])
    again = init(tmp_path, ["hub.lan"], now=late)
    ca = x509.load_pem_x509_certificate(issued.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificates(again.server_cert.read_bytes())[0]
    assert server.not_valid_after_utc <= ca.not_valid_after_utc
