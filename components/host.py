"""EdgeHost: one machine of a site, driven over SSH.

The host's lifecycle is a short chain of remote commands (components/remote.py) whose
``triggers`` carry exactly what should re-run them: artifact digests, the rendered config
and the version.

    upload (CopyToRemote) -> drain (on the first server) -> install -> node (on the first server)

``install`` verifies every artifact's sha256 on the host before it touches anything, and its
delete uninstalls. ``drain`` cordons and drains the node through the first server before an
upgrade; ``node`` waits for the node to be ready and uncordons it after one, and on removal
drains and deletes the node *before* ``install`` uninstalls (dependents are deleted first).

Identity: the children are named by the machine (a fingerprint of its pinned SSH host key),
not by its inventory name or position, so renaming a host, reordering the servers or a new
address keeps every resource (aliases carry the names of earlier releases). Their triggers
are the steady-state render with the host name and the bootstrap-only settings normalised
(:func:`steady_node`): only a real change of what runs re-runs drain and install. Each
install claims the machine (:data:`CLAIM_FILE`); an uninstall on a machine another resource
has claimed since is a no-op. In prod the install and node resources are protected unless
the host is marked ``decommission: true``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

import pulumi
from components import remote

from components.distributions.common import Artifact as DistArtifact
from components.distributions.common import Driver, NodeSpec, q
from components.distributions.k3s import NODE_NAME_MARK

ARTIFACT_DIR = "/var/lib/edgefleet/artifacts"
CLAIM_FILE = "/var/lib/edgefleet/owner"


def machine_id(host_key: str) -> str:
    """A short stable id of the machine behind a pinned SSH host key: the same across
    renames, reorders and address changes; a reimaged host (new key) is a new machine."""
    kind, blob = host_key.split()[:2]  # the comment is not part of the key
    return "m-" + hashlib.sha256(f"{kind} {blob}".encode()).hexdigest()[:12]


def steady_node(node: NodeSpec) -> NodeSpec:
    """``node`` with what must not re-run anything normalised: the inventory name (the node
    keeps the name it registered with), and the bootstrap-only join settings (first server
    or joiner, the URL it joined through), which distributions read only until the node
    has joined."""
    first = node.role == "server"
    return replace(node, host="node", first_server=first, server_url=None if first else "https://registration:6443")


def reported_node_name(stdout: str | None) -> str | None:
    """The node name an install reported (the one it registered with), if it reports one."""
    found = re.findall(rf"^{NODE_NAME_MARK}([a-z0-9.-]+)$", stdout or "", re.M)
    return found[-1] if found else None


def claiming(script: str, claim: str) -> str:
    """``script``, then the machine claimed by ``claim`` (written only when it succeeded)."""
    return script + f"""install -d -m 0700 /var/lib/edgefleet
printf '%s\\n' {q(claim)} >{CLAIM_FILE}
"""


def unless_claimed(script: str, claim: str, what: str) -> str:
    """``script`` run only while the machine is still claimed by ``claim`` (or by nobody):
    a machine another live resource has claimed since is left alone."""
    return f"""#!/usr/bin/env bash
set -euo pipefail
owner="$(cat {CLAIM_FILE} 2>/dev/null || true)"
if [[ -n "$owner" && "$owner" != {q(claim)} ]]; then
  printf '%s\\n' "[$(hostname)] not running {what}: this machine is managed as $owner now, not as {claim}" >&2
  exit 0
fi
""" + script + f"rm -f -- {CLAIM_FILE}\n"


@dataclass(frozen=True)
class SshTarget:
    """How to reach a host. ``private_key`` is always a Pulumi secret."""

    address: str
    port: int
    user: str
    private_key: pulumi.Output[str]
    host_key: str
    dial_timeout_s: int = 60
    command_timeout_s: int | None = None  # None: each step's deadline derives from its own waits
    private_key_passphrase: pulumi.Output[str] | None = None  # secret, for an encrypted key

    def connection(self) -> dict:
        # Bounded reachability: an unreachable host fails the update within dial_timeout_s,
        # naming the site and host, instead of hanging.
        return remote.connection(self.address, self.port, self.user, self.private_key, self.host_key,
                                 dial_timeout_s=self.dial_timeout_s,
                                 private_key_passphrase=self.private_key_passphrase)

    def deadline(self, script_timeout_s: int) -> int:
        """How long one remote step may run once connected: the stack's setting, or twice the
        script's own bound on its waits plus a margin (a host that drops mid-step fails it)."""
        return self.command_timeout_s or remote.step_deadline(script_timeout_s)


@dataclass(frozen=True)
class LocalArtifact:
    """An artifact as the program ships it: a local file (for an https source, its verified
    download in the cache) with its expected digest, uploaded to ``remote_path``."""

    name: str
    path: str
    sha256: str
    url: str | None = None  # the https source the file was downloaded from

    def remote_path(self) -> str:
        return str(PurePosixPath(ARTIFACT_DIR) / f"{self.sha256[:16]}-{PurePosixPath(self.path).name}")

    def for_driver(self) -> DistArtifact:
        return DistArtifact(name=self.name, url_or_path=self.url or self.remote_path(), sha256=self.sha256,
                            dest=self.remote_path())


