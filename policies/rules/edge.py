"""Edge install baseline, read from the fleet's own resources:

* ``edge:site:EdgeSite`` components: ``{"site", "topology", "environment", "distribution",
  "version", "channel", "install": {"secretsEncryption", "auditLog", "anonymousAuth",
  "protectKernelDefaults", "kubeconfigMode"}, "registryMirrors": {registry: [endpoint URL]},
  "artifacts": [{"name", "source", "sha256"}], "hosts": [{"name", "address", "hostKey"}], "annotations"}``.
  The ``install`` facts are what the distribution driver renders for the site's nodes (a fact
  holds only if it holds on every node), so a distribution that cannot render a setting fails
  its rule;
* ``edgefleet:remote:Command`` / ``CopyToRemote`` (components/remote.py, dynamic resources whose
  ``kind`` input names them) and pulumi-command's ``command:remote:*``: ``connection`` (``host``,
  ``port``, ``user``, ``privateKey``, ``hostKey``), ``environment`` and the command strings.
"""

from __future__ import annotations

import json
import re
from typing import Any

from components.contract import SHA256, VERSION_EXAMPLES, VERSION_PATTERNS
from policies.resource import UNKNOWN, Resource, dig, is_secret_at, items, mapping
from policies.rules import Violation, key_path, rule

SITE = "edge:site:EdgeSite"
# pulumi-command's resources and this project's own (components/remote.py) share the shape.
REMOTE = frozenset(
    {
        "command:remote:Command",
        "command:remote:CopyToRemote",
        "edgefleet:remote:Command",
        "edgefleet:remote:CopyToRemote",
    }
)
# Environment variable names that carry join tokens or other install secrets.
TOKEN_ENV = re.compile(r"TOKEN|PASSWORD|SECRET|PRIVATE_KEY", re.IGNORECASE)
# A token written into the command line itself.
TOKEN_IN_COMMAND = re.compile(r"(--token(-file)?[ =]\S|\b[A-Z0-9_]*TOKEN=\S)")


def _install_flag(name: str, expected: Any, what: str) -> Any:
    def check(res: Resource, config: dict[str, Any]) -> list[Violation]:
        value = dig(res.props, "install", name)
        if value is UNKNOWN or value == expected:
            return []
        shown = "not set" if value is None else json.dumps(value)
        return [
            Violation(
                f"site {dig(res.props, 'site') or res.name}: install.{name} is {shown}; {what}", f"install.{name}"
            )
        ]

    return check


rule(
    name="edge-secrets-encryption",
    title="Secrets encrypted at rest",
    category="edge-install",
    severity="critical",
    description="The site's Kubernetes datastore encrypts Secrets at rest (K3s --secrets-encryption).",
    remediation=(
        "Install with a driver that renders Secrets encryption (K3s: secrets-encryption; the k0s and MicroShift "
        "drivers cannot) and drop any flag overriding it."
    ),
    targets={SITE},
)(_install_flag("secretsEncryption", True, "Secrets would be stored in plain text on the node"))

rule(
    name="edge-audit-log",
    title="API audit log on",
    category="edge-install",
    severity="high",
    description="The API server writes an audit log, so changes on an unattended site can be traced.",
    remediation=(
        "Install with a driver that renders an audit policy and log (K3s, MicroShift; the k0s driver cannot) and drop "
        "any flag overriding them."
    ),
    targets={SITE},
)(_install_flag("auditLog", True, "API calls would not be audited"))

rule(
    name="edge-anonymous-auth-off",
    title="Anonymous API access off",
    category="edge-install",
    severity="high",
    description="The API server and kubelet refuse anonymous requests.",
    remediation=(
        "Install with a driver that renders anonymous-auth=false for the API server (K3s, k0s; MicroShift cannot) and "
        "drop any flag overriding it."
    ),
    targets={SITE},
)(_install_flag("anonymousAuth", False, "anonymous requests would be served"))

rule(
    name="edge-protect-kernel-defaults",
    title="Kubelet protects kernel defaults",
    category="edge-install",
    severity="medium",
    description=(
        "The kubelet refuses to start on a kernel whose settings differ from what it needs (--protect-kernel-defaults)."
    ),
    remediation=(
        "Keep distribution.protect_kernel_defaults on (the driver renders the kubelet flag and the sysctls it needs) "
        "and drop any flag overriding it."
    ),
    targets={SITE},
)(_install_flag("protectKernelDefaults", True, "kubelet may silently change kernel settings"))

rule(
    name="edge-kubeconfig-mode",
    title="Kubeconfig readable by root only",
    category="edge-install",
    severity="high",
    description="The admin kubeconfig written on the node has mode 0600.",
    remediation=(
        "Keep the driver's rendered kubeconfig mode 0600 (K3s write-kubeconfig-mode; the k0s and MicroShift installs "
        "chmod it) and drop any flag overriding it."
    ),
    targets={SITE},
)(_install_flag("kubeconfigMode", "0600", "other local users could read cluster-admin credentials"))


