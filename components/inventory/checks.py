"""What the schema cannot see field by field: the shape of each site's topology, names and
addresses unique across the fleet, and the files an inventory names (present, private when
they hold a secret, not writable by others when they pin trust).

Each check returns ``(field, message, fix)`` triples; the loader adds the file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from components.contract import SHA256, shown
from components.inventory.paths import expand_path
from components.inventory.spec import HOST_KEY, ArtifactSpec, Inventory, SecretRef, Site

Found = list[tuple[str, str, str]]

# Servers a topology needs: (count, what, fix).
TOPOLOGY_SERVERS = {
    "ha": (
        3,
        "topology 'ha' needs exactly 3 servers",
        "mark 3 hosts `role: server` (embedded etcd); extra hosts are agents",
    ),
    "single-node": (
        1,
        "topology 'single-node' needs exactly 1 server",
        "mark one host `role: server`; others join as agents",
    ),
}


def cross_checks(inv: Inventory) -> Found:
    """Rules that span fields: topology shape, uniqueness across the fleet, what a site can run."""
    found: Found = []
    seen_sites: dict[str, int] = {}
    seen_hosts: dict[str, str] = {}
    seen_addrs: dict[str, str] = {}
    for i, site in enumerate(inv.sites):
        at = f"sites[{i}]"
        if site.name in seen_sites:
            found.append(
                (
                    f"{at}.name",
                    f"site name {site.name!r} is already used by sites[{seen_sites[site.name]}]",
                    "give every site a unique name",
                )
            )
        seen_sites.setdefault(site.name, i)
        found += _topology(site, at)
        if inv.monitoring is not None and site.monitoring_namespace is None:
            found.append(
                (
                    f"{at}.monitoring_namespace",
                    "is required: the inventory names a monitoring core, so every site runs an agent",
                    "add monitoring_namespace: monitoring (the namespace the site's agent runs in)",
                )
            )
        for j, host in enumerate(site.hosts):
            hat = f"{at}.hosts[{j}]"
            if host.name in seen_hosts:
                found.append(
                    (
                        f"{hat}.name",
                        f"host name {host.name!r} is already used in {seen_hosts[host.name]}",
                        "host names are unique across the fleet",
                    )
                )
            seen_hosts.setdefault(host.name, f"site {site.name!r}")
            if host.address in seen_addrs:
                found.append(
                    (
                        f"{hat}.address",
                        f"address {host.address} is already used by host {seen_addrs[host.address]!r}",
                        "every host needs its own address",
                    )
                )
            seen_addrs.setdefault(host.address, host.name)
            if host.ssh.host_key is None and host.ssh.host_key_file is None:
                found.append(
                    (
                        f"{hat}.ssh.host_key",
                        "no SSH host key is pinned",
                        "set `host_key: ssh-ed25519 AAAA...` or `host_key_file:` so the connection cannot be "
                        "intercepted",
                    )
                )
            if host.ssh.private_key is None:
                found.append(
                    (
                        f"{hat}.ssh.private_key",
                        "no SSH private key reference",
                        "set `private_key: {file: PATH}` or `{config: KEY}` here or in `defaults.ssh`",
                    )
                )
        if site.distribution.disable_agent and not site.agents and site.simulated_nodes is None:
            found.append(
                (
                    f"{at}.distribution.disable_agent",
                    f"site {site.name!r} would have no node to run workloads: its servers run without the "
                    "agent and it has no agents",
                    "drop disable_agent, or add agents",
                )
            )
        if site.simulated_nodes is not None and inv.environment == "prod":
            found.append(
                (
                    f"{at}.simulated_nodes",
                    "simulated (kwok) nodes are for the lab only",
                    "remove `simulated_nodes` from prod sites",
                )
            )
        for j, wl in enumerate(site.workloads):
            if wl.gpu and not any(h.gpu for h in site.hosts):
                found.append(
                    (
                        f"{at}.workloads[{j}].gpu",
                        f"model {wl.model!r} asks for a GPU but no host of site {site.name!r} declares one",
                        "add `gpu: {vendor: nvidia, count: 1}` to a host or set `gpu: false`",
                    )
                )
            if wl.max_replicas is not None and wl.max_replicas < wl.replicas:
                found.append(
                    (
                        f"{at}.workloads[{j}].max_replicas",
                        f"max_replicas {wl.max_replicas} is below replicas {wl.replicas}",
                        "set max_replicas >= replicas",
                    )
                )
    return found


def _topology(site: Site, at: str) -> Found:
    """The servers each topology needs, and the topologies a distribution cannot run."""
    found: Found = []
    servers = len(site.servers)
    if site.topology in TOPOLOGY_SERVERS:
        needed, what, fix = TOPOLOGY_SERVERS[site.topology]
        if servers != needed:
            found.append((f"{at}.hosts", f"{what}, found {servers}", fix))
    if site.topology == "gateway" and (len(site.hosts) != 1 or servers != 1):
        found.append(
            (
                f"{at}.hosts",
                f"topology 'gateway' is one constrained host, found {len(site.hosts)} host(s)",
                "keep a single host with `role: server`",
            )
        )
    if site.distribution.name == "microshift" and site.topology == "ha":
        found.append((f"{at}.distribution.name", "MicroShift runs single-node only", "use k3s or k0s for an 'ha' site"))
    return found


# Messages about files show each path as the inventory writes it, never its expansion.


def _private_file(ref: SecretRef | None, base: Path, at: str, fix: str) -> Found:
    """A secret kept in a file must be readable by us and by nobody else."""
    if ref is None or ref.file is None:
        return []
    p = expand_path(ref.file, base)
    if not p.is_file() or not os.access(p, os.R_OK):
        return [(at, f"{shown(ref.file, 200)} is not a readable file", fix)]
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [(at, f"{shown(ref.file, 200)} is readable by group or others", f"chmod 600 {ref.file}")]
    return []


def _host_key_file(written: str, base: Path, at: str) -> Found:
    """A file that pins a host key must hold one, and others must not be able to rewrite it (and
    so redirect the connection to a host of their choice)."""
    p = expand_path(written, base)
    if not p.is_file():
        return [
            (
                at,
                f"{shown(written, 200)} does not exist",
                "write the host's public key there; for the lab run `lab/lab keys`",
            )
        ]
    if p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return [(at, f"{shown(written, 200)} is writable by group or others", f"chmod go-w {written}")]
    if not HOST_KEY.fullmatch(p.read_text().strip()):
        return [
            (
                at,
                f"{shown(written, 200)} does not hold an OpenSSH public host key",
                "write the output of `ssh-keyscan -t ed25519 HOST` without the host name",
            )
        ]
    return []


def file_checks(inv: Inventory, base: Path) -> Found:
    """Secret, key and checksum files named by the inventory must exist; secrets must be private."""
    found: Found = []
    for i, site in enumerate(inv.sites):
        found += _private_file(
            site.distribution.pull_secret,
            base,
            f"sites[{i}].distribution.pull_secret.file",
            "save the pull secret from console.redhat.com there, or use `{config: KEY}`",
        )
        for j, host in enumerate(site.hosts):
            at = f"sites[{i}].hosts[{j}].ssh"
            found += _private_file(
                host.ssh.private_key,
                base,
                f"{at}.private_key.file",
                "create the key or point to it; for the lab run `lab/lab keys`",
            )
            found += _private_file(
                host.ssh.private_key_passphrase,
                base,
                f"{at}.private_key_passphrase.file",
                "write the key's passphrase there, or use `{config: KEY}`",
            )
            if host.ssh.host_key_file is not None:
                found += _host_key_file(host.ssh.host_key_file, base, f"{at}.host_key_file")
        sim = [(f"sites[{i}].simulated_nodes.kwok", site.simulated_nodes.kwok)] if site.simulated_nodes else []
        if site.simulated_nodes and not expand_path(site.simulated_nodes.stages, base).is_file():
            found.append(
                (
                    f"sites[{i}].simulated_nodes.stages",
                    f"{shown(site.simulated_nodes.stages, 200)} does not exist",
                    "run scripts/bootstrap kwok",
                )
            )
        for at, art in [(f"sites[{i}].artifacts[{j}]", a) for j, a in enumerate(site.artifacts)] + sim:
            found += _artifact_files(art, base, at)
    return found


def _artifact_files(art: ArtifactSpec, base: Path, at: str) -> Found:
    found: Found = []
    if art.sha256_from is not None:
        if not expand_path(art.sha256_from, base).is_file():
            found.append(
                (
                    f"{at}.sha256_from",
                    f"{shown(art.sha256_from, 200)} does not exist",
                    "point to the release's checksums file, or run scripts/bootstrap for the lab build",
                )
            )
        elif artifact_sha256(art, base) is None:
            found.append(
                (
                    f"{at}.sha256_from",
                    f"{shown(art.sha256_from, 200)} lists no checksum for {Path(art.source).name!r}",
                    "use the checksums file of this release",
                )
            )
    if not art.source.startswith("https://") and not expand_path(art.source, base).is_file():
        found.append(
            (
                f"{at}.source",
                f"{shown(art.source, 200)} does not exist",
                "download the release artifact to this path or use an https:// URL",
            )
        )
    return found


def artifact_sha256(art: ArtifactSpec, base: Path) -> str | None:
    """The expected digest of an artifact, read from its checksums file when needed."""
    if art.sha256 is not None:
        return art.sha256
    assert art.sha256_from is not None
    wanted = Path(art.source).name
    for line in expand_path(art.sha256_from, base).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*./") == wanted and SHA256.fullmatch(parts[0]):
            return parts[0]
    return None
