"""The facts several layers share, in one place that imports nothing of ours.

The inventory schema, the catalog, the renderers, the policy pack and the fleet command all
agree on these: what an exact distribution version looks like, what a digest is, where the
project's cache lives, and how a problem is reported to a user (``file: field: message (fix:
…)``). Only the standard library is imported here, so the policy pack can use it with its own
requirements alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

# Exact versions only: a channel name or "latest" is not a version. K3s: a release
# (v1.33.4+k3s1) or a build of one exact commit (v1.35.1+k3s-e69d1861).
VERSION_PATTERNS: dict[str, re.Pattern[str]] = {
    "k3s": re.compile(r"^v1\.\d+\.\d+\+k3s(\d+|-[0-9a-f]{8,40})\Z"),
    "k0s": re.compile(r"^v1\.\d+\.\d+\+k0s\.\d+\Z"),
    "microshift": re.compile(r"^4\.\d+\.\d+\Z"),
}
VERSION_EXAMPLES = {"k3s": "v1.33.4+k3s1", "k0s": "v1.33.4+k0s.0", "microshift": "4.19.0"}

# A sha256 as hex (``sha256sum`` prints it), and an image pinned by it (``…@sha256:<hex>``).
SHA256 = re.compile(r"[0-9a-f]{64}")
IMAGE_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")
# A DNS label (RFC 1123): site, host, model and namespace names.
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# ``s3://bucket/key``: the model registry and the team state backend.
S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(?P<key>\S*))?")

# Latency budgets per class (ms), from the use cases the fleet serves: closed-loop industrial
# control ~10 ms at the edge, video analytics 30-50 ms, batch scoring is not interactive.
LATENCY_BUDGET_MS = {"control": 10.0, "video": 50.0, "batch": 1000.0}

# The one variable an inventory path may name: the project's own cache directory.
# What a read-back script (run on refresh) prints as its last line: what it checks is in place,
# or it is not, followed by why (a host whose disk was wiped or that was reimaged).
CHECK_PRESENT = "edgefleet-check: present"
CHECK_ABSENT = "edgefleet-check: absent: "

CACHE_VAR = "EDGEFLEET_CACHE"


def cache_dir() -> Path:
    """The project's cache: ``$EDGEFLEET_CACHE``, by default ``~/.cache/edgefleet``."""
    return Path(os.environ.get(CACHE_VAR) or Path.home() / ".cache/edgefleet")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Problem:
    """One thing wrong, where it is, and what to do about it."""

    file: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message} (fix: {self.fix})"


# Every string of the inventory that reaches a host (a script, a service unit, a configuration
# file) accepts only its own syntax, so nothing a shell, systemd or a config parser would
# interpret gets through: the inventory refuses the rest, and the renderers check the same
# when called directly. Patterns are matched with fullmatch.
DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"{DNS_LABEL}(\.{DNS_LABEL})*")  # and at most 253 characters: is_dns_name()
LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(rf"({LABEL_NAME.pattern})?")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
ARTIFACT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
REGISTRY = re.compile(rf"(?P<host>{DNS_NAME.pattern})(:(?P<port>[0-9]{{1,5}}))?")
MIRROR_URL = re.compile(
    rf"(?P<scheme>https?)://(?P<host>{DNS_NAME.pattern}|\[[0-9a-f:]+\])"
    r"(:(?P<port>[0-9]{1,5}))?/?"
)
# A distribution flag: --name or --name=value, the value without spaces, quotes, `$`, `%`,
# backslashes or control characters (none of them is needed by a real flag).
FLAG = re.compile(r"--(?P<name>[a-z0-9][a-z0-9-]{0,63})(=(?P<value>[A-Za-z0-9._:/=,@+-]{0,512}))?")

