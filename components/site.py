"""EdgeSite: one edge site; its topology decides the shape.

- ``single-node``: one server (optionally agents).
- ``ha``: three servers with embedded etcd. The first initialises the cluster; the second
  and third join it through the registration address (or the first server), one after the
  other; agents join after all servers.
- ``gateway``: one constrained, egress-only host with the reduced component set (no
  ingress controller, service load balancer, metrics server or local storage), memory
  reservations for small devices, and the API bound to the management address only.

Hosts are chained in that order, so a version change upgrades one node at a time, servers
before agents, and stops at the first failure with the rest of the cluster still serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s

from components.distributions import driver_for
from components.distributions.common import DistributionError, Driver, NodeSpec, combine_facts
from components import remote, simulated
from components.artifact_cache import DownloadError, cache_path, fetch
from components.host import EdgeHost, EdgeHostArgs, LocalArtifact, SshTarget, machine_id
from components.inventory import Host, Site, artifact_sha256, expand_path


@dataclass(frozen=True)
class SiteSettings:
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


def machine_ids(hosts: list[tuple[str, str]]) -> dict[str, str]:
    """Host name -> the id its resources are named by, for (host name, pinned host key)
    pairs. A key pinned by several hosts (a cloned image) cannot tell them apart: those
    hosts fall back to ids that include their name (a rename of one of them is a new machine)."""
    ids = {name: machine_id(key) for name, key in hosts}
    shared = {i for i in ids.values() if list(ids.values()).count(i) > 1}
    return {name: f"{i}-{name}" if i in shared else i for name, i in ids.items()}


def join_token(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """Per-site join token derived from the stack's fleet secret (HMAC-SHA256): stable
    across runs, different for every site, never stored in plain text."""
    return pulumi.Output.secret(
        fleet_secret.apply(lambda s: hmac.new(s.encode(), f"edgefleet/join/{site}".encode(), hashlib.sha256).hexdigest())
    )


def agent_token(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """The site's agent token (K3s): joins agents only, never a server."""
    return pulumi.Output.secret(
        fleet_secret.apply(lambda s: hmac.new(s.encode(), f"edgefleet/agent-join/{site}".encode(), hashlib.sha256).hexdigest())
    )


