"""EdgeSite: one edge site's hosts installed in topology order, its admin kubeconfig (secret)
and a Kubernetes provider for what runs on it.

The component wires resources only: :func:`components.topology.site_args` turns an inventory
site into :class:`EdgeSiteArgs`. Hosts are chained in install order, so a version change
upgrades one node at a time, servers before agents, and stops at the first failure with the
rest of the cluster still serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from components import remote, simulated
from components.distributions import Driver, NodeSpec, driver_for
from components.distributions.k0s import ENCRYPTION_KEY_ENV
from components.distributions.k3s import (
    AGENT_TOKEN_ENV,
    NODE_PASSWORD_ENV,
    TOKEN_ENV,
    render_ca_hash,
    secure_token,
)
from components.host import EdgeHost, EdgeHostArgs, LocalArtifact, SshTarget, reads_back, stack_claims


@dataclass(frozen=True)
class SiteHostArgs:
    """One host of the site, ready to install."""

    name: str
    role: str  # "server" | "agent"
    node: NodeSpec
    target: SshTarget
    artifacts: tuple[LocalArtifact, ...]
    machine: str  # stable machine id: names the host's resources
    protect: bool = False  # refuse uninstall and node removal (prod, until decommissioned)


@dataclass(frozen=True)
class SimulatedNodesArgs:
    """kwok worker nodes registered by one server of the site (lab and scale tests)."""

    count: int
    kwok: LocalArtifact
    stages: str


@dataclass(frozen=True)
class EdgeSiteArgs:
    site: str
    distribution: str  # "k3s" | "k0s" | "microshift"
    version: str
    props: dict[str, Any]  # the site as the policy pack sees it (components.topology.site_props)
    hosts: tuple[SiteHostArgs, ...]  # install order: servers (the first bootstraps), then agents
    api_address: str  # the registration address, or the first server's
    fleet_secret: pulumi.Output[str]  # the site's tokens and keys derive from it
    pull_secret: pulumi.Output[str] | None = None  # MicroShift's pull secret
    ready_timeout_s: int = 300
    simulated: SimulatedNodesArgs | None = None
    claims_as: str | None = None  # the stack named in the machines' claims (None: this stack)


def _derived(fleet_secret: pulumi.Output[str], purpose: str) -> pulumi.Output[bytes]:
    return fleet_secret.apply(lambda s: hmac.new(s.encode(), purpose.encode(), hashlib.sha256).digest())


def join_token(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """Per-site join token derived from the stack's fleet secret (HMAC-SHA256): stable
    across runs, different for every site, never stored in plain text."""
    return pulumi.Output.secret(_derived(fleet_secret, f"edgefleet/join/{site}").apply(bytes.hex))


def agent_token(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """The site's agent token (K3s): joins agents only, never a server."""
    return pulumi.Output.secret(_derived(fleet_secret, f"edgefleet/agent-join/{site}").apply(bytes.hex))


def node_password(fleet_secret: pulumi.Output[str], site: str, node: str) -> pulumi.Output[str]:
    """The password a K3s node registers with (16 bytes, hex, as K3s makes its own), derived
    per site and node name (what the servers check it against): a reinstalled host presents
    the same one and rejoins under its name."""
    return pulumi.Output.secret(
        _derived(fleet_secret, f"edgefleet/node-password/{site}/{node}").apply(lambda d: d[:16].hex())
    )


def encryption_key(fleet_secret: pulumi.Output[str], site: str) -> pulumi.Output[str]:
    """The site's Secrets encryption key (k0s): 32 bytes, base64, derived from the fleet
    secret like the join token, so it is never stored in plain text."""
    return pulumi.Output.secret(
        _derived(fleet_secret, f"edgefleet/secrets-encryption/{site}").apply(lambda d: base64.b64encode(d).decode())
    )


