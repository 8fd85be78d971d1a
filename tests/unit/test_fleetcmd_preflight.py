"""Preflight against a real SSH server on loopback: online with the pinned key, refused with
a changed key, offline within the dial budget when nothing answers."""

from __future__ import annotations

import io
import socket
import threading
import time
from contextlib import contextmanager

import paramiko
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from fleet.plan import HostTarget, SitePlan
from fleet.preflight import check_host, check_site


@contextmanager
def ssh_server(address: str = "127.0.0.1"):
    """An sshd that completes the key exchange (enough for preflight) and nothing more."""
    host_key = _new_key()
    listener = socket.socket()
    listener.bind((address, 0))
    listener.listen(16)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            transport = paramiko.Transport(conn)
            transport.add_server_key(host_key)
            try:
                transport.start_server(server=paramiko.ServerInterface())
            except (paramiko.SSHException, EOFError, OSError):
                pass
            threading.Timer(2.0, transport.close).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], f"{host_key.get_name()} {host_key.get_base64()}"
    finally:
        stop.set()
        listener.close()


def _new_key():
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return paramiko.Ed25519Key.from_private_key(io.StringIO(pem.decode()))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def site(*hosts: HostTarget) -> SitePlan:
    return SitePlan("s", "p.s", 0, "single-node", "x86-edge", "k3s", {}, {}, tuple(hosts), "r")


def test_online_with_the_pinned_key():
    with ssh_server() as (port, key):
        check = check_host(HostTarget("h", "127.0.0.1", port, key), 5)
    assert check.state == "online", check.reason


def test_a_changed_host_key_is_refused_by_name_with_the_fix():
    other = _new_key()
    with ssh_server() as (port, _):
        check = check_site(site(HostTarget("h", "127.0.0.1", port, f"{other.get_name()} {other.get_base64()}")), 5)
    assert check.state == "hostkey-mismatch"
    assert "h (127.0.0.1)" in check.reason and "re-pin its key in the inventory" in check.reason


def test_offline_within_the_dial_budget_and_never_longer():
    start = time.monotonic()
    check = check_site(
        site(
            HostTarget(
                "h",
                "127.0.0.1",
                free_port(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7",
            )
        ),
        1.5,
    )
    took = time.monotonic() - start
    assert check.state == "offline" and "no SSH answer" in check.reason
    assert 1.0 <= took < 3.0


def test_one_host_down_makes_the_site_offline():
    with ssh_server() as (port, key):
        check = check_site(
            site(HostTarget("up", "127.0.0.1", port, key), HostTarget("down", "127.0.0.1", free_port(), key)), 1.5
        )
    assert check.state == "offline"
    assert [h.state for h in check.hosts] == ["online", "offline"] and check.reason.startswith("down (127.0.0.1)")


def test_a_host_that_accepts_but_never_speaks_is_offline_in_time():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)  # accepts into the backlog, never answers the SSH banner
    try:
        start = time.monotonic()
        check = check_host(
            HostTarget(
                "h",
                "127.0.0.1",
                listener.getsockname()[1],
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7",
            ),
            2,
        )
        assert check.state == "offline" and time.monotonic() - start < 4
    finally:
        listener.close()