@rule(
    name="edge-mirror-https",
    title="Registry mirrors over HTTPS in prod",
    category="edge-install",
    severity="high",
    description=(
        "In prod every registry mirror a site pulls images through is reached over https, so nobody on the network "
        "path can swap an image or read pull credentials."
    ),
    remediation=(
        "Serve the mirror over TLS and write it as https://HOST[:PORT] in the site's registry_mirrors (http:// is for "
        "a lab mirror only)."
    ),
    targets={SITE},
)
def edge_mirror_https(res: Resource, config: dict[str, Any]) -> list[Violation]:
    if dig(res.props, "environment") != "prod":
        return []
    out = []
    for registry, endpoints in mapping(dig(res.props, "registryMirrors")).items():
        for i, endpoint in enumerate(items(endpoints)):
            if isinstance(endpoint, str) and not endpoint.startswith("https://"):
                out.append(
                    Violation(
                        f"site {dig(res.props, 'site') or res.name}: mirror {endpoint!r} of {registry} is not https",
                        f"{key_path('registryMirrors', registry)}[{i}]",
                    )
                )
    return out


@rule(
    name="edge-pinned-version",
    title="Exact distribution version",
    category="edge-install",
    severity="critical",
    description=(
        "A site installs one exact, reviewed distribution version; a channel or 'latest' changes what runs without a "
        "change in the stack."
    ),
    remediation="Set the site's distribution version to an exact release (e.g. v1.33.4+k3s1) and clear the channel.",
    targets={SITE},
)
def edge_pinned_version(res: Resource, config: dict[str, Any]) -> list[Violation]:
    dist, version, channel = (dig(res.props, k) for k in ("distribution", "version", "channel"))
    out = []
    if isinstance(channel, str) and channel:
        out.append(Violation(f"installs from channel {channel!r}", "channel"))
    if dist is UNKNOWN or version is UNKNOWN:
        return out
    pattern = VERSION_PATTERNS.get(dist) if isinstance(dist, str) else None
    if pattern is None:
        out.append(Violation(f"unknown distribution {dist!r}", "distribution"))
    elif not isinstance(version, str) or not pattern.match(version):
        out.append(
            Violation(f"version {version!r} is not an exact {dist} release (e.g. {VERSION_EXAMPLES[dist]})", "version")
        )
    return out


@rule(
    name="edge-artifact-sha256",
    title="Every artifact has a sha256",
    category="edge-install",
    severity="critical",
    description=(
        "Every binary, image archive and script copied to a host is verified against a pinned sha256 before use."
    ),
    remediation="Give each artifact its sha256 (64 lowercase hex characters, `sha256sum FILE`) in the inventory.",
    targets={SITE},
)
def edge_artifact_sha256(res: Resource, config: dict[str, Any]) -> list[Violation]:
    out = []
    for i, art in enumerate(items(dig(res.props, "artifacts"))):
        digest = dig(art, "sha256")
        if digest is UNKNOWN:
            continue
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            out.append(Violation(f"artifact {dig(art, 'name')!r} has no valid sha256", f"artifacts[{i}].sha256"))
    return out


@rule(
    name="ssh-host-key-pinned",
    title="SSH host keys pinned",
    category="edge-install",
    severity="high",
    description="Every SSH connection to a host checks a pinned host key, so an install cannot be intercepted.",
    remediation="Set the host's ssh.host_key (or host_key_file) in the inventory; the connection then carries hostKey.",
    targets={SITE} | REMOTE,
)
def ssh_host_key_pinned(res: Resource, config: dict[str, Any]) -> list[Violation]:
    if res.type == SITE:
        return [
            Violation(f"host {dig(h, 'name')!r} has no pinned hostKey", f"hosts[{i}].hostKey")
            for i, h in enumerate(items(dig(res.props, "hosts")))
            if dig(h, "hostKey") in (None, "")
        ]
    conn = dig(res.props, "connection")
    if conn is None or conn is UNKNOWN or dig(conn, "hostKey") not in (None, ""):
        return []
    return [Violation(f"connection to {dig(conn, 'host')!r} does not pin a hostKey", "connection.hostKey")]


@rule(
    name="ssh-private-key-secret",
    title="SSH private keys are secrets",
    category="edge-install",
    severity="critical",
    description=(
        "An SSH private key passed to a remote command is a Pulumi secret, so it is encrypted in state and never shown."
    ),
    remediation=(
        "Wrap the key with pulumi.Output.secret(...) (inventory SecretRef does this) before passing it as "
        "connection.privateKey."
    ),
    targets=REMOTE,
)
def ssh_private_key_secret(res: Resource, config: dict[str, Any]) -> list[Violation]:
    key = dig(res.props, "connection", "privateKey")
    if key is None or key is UNKNOWN:
        return []
    if is_secret_at(res.props, "connection", "privateKey") is False:
        return [Violation("connection.privateKey is not a secret", "connection.privateKey")]
    return []


@rule(
    name="join-token-secret",
    title="Join tokens are secrets",
    category="edge-install",
    severity="critical",
    description="Cluster join tokens (K3S_TOKEN and the like) reach remote commands only as Pulumi secrets.",
    remediation=(
        "Pass the token through environment as pulumi.Output.secret(token) and never inline it in the command text."
    ),
    targets=REMOTE,
)
def join_token_secret(res: Resource, config: dict[str, Any]) -> list[Violation]:
    out = []
    for name, value in mapping(dig(res.props, "environment")).items():
        named_token = TOKEN_ENV.search(name) and value not in (None, "") and value is not UNKNOWN
        if named_token and is_secret_at(res.props, "environment", name) is False:
            out.append(Violation(f"environment {name} is not a secret", key_path("environment", name)))
    for field in ("create", "update", "delete"):
        text = dig(res.props, field)
        if isinstance(text, str) and TOKEN_IN_COMMAND.search(text) and is_secret_at(res.props, field) is False:
            out.append(Violation(f"{field} command writes a token inline", field))
    return out
