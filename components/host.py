"""EdgeHost: one machine of a site, driven over SSH.

The host's lifecycle is a short chain of remote commands (components/remote.py) whose
``triggers`` carry exactly what should re-run them: artifact digests, the rendered config
and the version.

    upload (CopyToRemote) -> drain (on the first server) -> install -> node (on the first server)

``install`` verifies every artifact's sha256 on the host before it touches anything, and its
delete uninstalls. ``drain`` cordons and drains the node through the first server before an
upgrade; ``node`` waits for the node to be ready and uncordons it after one, and on removal
drains and deletes the node *before* ``install`` uninstalls (dependents are deleted first).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import PurePosixPath

import pulumi
from components import remote

from components.distributions.common import Artifact as DistArtifact
from components.distributions.common import Driver, NodeSpec

ARTIFACT_DIR = "/var/lib/edgefleet/artifacts"


@dataclass(frozen=True)
class SshTarget:
    """How to reach a host. ``private_key`` is always a Pulumi secret."""

    address: str
    port: int
    user: str
    private_key: pulumi.Output[str]
    host_key: str
    dial_timeout_s: int = 60

    def connection(self) -> dict:
        # Bounded reachability: an unreachable host fails the update within dial_timeout_s,
        # naming the site and host, instead of hanging.
        return remote.connection(self.address, self.port, self.user, self.private_key, self.host_key,
                                 dial_timeout_s=self.dial_timeout_s)


@dataclass(frozen=True)
class LocalArtifact:
    """An artifact as the program ships it: a local file with its expected digest."""

    name: str
    path: str
    sha256: str

    def remote_path(self) -> str:
        return str(PurePosixPath(ARTIFACT_DIR) / f"{self.sha256[:16]}-{PurePosixPath(self.path).name}")

    def for_driver(self) -> DistArtifact:
        # Local files are uploaded to remote_path first; URLs are fetched by the host itself.
        src = self.path if self.path.startswith("https://") else self.remote_path()
        return DistArtifact(name=self.name, url_or_path=src, sha256=self.sha256, dest=self.remote_path())


@dataclass(frozen=True)
class EdgeHostArgs:
    node: NodeSpec
    driver: Driver
    target: SshTarget
    artifacts: tuple[LocalArtifact, ...]
    token: pulumi.Output[str]
    version: str
    first_server: "EdgeHost | None" = None  # None: this host is the first server
    ready_timeout_s: int = 300


def digest(*parts: str) -> str:
    """A short stable digest of rendered text, used as a trigger."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


class EdgeHost(pulumi.ComponentResource):
    """One host of an edge site: artifacts uploaded and verified, distribution installed and
    joined, upgraded one node at a time, drained and uninstalled on removal."""

    install: remote.Command
    kubeconfig: pulumi.Output[str] | None

    def __init__(self, name: str, args: EdgeHostArgs, opts: pulumi.ResourceOptions | None = None):
        node = args.node
        super().__init__(
            "edge:host:EdgeHost",
            name,
            {
                "site": node.site,
                "host": node.host,
                "address": args.target.address,
                "port": args.target.port,
                "user": args.target.user,
                "hostKey": args.target.host_key,
                "role": node.role,
                "arch": node.arch,
            },
            opts,
        )
        child = pulumi.ResourceOptions(parent=self)
        conn = args.target.connection()
        driver = args.driver
        dist_artifacts = [a.for_driver() for a in args.artifacts]

        label = f"site {node.site!r} host {node.host!r} ({args.target.address})"
        uploads = [
            remote.CopyToRemote(
                f"{name}-upload-{a.name}",
                connection=conn,
                source=a.path,
                remote_path=a.remote_path(),
                label=label,
                triggers=[a.sha256],
                opts=child,
            )
            for a in args.artifacts
            if not a.path.startswith("https://")
        ]

        install_script = driver.render_install(node, dist_artifacts, ready_timeout_s=args.ready_timeout_s)
        # A change of version, artifact or rendered config re-runs install in place (the
        # script restarts the service only when something it wrote changed).
        install_trigger = [args.version, *(a.sha256 for a in args.artifacts), digest(install_script)]

        first = args.first_server
        server_conn = first.target.connection() if first else conn
        server_label = first.label if first else label
        after_first = [first.install] if first else []
        # Cordon and drain through the first server before this node is upgraded. The first
        # server itself is not drained through its own API: restarting K3s leaves running pods
        # in place, and a first server whose API is down could not drain anything.
        drain = remote.Command(
            f"{name}-drain",
            connection=server_conn,
            label=server_label,
            create="true\n",
            update=driver.render_drain(node.host, timeout_s=args.ready_timeout_s) if first else "true\n",
            triggers=install_trigger,
            opts=pulumi.ResourceOptions(parent=self, depends_on=after_first or None),
        )
        self.install = remote.Command(
            f"{name}-install",
            connection=conn,
            label=label,
            create=install_script,
            update=install_script,
            delete=driver.render_uninstall(node),
            environment={driver.token_env: args.token},
            triggers=install_trigger,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*uploads, drain, *after_first]),
        )
        # Ready and uncordoned after install/upgrade; drained and deleted before uninstall.
        ready = driver.render_node_ready(node, timeout_s=args.ready_timeout_s)
        self.node_ready = remote.Command(
            f"{name}-node",
            connection=server_conn,
            label=server_label,
            create=ready,
            update=ready,
            # Removing the first server removes the site: there is no cluster to leave.
            delete=driver.render_remove_node(node.host, timeout_s=args.ready_timeout_s) if first else None,
            triggers=install_trigger,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.install]),
        )
        self.label = label
        self.target = args.target
        self.install_trigger = install_trigger

        self.kubeconfig = None
        if node.role == "server":
            # The admin kubeconfig (CA and client certificate) outlives restarts and upgrades:
            # fetched once per server address, so an upgrade never makes the site's provider
            # (and everything deployed through it) look replaced.
            fetch = remote.Command(
                f"{name}-kubeconfig",
                connection=conn,
                label=label,
                create=driver.render_fetch_kubeconfig(node),
                triggers=[args.target.address],
                secret_stdout=True,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.node_ready]),
            )
            self.kubeconfig = pulumi.Output.secret(fetch.stdout)

        self.register_outputs({"install": self.install.id})