# Flags the drivers render as the hardening baseline: extra_args/agent_args must not override
# them (a command-line flag wins over the configuration file). Sub-options of pass-through
# flags (``--kube-apiserver-arg=anonymous-auth=true``) are listed as ``flag:option``.
BASELINE_FLAGS: dict[str, dict[str, str]] = {
    "k3s": {
        "secrets-encryption": "Secrets encryption at rest",
        "write-kubeconfig-mode": "the kubeconfig mode 0600",
        "write-kubeconfig": "the kubeconfig path",
        "write-kubeconfig-group": "the kubeconfig mode 0600",
        "protect-kernel-defaults": "kernel protection",
        "token": "the join token file",
        "token-file": "the join token file",
        "agent-token": "the agent token",
        "agent-token-file": "the agent token",
        "data-dir": "the data directory",
        "config": "the configuration file",
        "server": "the join address",
        "node-name": "the node name",
        "node-ip": "the node address",
        "cluster-init": "the topology",
        "private-registry": "the registry mirrors file",
        "kube-apiserver-arg:anonymous-auth": "anonymous-auth=false",
        "kube-apiserver-arg:audit-policy-file": "the API audit log",
        "kube-apiserver-arg:audit-log-path": "the API audit log",
        "kube-apiserver-arg:audit-log-maxage": "the API audit log",
        "kube-apiserver-arg:audit-log-maxbackup": "the API audit log",
        "kube-apiserver-arg:audit-log-maxsize": "the API audit log",
        "kube-apiserver-arg:admission-control-config-file": "Pod Security admission",
        "kube-apiserver-arg:enable-admission-plugins": "the admission plugins",
        "kube-apiserver-arg:disable-admission-plugins": "the admission plugins",
        "kube-apiserver-arg:encryption-provider-config": "Secrets encryption at rest",
        "kube-apiserver-arg:authorization-mode": "API authorization",
        "kubelet-arg:anonymous-auth": "the kubelet's anonymous-auth=false",
        "kubelet-arg:authorization-mode": "kubelet authorization",
        "kubelet-arg:read-only-port": "the kubelet read-only port",
        "kubelet-arg:protect-kernel-defaults": "kernel protection",
    },
    "k0s": {
        "data-dir": "the data directory",
        "config": "the ClusterConfig",
        "token-file": "the join token file",
        "kubelet-extra-args": "the kubelet flags (node address, kernel protection)",
        "labels": "the node labels",
        "taints": "the node taints",
        "profile": "the worker profile",
    },
}


def shown(value: str, limit: int = 60) -> str:
    """A user's value as an error message shows it: quoted, escaped, and cut short."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def is_dns_name(value: str) -> bool:
    return len(value) <= 253 and DNS_NAME.fullmatch(value) is not None


def is_ip(value: str) -> bool:
    """An IP address written plainly (an IPv6 scope such as ``%eth0`` is free text: refused)."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return "%" not in value


def bad_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    return not (LABEL_NAME.fullmatch(name) and (not prefix or is_dns_name(prefix)))


def taint_ok(taint: str) -> bool:
    head, _, effect = taint.rpartition(":")
    key, _, value = head.partition("=")
    return effect in TAINT_EFFECTS and not bad_label_key(key) and LABEL_VALUE.fullmatch(value) is not None


def flag_problems(flags: list[str], distribution: str) -> list[tuple[int, str, str]]:
    """(index, message, fix) for each flag that is malformed or overrides the baseline."""
    out: list[tuple[int, str, str]] = []
    baseline = BASELINE_FLAGS.get(distribution, {})
    for i, flag in enumerate(flags):
        m = FLAG.fullmatch(flag)
        if m is None:
            out.append(
                (
                    i,
                    f"{shown(flag)} is not a {distribution} flag",
                    "write --name or --name=value; a value uses only letters, digits and . _ : / = , @ + -, "
                    "at most 512 characters",
                )
            )
            continue
        name, value = m.group("name"), m.group("value") or ""
        option = value.split("=", 1)[0].lstrip("-")
        protects = baseline.get(name) or baseline.get(f"{name}:{option}")
        if protects:
            what = f"--{name}" + (f"={option}" if f"{name}:{option}" in baseline else "")
            out.append(
                (
                    i,
                    f"{shown(flag)} overrides {what}, which edgefleet renders for {protects}",
                    "remove the flag; the hardening baseline is not configurable per site",
                )
            )
    return out
