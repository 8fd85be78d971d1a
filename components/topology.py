"""An inventory site as the site component takes it: hosts in install order, each with its
node spec, SSH target, artifacts and machine id.

Everything here is a pure function of the inventory (no resources): the program checks every
site with :func:`check_site` before it registers anything, and builds each site's
:class:`components.site.EdgeSiteArgs` with :func:`site_args`.

- ``single-node``: one server (optionally agents).
- ``ha``: three servers with embedded etcd. The first initialises the cluster; the second
  and third join it through the registration address (or the first server), one after the
  other; agents join after all servers.
- ``gateway``: one constrained, egress-only host with the reduced component set (no
  ingress controller, service load balancer, metrics server or local storage), memory
  reservations for small devices, and the API bound to the management address only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from components.artifact_cache import DownloadError, cache_path, fetch
from components.distributions import DistributionError, NodeSpec, combine_facts, driver_for
from components.host import LocalArtifact, SshTarget, machine_id
from components.inventory import Host, Site, artifact_sha256, expand_path
from components.site import EdgeSiteArgs, SimulatedNodesArgs, SiteHostArgs


@dataclass(frozen=True)
class SiteSettings:
    """What a site needs beyond its inventory entry: the stack's secrets and timeouts."""

    environment: str
    inventory_dir: Path
    fleet_secret: pulumi.Output[str]
    private_keys: dict[str, pulumi.Output[str]]  # host name -> key (secret)
    pull_secret: pulumi.Output[str] | None = None  # MicroShift's pull secret (secret), if the site has one
    dial_timeout_s: int = 60
    ready_timeout_s: int = 300
    command_timeout_s: int | None = None  # None: each remote step's deadline derives from its own waits
    private_key_passphrases: dict[str, pulumi.Output[str]] | None = None  # host name -> passphrase (secret)
    # Host name -> machine id, computed over the whole fleet (see machine_ids); None: this site's.
    machines: dict[str, str] | None = None
    # The stack whose name the install writes into each machine's claim (None: this stack);
    # site stacks migrated from a whole-fleet stack keep claiming as it (config claimsAs).
    claims_as: str | None = None


def machine_ids(hosts: list[tuple[str, str]]) -> dict[str, str]:
    """Host name -> the id its resources are named by, for (host name, pinned host key)
    pairs. A key pinned by several hosts (a cloned image) cannot tell them apart: those
    hosts fall back to ids that include their name (a rename of one of them is a new machine)."""
    ids = {name: machine_id(key) for name, key in hosts}
    shared = {i for i in ids.values() if list(ids.values()).count(i) > 1}
    return {name: f"{i}-{name}" if i in shared else i for name, i in ids.items()}


def ordered_hosts(site: Site) -> list[Host]:
    """Servers first (inventory order), then agents: the order of install and upgrade."""
    return site.servers + site.agents


def node_spec(site: Site, host: Host, first: Host) -> NodeSpec:
    is_first = host.name == first.name
    registration = site.registration_address or first.address
    dist = site.distribution
    return NodeSpec(
        site=site.name,
        host=host.name,
        address=host.address,
        role=host.role,
        first_server=is_first,
        server_url=None if is_first else f"https://{registration}:6443",
        arch=host.arch or "amd64",
        labels={"edgefleet.io/site": site.name, **host.labels},
        taints=list(host.taints),
        tls_sans=sorted(
            {*site.tls_sans, host.address, *([site.registration_address] if site.registration_address else [])}
        ),
        cluster_cidr=site.network.cluster_cidr,
        service_cidr=site.network.service_cidr,
        profile="gateway" if site.topology == "gateway" else "standard",
        disable_agent=dist.disable_agent and host.role == "server",
        service_manager=dist.service_manager,
        registry_mirrors=dict(site.registry_mirrors),
        ha=site.topology == "ha",
        extra_args=tuple(dist.extra_args if host.role == "server" else dist.agent_args),
        protect_kernel_defaults=dist.protect_kernel_defaults,
        restrict_oom_score_adj=dist.restrict_oom_score_adj,
    )


def check_site(site: Site, base: Path) -> list[str]:
    """Every problem the distribution driver finds in this site's rendered nodes, found
    before any resource is registered (so an update never starts half-way)."""
    driver = driver_for(site.distribution.name)
    hosts = ordered_hosts(site)
    problems = []
    for host in hosts:
        node = node_spec(site, host, hosts[0])
        arts = [a.for_driver() for a in local_artifacts(site, host, base)]
        try:
            driver.render_install(node, arts)
            driver.render_uninstall(node)
        except DistributionError as exc:
            problems.append(f"site {site.name!r} host {host.name!r}: {exc}")
    return problems


