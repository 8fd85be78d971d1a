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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

import pulumi

from components import remote
from components.contract import CHECK_ABSENT, CHECK_PRESENT
from components.distributions import NODE_NAME_MARK, Driver, NodeSpec, UploadedArtifact
from components.distributions.bash import q

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
    return (
        script
        + f"""install -d -m 0700 /var/lib/edgefleet
printf '%s\\n' {q(claim)} >{CLAIM_FILE}
"""
    )


def stack_claims(stack: str, machine: str) -> tuple[str, ...]:
    """What this stack's install writes to :data:`CLAIM_FILE`, then the claims it inherits: a
    site stack ``<env>.<site>`` took its machines over from the whole-fleet stack ``<env>``
    (``fleet migrate`` moves the state and touches no host, so the hosts still name it)."""
    claims = [f"{stack}/{machine}"]
    if "." in stack:
        claims.append(f"{stack.split('.', 1)[0]}/{machine}")
    return tuple(claims)


def _not_ours(claims: Sequence[str]) -> str:
    """A bash test: ``$owner`` (the machine's claim) is none of ``claims``."""
    return " && ".join(f'"$owner" != {q(c)}' for c in claims)


def unless_claimed(script: str, claim: str, what: str, inherited: Sequence[str] = ()) -> str:
    """``script`` run only while the machine is still claimed by ``claim`` (or one it
    ``inherited``, or by nobody): a machine another live resource has claimed since is left
    alone."""
    return (
        f"""#!/usr/bin/env bash
set -euo pipefail
owner="$(cat {CLAIM_FILE} 2>/dev/null || true)"
if [[ -n "$owner" && {_not_ours([claim, *inherited])} ]]; then
  printf '%s\\n' "[$(hostname)] not running {what}: this machine is managed as $owner now, not as {claim}" >&2
  exit 0
fi
"""
        + script
        + f"rm -f -- {CLAIM_FILE}\n"
    )


def reads_back(script: str, what: str) -> str:
    """A read-back (see components.contract) from a script that prints something or fails: its
    output, then present; absent when it fails (what it reads is gone from the host)."""
    delim = "EDGEFLEET_READ_BACK"
    while delim in script:
        delim += "_"
    return f"""#!/usr/bin/env bash
if out="$(bash -s 2>/dev/null <<'{delim}'
{script.rstrip()}
{delim}
)"; then
  printf '%s\\n' "$out" {q(CHECK_PRESENT)}
else
  printf '%s%s\\n' {q(CHECK_ABSENT)} "{what} cannot be read on $(hostname)"
fi
"""


def claimed_check(check: str, claim: str, inherited: Sequence[str] = ()) -> str:
    """The install's read-back: a machine nobody claims has lost its install (wiped, reimaged);
    one another stack has claimed since is not this stack's to judge (present); ours is checked
    by the driver's ``check``."""
    return (
        f"""#!/usr/bin/env bash
owner="$(cat {CLAIM_FILE} 2>/dev/null || true)"
if [[ -z "$owner" ]]; then
  printf '%s%s\\n' {q(CHECK_ABSENT)} "nothing is installed on $(hostname) by this stack ({CLAIM_FILE} is missing)"
  exit 0
fi
if [[ {_not_ours([claim, *inherited])} ]]; then
  printf '%s\\n' {q(CHECK_PRESENT)}
  exit 0
fi
"""
        + check
    )


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

    def connection(self) -> dict[str, Any]:
        # Bounded reachability: an unreachable host fails the update within dial_timeout_s,
        # naming the site and host, instead of hanging.
        return remote.connection(
            self.address,
            self.port,
            self.user,
            self.private_key,
            self.host_key,
            dial_timeout_s=self.dial_timeout_s,
            private_key_passphrase=self.private_key_passphrase,
        )

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

    def for_driver(self) -> UploadedArtifact:
        return UploadedArtifact(
            name=self.name, url_or_path=self.url or self.remote_path(), sha256=self.sha256, dest=self.remote_path()
        )


@dataclass(frozen=True)
class EdgeHostArgs:
    node: NodeSpec
    driver: Driver
    target: SshTarget
    artifacts: tuple[LocalArtifact, ...]
    environment: Mapping[str, pulumi.Input[str]]  # the install's secrets (join tokens), by variable
    version: str
    machine: str  # stable machine id (see machine_id): names the children
    claim: str  # what the install writes to CLAIM_FILE
    inherited_claims: tuple[str, ...] = ()  # earlier stacks' claims this one took over (stack_claims)
    # The first server this host joined through (its node operations run there); None: this
    # host is the first server.
    joins_via: EdgeHost | None = None
    ready_timeout_s: int = 300
    protect: bool = False  # refuse to delete (uninstall, remove the node) until decommissioned
    legacy_name: str | None = None  # the component name children were named after before


