"""https:// artifacts: downloaded on the machine running Pulumi from a local HTTPS server with a
self-signed certificate (trusted through EDGEFLEET_CA_BUNDLE, never by turning verification
off), verified against the inventory's sha256 into the cache, then uploaded like local files."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

import tests.unit.test_topology as topo
from components.artifact_cache import CA_BUNDLE_ENV, DownloadError, cache_path, fetch
from components.inventory import load_inventory
from tests.unit.test_inventory import HOST_KEY, PRIVATE_KEY

PAYLOAD = b"k3s release binary, published over https"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/stall/k3s":
            time.sleep(5)
        if self.path == "/to-http/k3s":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/k3s")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        self.wfile.write(PAYLOAD)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """(base URL, CA bundle) of an HTTPS server on loopback; the cache is a temp directory."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("EDGEFLEET_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(CA_BUNDLE_ENV, raising=False)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", cert
    finally:
        server.shutdown()


WHAT = "site 'store-1' artifact 'k3s' (amd64)"


def test_download_is_verified_into_the_cache_and_reused(
    https: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base, ca = https
    monkeypatch.setenv(CA_BUNDLE_ENV, str(ca))
    path = fetch(f"{base}/k3s/v1.33.4/k3s", SHA, what=WHAT)
    assert path == tmp_path / "cache" / "artifacts" / SHA / "k3s" == cache_path(f"{base}/k3s/v1.33.4/k3s", SHA)
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == ["k3s"], "no partial download left behind"
    # A cached copy is verified again; a tampered one is downloaded anew.
    path.write_bytes(b"tampered")
    assert fetch(f"{base}/k3s/v1.33.4/k3s", SHA, what=WHAT).read_bytes() == PAYLOAD


def test_an_untrusted_certificate_is_refused(https: tuple[str, Path]) -> None:
    base, _ = https
    with pytest.raises(DownloadError) as info:
        fetch(f"{base}/k3s", SHA, what=WHAT)
    message = str(info.value)
    assert message.startswith(f"{WHAT}: cannot download {base}/k3s: ") and "CERTIFICATE_VERIFY_FAILED" in message
    assert (
        "(fix: check that the URL is reachable from this machine "
        f"and its server's certificate is trusted (set {CA_BUNDLE_ENV}" in message
    )
    assert not cache_path(f"{base}/k3s", SHA).exists()


def test_a_wrong_digest_a_downgrade_and_a_stalled_server_fail_naming_the_artifact(
    https: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, ca = https
    monkeypatch.setenv(CA_BUNDLE_ENV, str(ca))
    with pytest.raises(DownloadError) as info:
        fetch(f"{base}/k3s", "0" * 64, what=WHAT)
    assert str(info.value).startswith(f"{WHAT}: {base}/k3s has sha256 {SHA}, expected {'0' * 64} (fix: ")
    assert not cache_path(f"{base}/k3s", "0" * 64).exists()
    with pytest.raises(DownloadError) as info:
        fetch(f"{base}/to-http/k3s", SHA, what=WHAT)
    assert "redirected to 'http://127.0.0.1:1/k3s', which is not https" in str(info.value)
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(f"{base}/stall/k3s", SHA, what=WHAT, timeout_s=1)
    assert time.monotonic() - t0 < 4 and str(info.value).startswith(f"{WHAT}: cannot download {base}/stall/k3s: ")


INVENTORY = """
fleet: unit
environment: prod
defaults: {ssh: {user: edgeops, private_key: {config: sshKeyFleet}}}
sites:
  - name: store-1
    topology: single-node
    distribution: {name: k3s, version: v1.33.4+k3s1}
    artifacts:
      - {name: k3s, arch: amd64, source: "%(url)s", sha256: %(sha)s}
    hosts:
      - {name: s1, address: 10.0.3.11, ssh: {host_key: "%(hk)s"}}
"""


def _update_program(tmp_path: Path, url: str):  # type: ignore[no-untyped-def]
    """The fleet program (as build_fleet runs it) for a one-host prod site whose K3s binary comes from ``url``."""
    path = tmp_path / "prod.yaml"
    path.write_text(INVENTORY % {"url": url, "sha": SHA, "hk": HOST_KEY})
    loaded = load_inventory(path)

    def program() -> Any:
        from components.fleet import EdgeFleet
        from components.program import fetch_artifacts, fleet_args

        fetch_artifacts(loaded)
        EdgeFleet("fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(topo.FLEET_SECRET)))
        return True

    return program


def test_an_update_uploads_the_verified_download(
    https: tuple[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    base, ca = https
    monkeypatch.setenv(CA_BUNDLE_ENV, str(ca))
    r = topo.run(_update_program(tmp_path, f"{base}/k3s"), {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",))
    upload = r.get("store-1-s1-upload-k3s").inputs
    assert upload["source"] == str(cache_path(f"{base}/k3s", SHA))
    assert Path(upload["source"]).read_bytes() == PAYLOAD
    install = r.get("store-1-s1-install").inputs["create"]
    assert f"verify_artifact k3s {upload['remote_path']} {SHA}" in install


def test_an_update_stops_before_registering_anything_when_a_download_fails(
    https: tuple[str, Path], tmp_path: Path
) -> None:
    base, _ = https
    errors: list[str] = []

    def program() -> Any:
        with pytest.raises(pulumi.RunError) as info:
            _update_program(tmp_path, f"{base}/k3s")()
        errors.append(str(info.value))
        return True

    topo.run(program, {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",))
    assert errors and errors[0].startswith(f"site 'store-1' artifact 'k3s' (amd64): cannot download {base}/k3s: ")