def site_props(site: Site, environment: str, base: Path) -> dict[str, Any]:
    """The site as the policy pack sees it (contract: policies/rules/edge.py). The install
    facts are what the driver renders for each node (config files and command line),
    combined so that a fact holds only if it holds on every node; a site the driver cannot
    render holds none."""
    driver = driver_for(site.distribution.name)
    hosts = ordered_hosts(site)
    try:
        facts = combine_facts([driver.install_facts(node_spec(site, h, hosts[0])) for h in hosts])
    except DistributionError:
        facts = combine_facts([])
    return {
        "site": site.name,
        "topology": site.topology,
        "environment": environment,
        "distribution": site.distribution.name,
        "version": site.distribution.version,
        "channel": None,
        "install": facts,
        "registryMirrors": {registry: list(endpoints) for registry, endpoints in sorted(site.registry_mirrors.items())},
        "artifacts": [{"name": a.name, "source": a.source, "sha256": artifact_sha256(a, base)} for a in site.artifacts],
        "hosts": [{"name": h.name, "address": h.address, "hostKey": host_key(h, base)} for h in site.hosts],
        "annotations": {},
    }


def host_key(host: Host, base: Path) -> str:
    if host.ssh.host_key is not None:
        return host.ssh.host_key
    assert host.ssh.host_key_file is not None
    return expand_path(host.ssh.host_key_file, base).read_text().strip()


def local_artifacts(site: Site, host: Host, base: Path) -> tuple[LocalArtifact, ...]:
    arch = host.arch or "amd64"
    chosen = [a for a in site.artifacts if a.arch == arch]
    return tuple(
        LocalArtifact(
            name=a.name,
            path=(
                str(cache_path(a.source, artifact_sha256(a, base) or ""))
                if a.source.startswith("https://")
                else str(expand_path(a.source, base))
            ),
            sha256=artifact_sha256(a, base) or "",
            url=a.source if a.source.startswith("https://") else None,
        )
        for a in chosen
    )


def download_artifacts(site: Site, base: Path) -> None:
    """Download and verify the site's https artifacts into the cache (before an update
    uploads them); the first failure stops the program, naming site, artifact and URL."""
    for a in site.artifacts:
        if a.source.startswith("https://"):
            try:
                fetch(
                    a.source, artifact_sha256(a, base) or "", what=f"site {site.name!r} artifact {a.name!r} ({a.arch})"
                )
            except DownloadError as exc:
                raise pulumi.RunError(str(exc)) from None


def site_args(site: Site, settings: SiteSettings) -> EdgeSiteArgs:
    """The site component's arguments for an inventory site."""
    base = settings.inventory_dir
    hosts = ordered_hosts(site)
    first = hosts[0]
    machines = settings.machines or machine_ids([(h.name, host_key(h, base)) for h in site.hosts])
    passphrases = settings.private_key_passphrases or {}
    simulated = None
    if site.simulated_nodes is not None:
        sim = site.simulated_nodes
        simulated = SimulatedNodesArgs(
            count=sim.count,
            kwok=LocalArtifact(
                name="kwok", path=str(expand_path(sim.kwok.source, base)), sha256=artifact_sha256(sim.kwok, base) or ""
            ),
            stages=expand_path(sim.stages, base).read_text(),
        )
    return EdgeSiteArgs(
        claims_as=settings.claims_as,
        site=site.name,
        distribution=site.distribution.name,
        version=site.distribution.version,
        props=site_props(site, settings.environment, base),
        hosts=tuple(
            SiteHostArgs(
                name=host.name,
                role=host.role,
                node=node_spec(site, host, first),
                target=SshTarget(
                    address=host.address,
                    port=host.ssh.port,
                    user=host.ssh.user,
                    private_key=settings.private_keys[host.name],
                    host_key=host_key(host, base),
                    dial_timeout_s=settings.dial_timeout_s,
                    command_timeout_s=settings.command_timeout_s,
                    private_key_passphrase=passphrases.get(host.name),
                ),
                artifacts=local_artifacts(site, host, base),
                machine=machines[host.name],
                # Prod refuses to uninstall or remove a node unless the change says so.
                protect=settings.environment == "prod" and not host.decommission,
            )
            for host in hosts
        ),
        api_address=site.registration_address or first.address,
        fleet_secret=settings.fleet_secret,
        pull_secret=settings.pull_secret,
        ready_timeout_s=settings.ready_timeout_s,
        simulated=simulated,
    )