def k3s_environments(
    site: str, fleet_secret: pulumi.Output[str], ca_sha256: pulumi.Output[str] | None
) -> dict[str, dict[str, pulumi.Output[str]]]:
    """K3s install secrets by role: the first server holds the server and agent tokens;
    joining servers the server token and the agent token, agents only the agent token, both
    in the secure form that checks the cluster CA (``ca_sha256``, read on the first server)."""
    server = join_token(fleet_secret, site)
    agent = agent_token(fleet_secret, site)
    envs: dict[str, dict[str, pulumi.Output[str]]] = {"first": {TOKEN_ENV: server, AGENT_TOKEN_ENV: agent}}
    if ca_sha256 is not None:

        def secure(user: str, token: pulumi.Output[str]) -> pulumi.Output[str]:
            return pulumi.Output.secret(
                pulumi.Output.all(ca_sha256, token).apply(lambda v: secure_token(v[0].strip(), user, v[1]))
            )

        envs["server"] = {TOKEN_ENV: secure("server", server), AGENT_TOKEN_ENV: agent}
        envs["agent"] = {TOKEN_ENV: secure("node", agent)}
    return envs


class EdgeSite(pulumi.ComponentResource):
    """A whole edge site: hosts installed in topology order, the admin kubeconfig (secret)
    and a Kubernetes provider for the site's workloads."""

    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider

    def __init__(self, name: str, args: EdgeSiteArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("edge:site:EdgeSite", name, args.props, opts)
        self.resource_name = name  # what the site's workloads are named after
        driver = driver_for(args.distribution)
        k3s = args.distribution == "k3s"
        envs = k3s_environments(args.site, args.fleet_secret, None) if k3s else {}
        self.hosts: dict[str, EdgeHost] = {}
        first_host: EdgeHost | None = None
        previous: EdgeHost | None = None
        for host in args.hosts:
            claims = stack_claims(args.claims_as or pulumi.get_stack(), host.machine)
            if k3s and first_host is not None and "agent" not in envs:
                envs = k3s_environments(
                    args.site, args.fleet_secret, self._cluster_ca(name, first_host, args.hosts[0].node)
                )
            if k3s:
                environment = {
                    **envs["first" if first_host is None else host.role],
                    NODE_PASSWORD_ENV: node_password(args.fleet_secret, args.site, host.node.host),
                }
            else:
                environment = {
                    driver.token_env: self._minted_token(name, args.site, host, driver, first_host)
                    or self._site_secret(args)
                }
                if args.distribution == "k0s" and host.role == "server":
                    environment[ENCRYPTION_KEY_ENV] = encryption_key(args.fleet_secret, args.site)
            edge_host = EdgeHost(
                f"{name}-{host.name}",
                EdgeHostArgs(
                    node=host.node,
                    driver=driver,
                    target=host.target,
                    artifacts=host.artifacts,
                    environment=environment,
                    version=args.version,
                    machine=host.machine,
                    claim=claims[0],
                    inherited_claims=claims[1:],
                    joins_via=first_host,
                    ready_timeout_s=args.ready_timeout_s,
                    protect=host.protect,
                    legacy_name=f"{args.site}-{host.name}",
                ),
                pulumi.ResourceOptions(parent=self, depends_on=[previous.node_ready] if previous else None),
            )
            self.hosts[host.name] = edge_host
            first_host = first_host or edge_host
            previous = edge_host

        assert first_host is not None and previous is not None
        ready: list[pulumi.Resource] = [previous.node_ready]
        if args.simulated is not None:
            # kwok stays on one server whatever the inventory order: the one with the lowest
            # machine id (a reorder or a rename does not move it).
            servers = [self.hosts[h.name] for h in args.hosts if h.role == "server"]
            kwok_host = min(servers, key=lambda e: e.machine)
            kwok_node = next(h.node for h in args.hosts if h.machine == kwok_host.machine)
            ready.append(
                self._simulated_nodes(
                    name,
                    args.site,
                    args.simulated,
                    kwok_host,
                    driver,
                    kwok_node,
                    args.hosts[0].target.command_timeout_s,
                    ready,
                )
            )

        api = f"https://{args.api_address}:6443"
        assert first_host.kubeconfig is not None
        self.kubeconfig = pulumi.Output.secret(first_host.kubeconfig.apply(lambda t: driver.rewrite_kubeconfig(t, api)))
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # The site's API moves with the first server or the registration address; it is
            # still the same cluster, so the provider (and every object deployed through it)
            # is updated, never replaced.
            cluster_identifier=f"edgefleet-site-{args.site}",
            # pulumi-kubernetes 4.25 turns a create into an upsert under server-side apply: a
            # renamed resource would adopt the live object and the old one's delete would then
            # remove it. Client-side apply fails the create instead ("already exists").
            enable_server_side_apply=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=ready),
        )
        self.register_outputs({"kubeconfig": self.kubeconfig})

    @staticmethod
    def _site_secret(args: EdgeSiteArgs) -> pulumi.Output[str]:
        """What every install reads from the driver's secret variable: the site's join token
        (k0s's first controller) or MicroShift's pull secret (empty without one)."""
        if args.distribution == "microshift":
            return args.pull_secret if args.pull_secret is not None else pulumi.Output.secret("")
        return join_token(args.fleet_secret, args.site)

    def _cluster_ca(self, name: str, first: EdgeHost, node: NodeSpec) -> pulumi.Output[str]:
        """The sha256 of the cluster CA, read on the first server (K3s joiners check it); read
        again when another machine becomes the first server (the same cluster keeps its CA,
        so nothing else changes; a rebuilt one has a new CA)."""
        script = render_ca_hash(node)
        read = remote.Command(
            f"{name}-cluster-ca",
            connection=first.target.connection(),
            label=first.label,
            create=script,
            update=script,
            check=reads_back(script, "the cluster CA"),
            check_stdout=True,
            triggers=[first.machine],
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[first.node_ready]),
        )
        return read.stdout.apply(lambda out: (out or "").strip())

    def _minted_token(
        self, name: str, site: str, host: SiteHostArgs, driver: Driver, first: EdgeHost | None
    ) -> pulumi.Output[str] | None:
        """A join token the first server mints for ``host`` (k0s), kept as a secret; None when
        the distribution joins with the site's shared token."""
        script = driver.render_join_token(host.node)
        if script is None or first is None:
            return None
        mint = remote.Command(
            f"{host.machine}-join-token",
            connection=first.target.connection(),
            label=first.label,
            create=script,
            secret_stdout=True,
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[first.node_ready],
                aliases=[pulumi.Alias(name=f"{site}-{host.name}-join-token")],
            ),
        )
        return pulumi.Output.secret(mint.stdout.apply(lambda out: (out or "").strip()))

    def _simulated_nodes(
        self,
        name: str,
        site: str,
        sim: SimulatedNodesArgs,
        first: EdgeHost,
        driver: Driver,
        node: NodeSpec,
        timeout_s: int | None,
        after: list[pulumi.Resource],
    ) -> pulumi.Resource:
        """kwok on a server of the site (``first``), registering the site's simulated worker nodes."""
        art = sim.kwok
        conn = first.target.connection()
        upload = remote.CopyToRemote(
            f"{name}-kwok-upload",
            connection=conn,
            source=art.path,
            remote_path=art.remote_path(),
            label=first.label,
            triggers=[art.sha256, first.machine],  # moved to another server: copied there
            sha256=art.sha256,
            timeout_s=timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=after),
        )
        host = first.target.address
        access = driver.kube_access(node)
        start = simulated.render_start(site, host, sim.count, art.remote_path(), art.sha256, sim.stages, access)
        return remote.Command(
            f"{name}-kwok",
            connection=conn,
            label=first.label,
            create=start,
            update=start,
            delete=simulated.render_stop(site, host, sim.count, access),
            check=reads_back(simulated.render_check(site, host, sim.count, access), "kwok and its nodes"),
            # Re-run (idempotent start) whenever the first server's install re-runs: after a
            # restart of the host, kwok comes back with K3s.
            triggers=[art.sha256, sim.count, *first.install_trigger],
            timeout_s=first.step_timeout_s,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[upload, *after]),
        )