def encryption_key(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """The site's Secrets encryption key (k0s): 32 bytes, base64, derived from the fleet
    secret like the join token, so it is never stored in plain text."""
    return pulumi.Output.secret(fleet_secret.apply(lambda s: base64.b64encode(
        hmac.new(s.encode(), f"edgefleet/secrets-encryption/{site}".encode(), hashlib.sha256).digest()).decode()))


def site_secret(site: Site, settings: SiteSettings) -> pulumi.Output[str]:
    """What every install reads from the driver's secret variable: the site's join token
    (K3s, k0s's first controller) or MicroShift's pull secret (empty without one)."""
    if site.distribution.name == "microshift":
        return settings.pull_secret if settings.pull_secret is not None else pulumi.Output.secret("")
    return join_token(settings.fleet_secret, site.name)


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
        tls_sans=sorted({*site.tls_sans, host.address, *([site.registration_address] if site.registration_address else [])}),
        cluster_cidr=site.network.cluster_cidr,
        service_cidr=site.network.service_cidr,
        profile="gateway" if site.topology == "gateway" else "standard",
        disable_agent=dist.disable_agent and host.role == "server",
        service_manager=dist.service_manager,
        registry_mirrors=dict(site.registry_mirrors),
        ha=site.topology == "ha",
        extra_args=tuple(dist.extra_args if host.role == "server" else dist.agent_args),
        protect_kernel_defaults=dist.protect_kernel_defaults,
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


def site_props(site: Site, environment: str, base: Path) -> dict:
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
        "artifacts": [
            {"name": a.name, "source": a.source, "sha256": artifact_sha256(a, base)} for a in site.artifacts
        ],
        "hosts": [
            {"name": h.name, "address": h.address, "hostKey": host_key(h, base)} for h in site.hosts
        ],
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
            path=(str(cache_path(a.source, artifact_sha256(a, base) or "")) if a.source.startswith("https://")
                  else str(expand_path(a.source, base))),
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
                fetch(a.source, artifact_sha256(a, base) or "", what=f"site {site.name!r} artifact {a.name!r} ({a.arch})")
            except DownloadError as exc:
                raise pulumi.RunError(str(exc)) from None


def k3s_environments(site: Site, settings: SiteSettings, ca_sha256: pulumi.Output[str] | None) -> dict[str, dict[str, pulumi.Output[str]]]:
    """K3s install secrets by role: the first server holds the server and agent tokens;
    joining servers the server token and the agent token, agents only the agent token, both
    in the secure form that checks the cluster CA (``ca_sha256``, read on the first server)."""
    from components.distributions.k3s import AGENT_TOKEN_ENV, TOKEN_ENV, secure_token

    server = join_token(settings.fleet_secret, site.name)
    agent = agent_token(settings.fleet_secret, site.name)
    envs: dict[str, dict[str, pulumi.Output[str]]] = {"first": {TOKEN_ENV: server, AGENT_TOKEN_ENV: agent}}
    if ca_sha256 is not None:
        def secure(user: str, token: pulumi.Output[str]) -> pulumi.Output[str]:
            return pulumi.Output.secret(pulumi.Output.all(ca_sha256, token).apply(
                lambda v: secure_token(v[0].strip(), user, v[1])))
        envs["server"] = {TOKEN_ENV: secure("server", server), AGENT_TOKEN_ENV: agent}
        envs["agent"] = {TOKEN_ENV: secure("node", agent)}
    return envs


class EdgeSite(pulumi.ComponentResource):
    """A whole edge site: hosts installed in topology order, the admin kubeconfig (secret)
    and a Kubernetes provider for the site's workloads."""

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, site: Site, settings: SiteSettings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edge:site:EdgeSite", name, site_props(site, settings.environment, settings.inventory_dir), opts)
        driver = driver_for(site.distribution.name)
        token = site_secret(site, settings)
        hosts = ordered_hosts(site)
        first = hosts[0]
        base = settings.inventory_dir
        machines = settings.machines or machine_ids([(h.name, host_key(h, base)) for h in site.hosts])
        if not pulumi.runtime.is_dry_run():
            download_artifacts(site, base)
        k3s = site.distribution.name == "k3s"
        envs = k3s_environments(site, settings, None) if k3s else {}
        self.hosts: dict[str, EdgeHost] = {}
        previous: EdgeHost | None = None
        for host in hosts:
            node = node_spec(site, host, first)
            first_host = self.hosts.get(first.name)  # None while the first server itself is built
            if k3s and first_host is not None and "agent" not in envs:
                envs = k3s_environments(site, settings, self._cluster_ca(name, first_host, node_spec(site, first, first)))
            if k3s:
                environment = envs["first" if first_host is None else host.role]
            else:
                environment = {driver.token_env: self._minted_token(name, node, driver, first_host, machines[host.name])
                               or token}
                if site.distribution.name == "k0s" and host.role == "server":
                    from components.distributions.k0s import ENCRYPTION_KEY_ENV
                    environment[ENCRYPTION_KEY_ENV] = encryption_key(settings.fleet_secret, site.name)
            target = SshTarget(
                address=host.address,
                port=host.ssh.port,
                user=host.ssh.user,
                private_key=settings.private_keys[host.name],
                host_key=host_key(host, settings.inventory_dir),
                dial_timeout_s=settings.dial_timeout_s,
                command_timeout_s=settings.command_timeout_s,
                private_key_passphrase=(settings.private_key_passphrases or {}).get(host.name),
            )
            edge_host = EdgeHost(
                f"{name}-{host.name}",
                EdgeHostArgs(
                    node=node,
                    driver=driver,
                    target=target,
                    artifacts=local_artifacts(site, host, settings.inventory_dir),
                    environment=environment,
                    version=site.distribution.version,
                    machine=machines[host.name],
                    claim=f"{pulumi.get_stack()}/{machines[host.name]}",
                    first_server=first_host,
                    ready_timeout_s=settings.ready_timeout_s,
                    # Prod refuses to uninstall or remove a node unless the change says so.
                    protect=settings.environment == "prod" and not host.decommission,
                    legacy_name=f"{name}-{host.name}",
                ),
                pulumi.ResourceOptions(parent=self, depends_on=[previous.node_ready] if previous else None),
            )
            self.hosts[host.name] = edge_host
            previous = edge_host

        first_host = self.hosts[first.name]
        ready: list[pulumi.Resource] = [previous.node_ready] if previous else []
        if site.simulated_nodes is not None:
            # kwok stays on one server whatever the inventory order: the one with the lowest
            # machine id (a reorder or a rename does not move it).
            kwok_host = min((self.hosts[h.name] for h in site.servers), key=lambda e: e.machine)
            ready.append(self._simulated_nodes(name, site, kwok_host, settings, ready))

        api = site.registration_address or first.address
        assert first_host.kubeconfig is not None
        self.kubeconfig = pulumi.Output.secret(
            first_host.kubeconfig.apply(lambda text: driver.rewrite_kubeconfig(text, f"https://{api}:6443"))
        )
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # The site's API moves with the first server or the registration address; it is
            # still the same cluster, so the provider (and every object deployed through it)
            # is updated, never replaced.
            cluster_identifier=f"edgefleet-site-{site.name}",
            # pulumi-kubernetes 4.25 turns a create into an upsert under server-side apply: a
            # renamed resource would adopt the live object and the old one's delete would then
            # remove it. Client-side apply fails the create instead ("already exists").
            enable_server_side_apply=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=ready or None),
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})

    def _cluster_ca(self, name: str, first: EdgeHost, node: NodeSpec) -> pulumi.Output[str]:
        """The sha256 of the cluster CA, read on the first server (K3s joiners check it); read
        again when another machine becomes the first server (the same cluster keeps its CA,
        so nothing else changes; a rebuilt one has a new CA)."""
        from components.distributions.k3s import render_ca_hash

        script = render_ca_hash(node)
        read = remote.Command(
            f"{name}-cluster-ca",
            connection=first.target.connection(),
            label=first.label,
            create=script,
            update=script,
            triggers=[first.machine],
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[first.node_ready]),
        )
        return read.stdout.apply(lambda out: (out or "").strip())

    def _minted_token(self, name: str, node: NodeSpec, driver: Driver, first: EdgeHost | None,
                      machine: str) -> pulumi.Output[str] | None:
        """A join token the first server mints for ``node`` (k0s), kept as a secret; None when
        the distribution joins with the site's shared token."""
        script = driver.render_join_token(node)
        if script is None or first is None:
            return None
        mint = remote.Command(
            f"{machine}-join-token",
            connection=first.target.connection(),
            label=first.label,
            create=script,
            secret_stdout=True,
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[first.node_ready],
                                        aliases=[pulumi.Alias(name=f"{name}-{node.host}-join-token")]),
        )
        return pulumi.Output.secret(mint.stdout.apply(lambda out: (out or "").strip()))

    def _simulated_nodes(self, name: str, site: Site, first: EdgeHost, settings: SiteSettings,
                         after: list[pulumi.Resource]) -> pulumi.Resource:
        """kwok on a server of the site (``first``), registering the site's simulated worker nodes."""
        from components.distributions.k3s import KUBECONFIG, KUBECTL_FN

        sim = site.simulated_nodes
        assert sim is not None
        base = settings.inventory_dir
        art = LocalArtifact(name="kwok", path=str(expand_path(sim.kwok.source, base)),
                            sha256=artifact_sha256(sim.kwok, base) or "")
        conn = first.target.connection()
        upload = remote.CopyToRemote(
            f"{name}-kwok-upload", connection=conn, source=art.path, remote_path=art.remote_path(),
            label=first.label, triggers=[art.sha256, first.machine],  # moved to another server: copied there
            timeout_s=settings.command_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        host = first.target.address
        stages = expand_path(sim.stages, base).read_text()
        start = simulated.render_start(site.name, host, sim.count, art.remote_path(), art.sha256, stages,
                                       KUBECTL_FN, KUBECONFIG)
        return remote.Command(
            f"{name}-kwok",
            connection=conn,
            label=first.label,
            create=start,
            update=start,
            delete=simulated.render_stop(site.name, host, sim.count, KUBECTL_FN, KUBECONFIG),
            # Re-run (idempotent start) whenever the first server's install re-runs: after a
            # restart of the host, kwok comes back with K3s.
            triggers=[art.sha256, sim.count, *first.install_trigger],
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[upload, *after]),
        )
