"""EdgeFleet: every site of one stack, and what runs on them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pulumi

from components.inventory import LoadedInventory, SecretRef, Site, expand_path
from components.site import EdgeSite, SiteSettings, host_key, machine_ids

# A workload deployer receives the inventory site and its component and deploys onto the
# site's provider; the inference component plugs in here so the fleet does not depend on what
# runs on a site.
WorkloadDeployer = Callable[[Site, EdgeSite], None]


@dataclass(frozen=True)
class FleetArgs:
    inventory: LoadedInventory
    fleet_secret: pulumi.Output[str]
    dial_timeout_s: int = 60
    ready_timeout_s: int = 300
    command_timeout_s: int | None = None  # None: each remote step's deadline derives from its own timeouts
    deployers: tuple[WorkloadDeployer, ...] = field(default_factory=tuple)
    probe_servers: bool = False


def probe_servers(inventory: LoadedInventory, timeout_s: float = 2.0) -> list[str]:
    """Servers whose Kubernetes API port does not accept a connection, as messages naming
    site and host. All probes run at once, so the whole check takes at most ``timeout_s``."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    targets = [(s.name, h.name, h.address) for s in inventory.inventory.sites for h in s.servers]

    def down(target: tuple[str, str, str]) -> str | None:
        site, host, address = target
        try:
            socket.create_connection((address, 6443), timeout=timeout_s).close()
            return None
        except OSError as exc:
            return (f"site {site!r} host {host!r} ({address}): Kubernetes API not answering on port 6443 "
                    f"({exc.strerror or exc}); expected only before its first install")

    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(targets))) as pool:
        return [m for m in pool.map(down, targets) if m]


def read_secret(ref: SecretRef, base: Path, config: pulumi.Config) -> pulumi.Output[str]:
    """A secret reference as a Pulumi secret: the file's content or a config secret."""
    if ref.config is not None:
        return config.require_secret(ref.config)
    assert ref.file is not None
    return pulumi.Output.secret(expand_path(ref.file, base).read_text())


class EdgeFleet(pulumi.ComponentResource):
    """All sites of a stack's inventory; exports each site's kubeconfig as a secret."""

    sites: dict[str, EdgeSite]

    def __init__(self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None):
        inv = args.inventory.inventory
        super().__init__("edge:fleet:EdgeFleet", name, {"fleet": inv.fleet, "environment": inv.environment}, opts)
        config = pulumi.Config()
        base = args.inventory.base
        if args.probe_servers:
            for message in probe_servers(args.inventory):
                pulumi.log.warn(message, resource=self)
        self.sites = {}
        # Machine ids over the whole fleet: a host key pinned twice (a cloned image) anywhere
        # falls back to name-based ids, so resource names can never collide across sites.
        machines = machine_ids([(h.name, host_key(h, base)) for s in inv.sites for h in s.hosts])
        for host, machine in machines.items():
            if machine.endswith(f"-{host}"):
                pulumi.log.warn(f"host {host!r}: its pinned SSH host key is pinned by another host too (a cloned "
                                "image?); its resources are named by host name, so renaming it reinstalls it "
                                "(fix: give every machine its own host key: ssh-keygen -A)", resource=self)
        for site in inv.sites:
            keys = {h.name: read_secret(h.ssh.private_key, base, config) for h in site.hosts if h.ssh.private_key}
            settings = SiteSettings(
                environment=inv.environment,
                inventory_dir=base,
                fleet_secret=args.fleet_secret,
                private_keys=keys,
                pull_secret=(read_secret(site.distribution.pull_secret, base, config)
                             if site.distribution.pull_secret else None),
                dial_timeout_s=args.dial_timeout_s,
                ready_timeout_s=args.ready_timeout_s,
                command_timeout_s=args.command_timeout_s,
                # A passphrase file ends with a newline that is not part of the passphrase.
                private_key_passphrases={h.name: read_secret(h.ssh.private_key_passphrase, base, config)
                                         .apply(lambda s: s.rstrip("\r\n"))
                                         for h in site.hosts if h.ssh.private_key_passphrase},
                machines=machines,
            )
            edge_site = EdgeSite(site.name, site, settings, pulumi.ResourceOptions(parent=self))
            for deploy in args.deployers:
                deploy(site, edge_site)
            self.sites[site.name] = edge_site
        self.kubeconfigs = {n: s.kubeconfig for n, s in self.sites.items()}
        self.register_outputs({"sites": list(self.sites)})