@dataclass(frozen=True)
class NodeSteps:
    """The scripts EdgeHost runs for one node. When its version, an artifact or a steady setting
    changes, three of them run again, in this order: :meth:`drain` on the first server,
    :meth:`install` on the node (every artifact verified before anything changes; the service
    restarts only when what it runs changed), then :meth:`ready` on the first server (the node
    is Ready, and uncordoned when the drain cordoned it). That re-run is the upgrade."""

    driver: Driver
    node: NodeSpec
    artifacts: Sequence[UploadedArtifact]
    joined: bool  # the node joined the first server's cluster: node operations run there
    timeout_s: int = 300

    def drain(self) -> str:
        # The first server is drained through its own API (its restart briefly interrupts the
        # network of the pods it runs); when that API is down, it is upgraded in place.
        return self.driver.render_drain(self.node.host, timeout_s=self.timeout_s, own_api=not self.joined)

    def install(self) -> str:
        return self.driver.render_install(self.node, self.artifacts, ready_timeout_s=self.timeout_s)

    def ready(self, registered: str) -> str:
        """``registered``: the name the node registered with (see :func:`reported_node_name`)."""
        return self.driver.render_node_ready(replace(self.node, host=registered), timeout_s=self.timeout_s)

    def remove(self, registered: str) -> str:
        return self.driver.render_remove_node(registered, timeout_s=self.timeout_s)

    def check(self, claim: str, inherited: Sequence[str] = ()) -> str | None:
        """The install's read-back, or None when the distribution is not read back."""
        check = self.driver.render_check(self.node, self.artifacts)
        return claimed_check(check, claim, inherited) if check is not None else None

    def node_check(self, registered: str) -> str:
        check = self.driver.render_node_check(replace(self.node, host=registered))
        return reads_back(check, f"node {registered}")

    def trigger(self, version: str) -> list[str]:
        """What re-runs drain, install and ready: a change of version, artifact or steady-state
        config (the install restarts the service only when something it wrote changed); a
        rename, a reorder or a new registration address re-runs nothing."""
        steady = self.driver.render_install(steady_node(self.node), self.artifacts, ready_timeout_s=self.timeout_s)
        return [version, *(a.sha256 for a in self.artifacts), digest(steady)]


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
    node_ready: remote.Command
    kubeconfig: pulumi.Output[str] | None
    machine: str
    step_timeout_s: int  # for steps others run on this host
    label: str
    target: SshTarget
    install_trigger: list[str]

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
        first = args.joins_via
        steps = NodeSteps(
            driver,
            node,
            [a.for_driver() for a in args.artifacts],
            joined=first is not None,
            timeout_s=args.ready_timeout_s,
        )
        machine = args.machine

        def opts_for(step: str, protect: bool = False, **kw: Any) -> pulumi.ResourceOptions:
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
                sha256=a.sha256,
                timeout_s=args.target.command_timeout_s,  # None: bounded by the file's size
                opts=opts_for(f"upload-{a.name}"),
            )
            for a in args.artifacts
        ]

        install_trigger = steps.trigger(args.version)

        server_conn = first.target.connection() if first else conn
        # Node operations run on the first server but concern this host: named after both.
        server_label = f"{label} via {first.label}" if first else label
        after_first = [first.install] if first else []
        drain = remote.Command(
            f"{machine}-drain",
            connection=server_conn,
            label=server_label,
            create="true\n",
            update=steps.drain(),
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("drain", depends_on=after_first or None),
        )
        installed = claiming(steps.install(), args.claim)
        self.install = remote.Command(
            f"{machine}-install",
            connection=conn,
            label=label,
            create=installed,
            update=installed,
            delete=unless_claimed(driver.render_uninstall(node), args.claim, "the uninstall", args.inherited_claims),
            check=steps.check(args.claim, args.inherited_claims),
            environment=dict(args.environment),
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("install", args.protect, depends_on=[*uploads, drain, *after_first]),
        )
        # Node operations address the node by the name it registered with (reported by the
        # install), which an inventory rename does not change.
        registered = self.install.stdout.apply(lambda out: reported_node_name(out) or node.host)
        # Ready and uncordoned after install/upgrade; drained and deleted before uninstall.
        ready = registered.apply(steps.ready)
        self.node_ready = remote.Command(
            f"{machine}-node",
            connection=server_conn,
            label=server_label,
            create=ready,
            update=ready,
            # Removing the first server removes the site: there is no cluster to leave.
            delete=registered.apply(steps.remove) if first else None,
            check=registered.apply(steps.node_check),
            triggers=install_trigger,
            timeout_s=args.target.deadline(args.ready_timeout_s),
            opts=opts_for("node", args.protect, depends_on=[self.install]),
        )
        self.machine = machine
        self.step_timeout_s = args.target.deadline(args.ready_timeout_s)
        self.label = label
        self.target = args.target
        self.install_trigger = install_trigger

        self.kubeconfig = None
        if node.role == "server":
            # The admin kubeconfig (CA and client certificate) outlives restarts, upgrades and
            # address changes: fetched once per machine, so none of them makes the site's
            # provider (and everything deployed through it) look replaced.
            fetch_script = driver.render_fetch_kubeconfig(node)
            fetch = remote.Command(
                f"{machine}-kubeconfig",
                connection=conn,
                label=label,
                create=fetch_script,
                triggers=[args.target.address],
                secret_stdout=True,
                check=reads_back(fetch_script, "the admin kubeconfig"),
                check_stdout=True,
                timeout_s=args.target.deadline(args.ready_timeout_s),
                opts=opts_for("kubeconfig", depends_on=[self.node_ready]),
            )
            self.kubeconfig = pulumi.Output.secret(fetch.stdout)

        self.register_outputs({"install": self.install.id})
