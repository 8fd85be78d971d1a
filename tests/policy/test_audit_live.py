"""The live audit never sends credentials over plain HTTP, and does send them over HTTPS."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.policy.conftest import FakeApiServer, audit

SECRET = "t0ken-5ec2e7-do-not-leak"


def _self_signed(tmp: Path) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp / "server.crt", tmp / "server.key"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file, pem


def _serve(tmp_path: Path, tls: bool):
    FakeApiServer.objects, FakeApiServer.forbidden, FakeApiServer.seen_auth = {}, frozenset(), []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    ca = None
    if tls:
        cert_file, key_file, ca = _self_signed(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{httpd.server_port}", ca
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def http_server(tmp_path):
    yield from _serve(tmp_path, tls=False)


@pytest.fixture
def https_server(tmp_path):
    yield from _serve(tmp_path, tls=True)


def kubeconfig(tmp_path: Path, url: str, user: dict, ca: bytes | None = None) -> Path:
    cluster = {"server": url, **({"certificate-authority-data": base64.b64encode(ca).decode()} if ca else {})}
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


CREDENTIALS = {
    "token": {"token": SECRET},
    "basic": {"username": "admin", "password": SECRET},
    "client certificate": {
        "client-certificate-data": base64.b64encode(b"cert").decode(),
        "client-key-data": base64.b64encode(SECRET.encode()).decode(),
    },
}


@pytest.mark.parametrize("kind", sorted(CREDENTIALS))
def test_credentials_are_never_sent_over_plain_http(http_server, tmp_path, kind):
    url, _ = http_server
    run = audit("--kubeconfig", str(kubeconfig(tmp_path, url, CREDENTIALS[kind])))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "over plain HTTP" in run.stderr and "(fix: " in run.stderr and "Traceback" not in run.stderr
    assert SECRET not in run.stdout + run.stderr
    assert FakeApiServer.seen_auth == [], "no request reached the server"


def test_a_context_without_credentials_may_use_http(http_server, tmp_path):
    url, _ = http_server
    run = audit("--kubeconfig", str(kubeconfig(tmp_path, url, {})))
    assert run.returncode == 0, run.stderr
    assert FakeApiServer.seen_auth and set(FakeApiServer.seen_auth) == {""}


def test_credentials_go_to_an_https_server(https_server, tmp_path):
    url, ca = https_server
    run = audit("--kubeconfig", str(kubeconfig(tmp_path, url, CREDENTIALS["token"], ca)))
    assert run.returncode == 0, run.stderr
    assert FakeApiServer.seen_auth and set(FakeApiServer.seen_auth) == {f"Bearer {SECRET}"}
