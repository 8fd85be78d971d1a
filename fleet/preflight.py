"""Is a site reachable right now? TCP, then the SSH handshake up to the server's host key,
which must be the pinned one. No credentials are used: reaching the key exchange proves
the host and its sshd answer, and the key proves it is the machine the inventory pins.

Every host of a site is dialled at once; the whole check ends within ``timeout_s``
(attempts repeat until then, so an sshd that is restarting gets a second chance).
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fleet.plan import HostTarget, SitePlan

# paramiko's names for the host key algorithms a pinned key of each type may be shown with.
KEY_ALGORITHMS = {
    "ssh-rsa": ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
}


@dataclass(frozen=True)
class HostCheck:
    host: str
    address: str
    state: str  # online | offline | hostkey-mismatch
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class SiteCheck:
    site: str
    state: str  # online | offline | hostkey-mismatch
    hosts: tuple[HostCheck, ...]
    seconds: float

    @property
    def reason(self) -> str:
        bad = [h for h in self.hosts if h.state != "online"]
        return "; ".join(f"{h.host} ({h.address}): {h.reason}" for h in bad)


def _handshake(target: HostTarget, timeout_s: float) -> str | None:
    """None when the host showed the pinned key; otherwise why not (raises OSError/SSHException
    when it cannot be reached)."""
    import paramiko

    pinned = paramiko.hostkeys.HostKeyEntry.from_line(f"h {target.host_key}")
    if pinned is None:
        return "mismatch: the pinned host key is not an OpenSSH public key"
    sock = socket.create_connection((target.address, target.port), timeout=timeout_s)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout_s
        transport.handshake_timeout = timeout_s
        name = pinned.key.get_name()
        transport.get_security_options().key_types = KEY_ALGORITHMS.get(name, [name])
        transport.start_client(timeout=timeout_s)
        shown = transport.get_remote_server_key()
        if shown.asbytes() != pinned.key.asbytes():  # the key blob, whatever signature algorithm
            return (
                f"mismatch: the host showed a different {shown.get_name()} key (a replaced or reimaged "
                "machine, or someone in the path) (fix: verify the machine, then re-pin its key in the "
                "inventory: ssh-keyscan -t ed25519 HOST)"
            )
        return None
    finally:
        transport.close()


def check_host(target: HostTarget, timeout_s: float) -> HostCheck:
    import paramiko

    start = time.monotonic()
    deadline = start + timeout_s
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            return HostCheck(
                target.name,
                target.address,
                "offline",
                f"no SSH answer on port {target.port} within {timeout_s:g}s ({last})",
                time.monotonic() - start,
            )
        try:
            problem = _handshake(target, remaining)
        except (OSError, paramiko.SSHException, EOFError) as exc:
            last = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            continue
        seconds = time.monotonic() - start
        if problem is None:
            return HostCheck(target.name, target.address, "online", "", seconds)
        return HostCheck(target.name, target.address, "hostkey-mismatch", problem.removeprefix("mismatch: "), seconds)


def check_site(site: SitePlan, timeout_s: float) -> SiteCheck:
    """online when every host answers with its pinned key; a changed key wins over offline."""
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, len(site.hosts))) as pool:
        hosts = tuple(pool.map(lambda h: check_host(h, timeout_s), site.hosts))
    states = {h.state for h in hosts}
    state = "hostkey-mismatch" if "hostkey-mismatch" in states else "offline" if "offline" in states else "online"
    return SiteCheck(site.name, state, hosts, time.monotonic() - start)