@dataclass(frozen=True)
class EdgeHostArgs:
    node: NodeSpec
    driver: Driver
    target: SshTarget
    artifacts: tuple[LocalArtifact, ...]
    environment: dict[str, pulumi.Input[str]]  # the install's secrets (join tokens), by variable
    version: str
    machine: str  # stable machine id (see machine_id): names the children
    claim: str  # what the install writes to CLAIM_FILE
    first_server: "EdgeHost | None" = None  # None: this host is the first server
    ready_timeout_s: int = 300
    protect: bool = False  # refuse to delete (uninstall, remove the node) until decommissioned
    legacy_name: str | None = None  # the component name children were named after before


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
                "machine": args.machine,
            },
            opts,
        )
        conn = args.target.connection()
        driver = args.driver
        dist_artifacts = [a.for_driver() for a in args.artifacts]
        machine = args.machine

        def opts_for(step: str, protect: bool = False, **kw) -> pulumi.ResourceOptions:
            aliases = [pulumi.Alias(name=f"{args.legacy_name}-{step}")] if args.legacy_name else None
            return pulumi.ResourceOptions(parent=self, aliases=aliases, protect=protect, **kw)

        label = f"site {node.site!r} host {node.host!r} ({args.target.address})"
        uploads = [
            remote.CopyToRemote(
                f"{machine}-upload-{a.name}",
                connection=conn,
                source=a.path,
                remote_path=a.remote_path(),
                label=label,
                triggers=[a.sha256],
                timeout_s=args.target.command_timeout_s,  # None: bounded by the file's size
                opts=opts_for(f"upload-{a.name}"),
            )
            for a in args.artifacts
        ]

        install_script = driver.render_install(node, dist_artifacts, ready_timeout_s=args.ready_timeout_s)
        steady = driver.render_install(steady_node(node), dist_artifacts, ready_timeout_s=args.ready_timeout_s)
        # A change of version, artifact or steady-state config re-runs install in place (the
        # script restarts the service only when something it wrote changed); a rename, a
        # reorder or a new registration address re-runs nothing.
        install_trigger = [args.version, *(a.sha256 for a in args.artifacts), digest(steady)]

        first = args.first_server
        server_conn = first.target.connection() if first else conn
        # Node operations run on the first server but concern this host: named after both.
        server_label = f"{label} via {first.label}" if first else label
        after_first = [first.install] if first else []
        # Cordon and drain through the first server before this node is upgraded. The first
        # server itself is not drained through its own API: restarting K3s leaves running pods
        # in place, and a first server whose API is down could not drain anything.
        drain = remote.Command(
            f"{machine}-drain",
            connection=server_conn,
            label=server_label,
            create="true\n",
            update=driver.render_drain(node.host, timeout_s=args.ready_timeout_s) if first else "true\n",
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("drain", depends_on=after_first or None),
        )
        installed = claiming(install_script, args.claim)
        self.install = remote.Command(
            f"{machine}-install",
            connection=conn,
            label=label,
            create=installed,
            update=installed,
            delete=unless_claimed(driver.render_uninstall(node), args.claim, "the uninstall"),
            environment=dict(args.environment),
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("install", args.protect, depends_on=[*uploads, drain, *after_first]),
        )
        # Node operations address the node by the name it registered with (reported by the
        # install), which an inventory rename does not change.
        registered = self.install.stdout.apply(lambda out: reported_node_name(out) or node.host)
        timeout = args.ready_timeout_s
        # Ready and uncordoned after install/upgrade; drained and deleted before uninstall.
        ready = registered.apply(lambda n: driver.render_node_ready(replace(node, host=n), timeout_s=timeout))
        self.node_ready = remote.Command(
            f"{machine}-node",
            connection=server_conn,
            label=server_label,
            create=ready,
            update=ready,
            # Removing the first server removes the site: there is no cluster to leave.
            delete=registered.apply(lambda n: driver.render_remove_node(n, timeout_s=timeout)) if first else None,
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("node", args.protect, depends_on=[self.install]),
        )
        self.machine = machine
        self.step_timeout_s = args.target.deadline(args.ready_timeout_s)  # for steps others run on this host
        self.label = label
        self.target = args.target
        self.install_trigger = install_trigger

        self.kubeconfig = None
        if node.role == "server":
            # The admin kubeconfig (CA and client certificate) outlives restarts, upgrades and
            # address changes: fetched once per machine, so none of them makes the site's
            # provider (and everything deployed through it) look replaced.
            fetch = remote.Command(
                f"{machine}-kubeconfig",
                connection=conn,
                label=label,
                create=driver.render_fetch_kubeconfig(node),
                triggers=[args.target.address],
                secret_stdout=True,
                timeout_s=args.target.deadline(args.ready_timeout_s),
                opts=opts_for("kubeconfig", depends_on=[self.node_ready]),
            )
            self.kubeconfig = pulumi.Output.secret(fetch.stdout)

        self.register_outputs({"install": self.install.id})
