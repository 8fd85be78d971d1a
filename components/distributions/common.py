"""What every distribution driver shares: the typed inputs, the driver interface, and the
building blocks of the rendered bash scripts.

Everything here is pure: typed inputs in, text out. Rendered scripts are bash
(``set -euo pipefail``, shellcheck-clean), idempotent, bounded in time, and never carry a
secret: the join token reaches a host only as an environment variable of the remote command
and is written to a 0600 file without being echoed.
"""

from __future__ import annotations

import importlib
import re
import shlex
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, Protocol

import yaml

from components.inventory import (
    ARTIFACT_NAME,
    LABEL_VALUE,
    MIRROR_URL,
    NAME,
    REGISTRY,
    bad_label_key,
    flag_problems,
    is_dns_name,
    is_ip,
    taint_ok,
)

Arch = Literal["amd64", "arm64"]
Role = Literal["server", "agent"]
Profile = Literal["standard", "gateway"]
ServiceManager = Literal["systemd", "openrc", "supervised"]

ARTIFACT_VERIFY_EXIT = 3  # a checksum mismatch is told apart from other failures
SUPERVISE_DIR = "/usr/local/lib/edgefleet"
PID_DIR = "/run/edgefleet"
DRAIN_ANNOTATION = "edgefleet.io/cordoned-by"

# Kubelet reservations for constrained gateway devices (<= 1 GiB RAM): keep room for the OS
# and the distribution itself, and evict pods before the kernel OOM killer has to act.
GATEWAY_SYSTEM_RESERVED = {"cpu": "100m", "memory": "128Mi"}
GATEWAY_KUBE_RESERVED = {"cpu": "100m", "memory": "256Mi"}
GATEWAY_EVICTION_HARD = {"memory.available": "100Mi", "nodefs.available": "10%", "imagefs.available": "15%"}


class DistributionError(Exception):
    """Inputs a distribution cannot render: names the field, what is wrong and the fix."""

    def __init__(self, field: str, message: str, fix: str):
        self.field, self.message, self.fix = field, message, fix
        super().__init__(f"{field}: {message} (fix: {fix})")


@dataclass(frozen=True)
class NodeSpec:
    """One host of a site as a distribution sees it."""

    site: str
    host: str
    address: str  # management address of the node
    role: Role
    first_server: bool  # initialises the cluster
    server_url: str | None  # https://<first server or registration address>:6443 for joiners
    arch: Arch
    labels: dict[str, str]
    taints: list[str]  # key=value:Effect
    tls_sans: list[str]
    cluster_cidr: str
    service_cidr: str
    profile: Profile  # gateway = constrained, egress-only device
    disable_agent: bool  # server without kubelet
    service_manager: ServiceManager
    registry_mirrors: dict[str, list[str]]  # registry -> endpoints
    ha: bool = False  # the site runs several servers on embedded etcd
    data_dir: str | None = None  # None: the distribution's default
    extra_args: tuple[str, ...] = ()  # flags for this node's role
    protect_kernel_defaults: bool = True  # kubelet --protect-kernel-defaults and the sysctls it needs


# What the kubelet checks under protect-kernel-defaults (CIS hardening guide, host level).
KERNEL_PARAMS = {
    "vm.panic_on_oom": "0",
    "vm.overcommit_memory": "1",
    "kernel.panic": "10",
    "kernel.panic_on_oops": "1",
    "kernel.keys.root_maxkeys": "1000000",
    "kernel.keys.root_maxbytes": "25000000",
}
SYSCTL_FILE = "/etc/sysctl.d/90-kubelet.conf"


def render_sysctl() -> str:
    """The sysctl drop-in that keeps KERNEL_PARAMS across reboots."""
    return "# Kernel parameters the kubelet requires with protect-kernel-defaults (CIS).\n" + "".join(
        f"{k}={v}\n" for k, v in KERNEL_PARAMS.items())


def sysctl_lines() -> str:
    """Install-script lines setting KERNEL_PARAMS now (needs the ``sysctl`` library)."""
    return "".join(f"ensure_sysctl {k} {v}\n" for k, v in KERNEL_PARAMS.items())


@dataclass(frozen=True)
class Artifact:
    """A file already on the host (``dest``) that must match ``sha256`` before use."""

    name: str
    url_or_path: str
    sha256: str
    dest: str


@dataclass(frozen=True)
class UpgradeSteps:
    """One node's upgrade: ``drain`` and ``uncordon`` run on a server, ``upgrade`` on the node."""

    drain: str
    upgrade: str
    uncordon: str


class Driver(Protocol):
    """What the site and host components need from a distribution."""

    name: str
    token_env: str  # environment variable the install script reads the join secret from
    version_pattern: re.Pattern[str]

    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]: ...
    def render_install(self, node: NodeSpec, artifacts: Sequence[Artifact], *, ready_timeout_s: int = 300) -> str: ...
    def render_join_token(self, node: NodeSpec) -> str | None: ...
    def upgrade_steps(self, node: NodeSpec, artifacts: Sequence[Artifact], *, drain_timeout_s: int = 300,
                      ready_timeout_s: int = 300) -> UpgradeSteps: ...
    def render_drain(self, node_name: str, *, timeout_s: int = 300) -> str: ...
    def render_uncordon(self, node_name: str) -> str: ...
    def render_node_ready(self, node: NodeSpec, *, timeout_s: int = 300) -> str: ...
    def render_remove_node(self, node_name: str, *, timeout_s: int = 300) -> str: ...
    def render_uninstall(self, node: NodeSpec) -> str: ...
    def render_fetch_kubeconfig(self, node: NodeSpec) -> str: ...
    def kubeconfig_path(self, node: NodeSpec) -> str: ...
    def ready_check(self, node: NodeSpec) -> str: ...
    def rewrite_kubeconfig(self, text: str, server_url: str) -> str: ...
    def install_facts(self, node: NodeSpec) -> dict[str, object]: ...


@dataclass(frozen=True)
class ModuleDriver:
    """A :class:`Driver` whose operations are the functions of one distribution module."""

    name: str
    token_env: str
    version_pattern: re.Pattern[str]
    module: str  # dotted name of the module implementing the operations

    def _op(self, op: str):  # type: ignore[no-untyped-def]
        return getattr(importlib.import_module(self.module), op)

    def config_files(self, node: NodeSpec) -> dict[str, tuple[str, int]]:
        return self._op("config_files")(node)

    def render_install(self, node: NodeSpec, artifacts: Sequence[Artifact], *, ready_timeout_s: int = 300) -> str:
        return self._op("render_install")(node, artifacts, ready_timeout_s=ready_timeout_s)

    def render_join_token(self, node: NodeSpec) -> str | None:
        return self._op("render_join_token")(node)

    def upgrade_steps(self, node: NodeSpec, artifacts: Sequence[Artifact], *, drain_timeout_s: int = 300,
                      ready_timeout_s: int = 300) -> UpgradeSteps:
        return self._op("upgrade_steps")(node, artifacts, drain_timeout_s=drain_timeout_s, ready_timeout_s=ready_timeout_s)

    def render_drain(self, node_name: str, *, timeout_s: int = 300) -> str:
        return self._op("render_drain")(node_name, timeout_s=timeout_s)

    def render_uncordon(self, node_name: str) -> str:
        return self._op("render_uncordon")(node_name)

    def render_node_ready(self, node: NodeSpec, *, timeout_s: int = 300) -> str:
        return self._op("render_node_ready")(node, timeout_s=timeout_s)

    def render_remove_node(self, node_name: str, *, timeout_s: int = 300) -> str:
        return self._op("render_remove_node")(node_name, timeout_s=timeout_s)

    def render_uninstall(self, node: NodeSpec) -> str:
        return self._op("render_uninstall")(node)

    def render_fetch_kubeconfig(self, node: NodeSpec) -> str:
        return self._op("render_fetch_kubeconfig")(node)

    def kubeconfig_path(self, node: NodeSpec) -> str:
        return self._op("kubeconfig_path")(node)

    def ready_check(self, node: NodeSpec) -> str:
        return self._op("ready_check")(node)

    def rewrite_kubeconfig(self, text: str, server_url: str) -> str:
        return rewrite_kubeconfig(text, server_url)

    def install_facts(self, node: NodeSpec) -> dict[str, object]:
        return self._op("install_facts")(node)


# --- install facts (what the edge-* policy rules check) -----------------------------------------
#
# Each driver's install_facts(node) reads them from the node's rendered configuration and
# command line. A server reports every fact, a node without an API server only
# protectKernelDefaults; a node without a kubelet does not report that one.

SAFE_FACTS: dict[str, object] = {"secretsEncryption": True, "auditLog": True, "anonymousAuth": False,
                                 "kubeconfigMode": "0600", "protectKernelDefaults": True}


def combine_facts(per_node: Sequence[Mapping[str, object]]) -> dict[str, object]:
    """The site's facts: a fact holds only if it holds on every node that reports it. A fact
    no node reports is unsafe, except kernel protection on a site without kubelets; no
    nodes at all (none could be rendered) means nothing holds."""
    if not per_node:
        return {"secretsEncryption": False, "auditLog": False, "anonymousAuth": True, "kubeconfigMode": None,
                "protectKernelDefaults": False}
    out: dict[str, object] = {}
    for fact, safe in SAFE_FACTS.items():
        values = [facts[fact] for facts in per_node if fact in facts]
        if fact == "protectKernelDefaults" and not values:
            out[fact] = True
        elif fact == "kubeconfigMode":
            unsafe = sorted({v for v in values if v != safe}, key=str)
            out[fact] = unsafe[0] if unsafe else (safe if values else None)
        else:
            out[fact] = bool(values) and all(v == safe for v in values)
            if fact == "anonymousAuth":
                out[fact] = not out[fact]
    return out


def flag_values(argv: Sequence[str], name: str) -> list[str]:
    """The values of ``--name`` in ``argv`` in order (``--name`` alone counts as "true")."""
    out = []
    for arg in argv:
        if arg == f"--{name}":
            out.append("true")
        elif arg.startswith(f"--{name}="):
            out.append(arg.split("=", 1)[1])
    return out


def options(entries: Sequence[str]) -> dict[str, str]:
    """``["a=1", "--b=2"]`` -> ``{"a": "1", "b": "2"}``; a later entry wins."""
    out: dict[str, str] = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        out[key.lstrip("-")] = value
    return out


def is_true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))


def q(value: object) -> str:
    """One shell word."""
    return shlex.quote(str(value))


# --- artifacts -------------------------------------------------------------------------------

_ARCH_HINTS: dict[str, Arch] = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}
UNAME_ARCH: dict[Arch, str] = {"amd64": "x86_64", "arm64": "aarch64"}


def artifact_arch(artifact: Artifact) -> Arch | None:
    """The architecture an artifact's name or path declares, if any (release files carry it,
    e.g. ``k3s-arm64`` or ``k0s-v1.33.4+k0s.0-amd64``)."""
    tokens = re.split(r"[^a-z0-9_]+", f"{artifact.name}/{artifact.url_or_path}".lower())
    found = {_ARCH_HINTS[t] for t in tokens if t in _ARCH_HINTS}
    return found.pop() if len(found) == 1 else None


def for_arch(artifacts: Sequence[Artifact], arch: Arch) -> list[Artifact]:
    """Artifacts usable on ``arch``: those declaring it and those declaring none."""
    return [a for a in artifacts if artifact_arch(a) in (arch, None)]


def pick_artifact(artifacts: Sequence[Artifact], arch: Arch, name: str | None = None) -> Artifact:
    """The one artifact (named ``name``, if given) for ``arch``; one that declares the
    architecture wins over one that declares none."""
    pool = [a for a in artifacts if name is None or a.name == name]
    exact = [a for a in pool if artifact_arch(a) == arch]
    if len(exact) == 1:
        return exact[0]
    neutral = [a for a in pool if artifact_arch(a) is None]
    if not exact and len(neutral) == 1:
        return neutral[0]
    label = f"{name!r} " if name else ""
    if not exact and not neutral:
        raise DistributionError("artifacts", f"no {label}artifact for {arch}",
                                f"add the {arch} release file{' named ' + repr(name) if name else ''} to the site's artifacts")
    listed = ", ".join(a.url_or_path for a in (exact or neutral))
    raise DistributionError("artifacts", f"several {label}artifacts fit {arch}: {listed}",
                            "keep one file per name and architecture")


IMAGE_ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar.lz4", ".tar.bz2", ".tar")


def archive_suffix(artifact: Artifact) -> str:
    """The container-image archive suffix the runtime recognises, from the file name."""
    base = PurePosixPath(artifact.url_or_path).name
    for suffix in IMAGE_ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            return suffix
    raise DistributionError(f"artifacts[{artifact.name}]", f"{base!r} is not an image archive",
                            f"use the release's image archive (one of {', '.join(IMAGE_ARCHIVE_SUFFIXES)})")


def _check_artifact(artifact: Artifact) -> None:
    if not ARTIFACT_NAME.fullmatch(artifact.name):
        raise DistributionError(f"artifacts[{artifact.name!r}]", "not an artifact name",
                                "use lowercase letters, digits, '.', '_' and '-' (the name becomes part of a path)")
    if not re.fullmatch(r"[0-9a-f]{64}", artifact.sha256):
        raise DistributionError(f"artifacts[{artifact.name}].sha256", f"{artifact.sha256!r} is not a sha256 hex digest",
                                "give the 64 lowercase hex characters printed by `sha256sum FILE`")
    if not re.fullmatch(r"(/[A-Za-z0-9._+-]+)+", artifact.dest) or "/../" in f"{artifact.dest}/":
        raise DistributionError(f"artifacts[{artifact.name}].dest", f"{artifact.dest!r} is not an absolute path",
                                "give the absolute path of the file on the host")


def check_strings(node: NodeSpec) -> None:
    """Every string of the node that lands on the host has its own syntax; the inventory
    checks the same, this keeps renderers safe when called directly."""
    at = f"{node.site!r}/{node.host!r}"
    for field, value in (("site", node.site), ("host", node.host)):
        if not NAME.fullmatch(value):
            raise DistributionError(f"{at}.{field}", f"{value!r} is not a name", "use lowercase letters, digits and '-'")
    if not is_ip(node.address):
        raise DistributionError(f"{at}.address", f"{node.address!r} is not an IP address", "give the management IP")
    if node.server_url is not None and not re.fullmatch(r"https://[A-Za-z0-9.:\[\]-]+:6443", node.server_url):
        raise DistributionError(f"{at}.server_url", f"{node.server_url!r} is not an API server URL", "give https://HOST:6443")
    for key, value in node.labels.items():
        if bad_label_key(key) or not LABEL_VALUE.fullmatch(value):
            raise DistributionError(f"{at}.labels", f"{key!r}: {value!r} is not a Kubernetes label", "use Kubernetes label syntax")
    for taint in node.taints:
        if not taint_ok(taint):
            raise DistributionError(f"{at}.taints", f"{taint!r} is not a taint", "write key=value:Effect")
    for san in node.tls_sans:
        if not (is_ip(san) or is_dns_name(san)):
            raise DistributionError(f"{at}.tls_sans", f"{san!r} is neither an IP address nor a DNS name", "list names or IPs only")
    check_mirrors(node.registry_mirrors)


def check_flags(node: NodeSpec, distribution: str) -> None:
    """Flags are well-formed and leave the rendered hardening baseline alone."""
    for _, message, fix in flag_problems(list(node.extra_args), distribution.lower())[:1]:
        raise DistributionError(f"{node.site}/{node.host}.extra_args", message, fix)


def check_node(node: NodeSpec, distribution: str) -> None:
    """Rules every multi-node distribution shares: role/agent combinations, flag syntax, mirrors."""
    check_strings(node)
    at = f"{node.site}/{node.host}"
    if node.role == "agent" and not node.server_url:
        raise DistributionError(f"{at}.server_url", "an agent needs the URL of a server to join",
                                "give https://<first server or registration address>:6443")
    if node.role == "server" and node.first_server and node.server_url:
        raise DistributionError(f"{at}.server_url", "the first server initialises the cluster and joins nothing",
                                "leave server_url empty for the first server")
    if node.role == "server" and not node.first_server:
        if not node.server_url:
            raise DistributionError(f"{at}.server_url", "a joining server needs the URL of the first server",
                                    "give https://<first server or registration address>:6443")
        if not node.ha:
            raise DistributionError(f"{at}.role", "a second server needs embedded etcd (topology 'ha')",
                                    "use topology 'ha' with three servers, or make this host an agent")
    if node.disable_agent and node.role != "server":
        raise DistributionError(f"{at}.disable_agent", "only servers can run without an agent", "drop disable_agent")
    check_flags(node, distribution)


def verify_lines(artifacts: Sequence[Artifact]) -> str:
    """Calls verifying every artifact (the ``verify_artifact`` function must be included)."""
    for a in artifacts:
        _check_artifact(a)
    return "".join(f"verify_artifact {q(a.name)} {q(a.dest)} {a.sha256}\n" for a in artifacts)


# --- the bash library --------------------------------------------------------------------------

LIB: dict[str, str] = {
    "log": r"""
log() { printf '[%s] %s\n' "$HOST" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$HOST" "$*" >&2; exit 1; }
""",
    "root": r"""
require_root() { [[ "$(id -u)" -eq 0 ]] || die "must run as root (fix: connect as root or through passwordless sudo)"; }
""",
    "verify_artifact": r"""
# verify_artifact NAME FILE SHA256: refuse (exit @EXIT@) unless FILE has exactly this digest.
verify_artifact() {
  local name="$1" file="$2" want="$3" got
  if [[ ! -f "$file" ]]; then
    printf '[%s] refusing artifact %s: %s does not exist (fix: upload the artifact again)\n' "$HOST" "$name" "$file" >&2
    exit @EXIT@
  fi
  if ! printf '%s  %s\n' "$want" "$file" | sha256sum --check --status -; then
    got="$(sha256sum -- "$file")"
    printf '[%s] refusing artifact %s: %s has sha256 %s, expected %s (fix: upload the published file again or correct its checksum in the inventory)\n' \
      "$HOST" "$name" "$file" "${got%% *}" "$want" >&2
    exit @EXIT@
  fi
}
""".replace("@EXIT@", str(ARTIFACT_VERIFY_EXIT)),
    "arch": r"""
# require_arch UNAME_M: the host must be the architecture the artifacts were chosen for.
require_arch() {
  local have
  have="$(uname -m)"
  [[ "$have" == "$1" ]] || die "this host is $have but the inventory declares $1 (fix: correct the host's arch in the inventory)"
}
""",
    "files": r"""
CHANGED=0
# put_file DEST MODE < CONTENT: replace DEST atomically, only when content or mode differ.
put_file() {
  local dest="$1" mode="$2" tmp
  mkdir -p -- "$(dirname -- "$dest")"
  tmp="$(mktemp "$dest.edgefleet.XXXXXX")"
  cat >"$tmp"
  chmod "$mode" "$tmp"
  if [[ -f "$dest" ]] && cmp -s -- "$tmp" "$dest" && [[ "$(stat -c %a -- "$dest")" == "${mode#0}" ]]; then
    rm -f -- "$tmp"
    return 0
  fi
  mv -f -- "$tmp" "$dest"
  CHANGED=1
  log "wrote $dest"
}
# drop_file DEST: remove a file this install no longer manages.
drop_file() {
  if [[ -e "$1" ]]; then
    rm -f -- "$1"
    CHANGED=1
    log "removed $1"
  fi
}
# install_copy SRC DEST MODE SHA256: copy a verified artifact into place atomically.
install_copy() {
  local src="$1" dest="$2" mode="$3" sha="$4" tmp
  if [[ -f "$dest" ]] && printf '%s  %s\n' "$sha" "$dest" | sha256sum --check --status -; then
    chmod "$mode" "$dest"
    return 0
  fi
  mkdir -p -- "$(dirname -- "$dest")"
  tmp="$(mktemp "$dest.edgefleet.XXXXXX")"
  cp -- "$src" "$tmp"
  chmod "$mode" "$tmp"
  mv -f -- "$tmp" "$dest"
  CHANGED=1
  log "installed $dest"
}
""",
    "secret": r"""
# write_secret VAR FILE: the secret in environment variable VAR goes to FILE (0600), never to
# the output. Without VAR, an existing FILE is kept (re-runs need not carry the secret).
write_secret() {
  local var="$1" file="$2"
  if [[ -n "${!var:-}" ]]; then
    put_file "$file" 0600 < <(printf '%s' "${!var}")
  elif [[ ! -s "$file" ]]; then
    die "$var is not set and $file does not exist (fix: pass $var in the remote command's environment)"
  fi
}
""",
    "sysctl": r"""
# ensure_sysctl KEY VALUE: set a kernel parameter the kubelet insists on.
ensure_sysctl() {
  local cur
  cur="$(sysctl -n "$1" 2>/dev/null || true)"
  [[ "$cur" == "$2" ]] && return 0
  sysctl -q -w "$1=$2" >/dev/null 2>&1 ||
    die "cannot set kernel parameter $1=$2 (currently '$cur'; fix: set it on the host, e.g. in /etc/sysctl.d)"
  log "set $1=$2"
}
""",
    "wait": r"""
# wait_for SECONDS WHAT COMMAND...: retry COMMAND every 2 s until it succeeds or time runs out.
wait_for() {
  local limit="$1" what="$2" deadline
  shift 2
  deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      printf '[%s] error: %s not ready after %ss on %s\n' "$HOST" "$what" "$limit" "$HOST" >&2
      return 1
    fi
    sleep 2
  done
}
""",
    "kubelet_health": r"""
# kubelet_healthy: the local kubelet answers its health endpoint (no credentials needed).
kubelet_healthy() {
  local reply
  if command -v curl >/dev/null 2>&1; then
    reply="$(curl -fsS -m 3 http://127.0.0.1:10248/healthz 2>/dev/null)" || return 1
  else
    # shellcheck disable=SC2016
    reply="$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/10248 && printf "GET /healthz HTTP/1.0\r\n\r\n" >&3 && cat <&3' 2>/dev/null)" || return 1
    reply="${reply##*$'\r\n\r\n'}"
  fi
  [[ "$reply" == ok ]]
}
""",
    "procs": r"""
MY_MNT_NS="$(readlink /proc/self/ns/mnt)"
# ours PID: the process runs in this host's mount namespace (hosts sharing a kernel, like
# namespaced lab hosts, must never touch each other's processes).
ours() { [[ "$(readlink "/proc/$1/ns/mnt" 2>/dev/null)" == "$MY_MNT_NS" ]]; }
# children PID: direct children, from /proc.
children() {
  local stat rest ppid pid
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    rest="${rest##*) }"
    read -r _ ppid _ <<<"$rest"
    [[ "$ppid" == "$1" ]] && { pid="${stat#/proc/}"; printf '%s\n' "${pid%/stat}"; }
  done
  return 0
}
# kill_tree PID: the process and all its descendants.
kill_tree() {
  local child
  for child in $(children "$1"); do kill_tree "$child"; done
  kill -KILL "$1" 2>/dev/null || true
}
# kill_matching REGEX: kill the trees of this host's processes whose command line matches,
# sparing this script's own session (its shell and everything it started).
kill_matching() {
  local dir pid cmd rest sid my_sid
  local -a argv
  read -r rest </proc/$$/stat
  rest="${rest##*) }"
  read -r _ _ _ my_sid _ <<<"$rest"
  for dir in /proc/[0-9]*; do
    pid="${dir#/proc/}"
    read -r rest <"$dir/stat" 2>/dev/null || continue
    rest="${rest##*) }"
    read -r _ _ _ sid _ <<<"$rest"
    [[ "$sid" == "$my_sid" ]] && continue
    mapfile -d '' -t argv <"$dir/cmdline" 2>/dev/null || continue
    cmd="${argv[*]}"
    if [[ "$cmd" =~ $1 ]] && ours "$pid"; then
      log "killing leftover process $pid (${cmd%% *})"
      kill_tree "$pid"
    fi
  done
}
# unmount_under PREFIX: unmount PREFIX and everything below it, deepest first (a PREFIX
# ending in '-' matches names that start with it, e.g. /run/netns/cni-).
unmount_under() {
  local mp
  while read -r mp; do
    umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null || log "could not unmount $mp"
  done < <(awk -v p="$1" '{ d = (p ~ /-$/) ? p : p "/" } $2 == p || index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
}
""",
}


@dataclass(frozen=True)
class Script:
    """A rendered bash script: header, library functions, variables, body."""

    purpose: str
    host: str | None  # None: the host name is taken at run time
    lib: tuple[str, ...] = ("log",)
    variables: tuple[tuple[str, str], ...] = ()

    def render(self, body: str) -> str:
        head = ["#!/usr/bin/env bash", *(f"# {line}".rstrip() for line in self.purpose.strip().splitlines()),
                "set -euo pipefail", "umask 022"]
        head.append(f"HOST={q(self.host)}" if self.host else 'HOST="$(hostname)"')
        head += [f"{k}={v}" for k, v in self.variables]
        needed = ["log", *(name for name in self.lib if name != "log")]
        libs = "".join(LIB[name] for name in dict.fromkeys(needed))
        return "\n".join(head) + "\n" + libs + "\n" + body.strip("\n") + "\n"


def heredoc_file(path: str, content: str, mode: int) -> str:
    """A ``put_file`` call carrying ``content`` verbatim in a quoted here-document."""
    if not content.endswith("\n"):
        content += "\n"
    delim = "EDGEFLEET_EOF"
    while re.search(rf"^{delim}$", content, re.M):
        delim += "_"
    return f"put_file {q(path)} {mode:04o} <<'{delim}'\n{content}{delim}\n"


# libyaml's emitter (the pure-Python one is the slowest step of a large preview).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def toml_str(value: str) -> str:
    """A TOML basic string holding ``value`` exactly."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def yaml_text(data: object) -> str:
    """YAML in document order (the order rendered files are read in)."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)


# --- services ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """A long-running distribution process under one of the supported service managers."""

    name: str  # unit / init script name, e.g. k3s or k3s-agent
    manager: ServiceManager
    argv: tuple[str, ...]  # the full command line
    description: str
    notify: bool = False  # systemd Type=notify (the process reports readiness)
    stop_timeout_s: int = 60

    @property
    def log_file(self) -> str:
        return f"/var/log/{self.name}.log"

    @property
    def supervisor(self) -> str:
        return f"{SUPERVISE_DIR}/{self.name}-supervise"

    @property
    def pid_file(self) -> str:
        return f"{PID_DIR}/{self.name}.pid"

    def unit_path(self) -> str:
        return {"systemd": f"/etc/systemd/system/{self.name}.service", "openrc": f"/etc/init.d/{self.name}",
                "supervised": self.supervisor}[self.manager]

    def files(self) -> dict[str, tuple[str, int]]:
        """The service definition for the manager, as path -> (content, mode)."""
        for arg in self.argv:
            # No manager can carry these as data: systemd ends the line, a shell drops NUL.
            if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in arg):
                raise DistributionError(f"{self.name}.argv", f"{arg!r} holds a control character",
                                        "give flags without newlines or other control characters")
        if self.manager == "systemd":
            return {self.unit_path(): (self._systemd_unit(), 0o644)}
        if self.manager == "openrc":
            return {self.unit_path(): (self._openrc_script(), 0o755),
                    f"/etc/logrotate.d/{self.name}": (f"{self.log_file} {{\n\tmissingok\n\tnotifempty\n\tcopytruncate\n}}\n", 0o644)}
        return {self.supervisor: (render_supervisor(self.name, self.argv, self.pid_file, self.log_file,
                                                    stop_timeout_s=self.stop_timeout_s), 0o755)}

    def _systemd_unit(self) -> str:
        # The upstream installer's unit: KillMode=process keeps pods running across restarts.
        exec_start = " \\\n    ".join(_systemd_quote(a) for a in self.argv)
        return f"""[Unit]
Description={self.description}
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type={"notify" if self.notify else "exec"}
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
KillMode=process
Delegate=yes
User=root
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecStartPre=-/sbin/modprobe br_netfilter
ExecStartPre=-/sbin/modprobe overlay
ExecStart={exec_start}
"""

    def _openrc_script(self) -> str:
        # openrc-run sources this file, then its start function runs `eval ... $command_args`:
        # the value is a literal (single-quoted) string of shell-quoted words, so neither the
        # sourcing nor the eval can expand anything in an argument.
        args = q(" ".join(q(a) for a in self.argv[1:]) + f" >>{self.log_file} 2>&1")
        return f"""#!/sbin/openrc-run

depend() {{
    after network-online
    want cgroups
}}

supervisor=supervise-daemon
name={self.name}
command={q(self.argv[0])}
command_args={args}
output_log={self.log_file}
error_log={self.log_file}
pidfile="/var/run/{self.name}.pid"
respawn_delay=5
respawn_max=0
"""

    def shell(self) -> str:
        """Bash functions svc_running / svc_start / svc_restart / svc_stop / svc_remove and
        svc_apply (start, or restart when $CHANGED; otherwise leave the service alone)."""
        n = q(self.name)
        if self.manager == "systemd":
            funcs = f"""
svc_running() {{ systemctl is-active --quiet {n}; }}
svc_start() {{ systemctl daemon-reload; systemctl enable --quiet {n}; systemctl start --no-block {n}; }}
svc_restart() {{ systemctl daemon-reload; systemctl enable --quiet {n}; systemctl restart --no-block {n}; }}
svc_stop() {{
  if [[ -f {q(self.unit_path())} ]]; then timeout {self.stop_timeout_s + 30} systemctl stop {n} || true; fi
}}
svc_remove() {{
  if [[ -f {q(self.unit_path())} ]]; then
    systemctl disable --quiet {n} || true
    rm -f -- {q(self.unit_path())}
    systemctl daemon-reload
    systemctl reset-failed {n} 2>/dev/null || true
  fi
}}
svc_hint() {{ printf 'journalctl -u %s on %s' {n} "$HOST"; }}
svc_logs() {{ journalctl -u {n} -n 30 --no-pager >&2 2>/dev/null || true; }}
"""
        elif self.manager == "openrc":
            funcs = f"""
svc_running() {{ rc-service {n} status >/dev/null 2>&1; }}
svc_start() {{ rc-update add {n} default >/dev/null; rc-service {n} start; }}
svc_restart() {{ rc-update add {n} default >/dev/null; rc-service {n} restart; }}
svc_stop() {{
  if [[ -x {q(self.unit_path())} ]]; then timeout {self.stop_timeout_s + 30} rc-service {n} stop || true; fi
}}
svc_remove() {{
  if [[ -x {q(self.unit_path())} ]]; then rc-update delete {n} default >/dev/null 2>&1 || true; fi
  rm -f -- {q(self.unit_path())} /etc/logrotate.d/{n}
}}
svc_hint() {{ printf '%s on %s' {q(self.log_file)} "$HOST"; }}
svc_logs() {{ tail -n 30 -- {q(self.log_file)} >&2 2>/dev/null || true; }}
"""
        else:
            s = q(self.supervisor)
            funcs = f"""
svc_running() {{ [[ -x {s} ]] && {s} status >/dev/null 2>&1; }}
svc_start() {{ {s} start; }}
svc_restart() {{ {s} restart; }}
svc_stop() {{ if [[ -x {s} ]]; then {s} stop; fi; }}
svc_remove() {{ rm -f -- {s} {q(self.pid_file)}; }}
svc_hint() {{ printf '%s on %s' {q(self.log_file)} "$HOST"; }}
svc_logs() {{ tail -n 30 -- {q(self.log_file)} >&2 2>/dev/null || true; }}
"""
        return funcs + f"""svc_apply() {{
  if ! svc_running; then
    svc_start
    log "started {self.name}"
  elif ((CHANGED)); then
    svc_restart
    log "restarted {self.name}: its binary or configuration changed"
  else
    log "{self.name} is running and unchanged; not restarted"
  fi
}}
"""


def _systemd_quote(arg: str) -> str:
    """One ExecStart= word: systemd expands ``%`` specifiers and ``$`` variables and splits at
    whitespace; a double-quoted word with those escaped is taken literally."""
    if re.fullmatch(r"[A-Za-z0-9_@+=:,./-]+", arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def render_supervisor(name: str, argv: Sequence[str], pid_file: str, log_file: str, *, stop_timeout_s: int = 60,
                      restart_delay_s: int = 5) -> str:
    """A pid-file supervisor for hosts without an init system (``start|stop|restart|status``).

    ``start`` launches a respawn loop in its own session (setsid + nohup, all output to the
    log file) and does nothing when the loop is already alive. ``stop`` signals the whole
    process group and waits at most ``stop_timeout_s`` before killing it. Processes that
    leave the group on purpose (container shims) keep running, as under systemd's
    KillMode=process.
    """
    # Commas inside one element are meant (e.g. --labels=a=b,c=d): quote those explicitly.
    cmd = " ".join("'" + a.replace("'", "'\\''") + "'" if "," in a else q(a) for a in argv)
    return f"""#!/usr/bin/env bash
# Supervises {name} on a host without an init system: {SUPERVISE_DIR}/{name}-supervise start|stop|restart|status
set -euo pipefail
NAME={q(name)}
PIDFILE={q(pid_file)}
LOGFILE={q(log_file)}
STOP_TIMEOUT={int(stop_timeout_s)}
RESTART_DELAY={int(restart_delay_s)}
CMD=({cmd})
SELF="$(readlink -f -- "${{BASH_SOURCE[0]}}")"

# running_pid: the supervisor's pid, if it is alive and really this host's supervisor (not a
# reused pid, nor the same supervisor of another host sharing this kernel).
running_pid() {{
  local pid
  [[ -s "$PIDFILE" ]] || return 1
  pid="$(<"$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ "$(tr '\\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" == *"$SELF __run"* ]] || return 1
  [[ "$(readlink "/proc/$pid/ns/mnt" 2>/dev/null)" == "$(readlink /proc/self/ns/mnt)" ]] || return 1
  printf '%s\\n' "$pid"
}}

# group_alive PGID: a live (non-zombie) process is still in the group.
group_alive() {{
  local stat rest state pgrp
  for stat in /proc/[0-9]*/stat; do
    read -r rest <"$stat" 2>/dev/null || continue
    rest="${{rest##*) }}"
    read -r state _ pgrp _ <<<"$rest"
    [[ "$pgrp" == "$1" && "$state" != Z ]] && return 0
  done
  return 1
}}

run() {{
  printf '%s\\n' "$$" >"$PIDFILE"
  local rc
  while true; do
    rc=0
    "${{CMD[@]}}" || rc=$?
    printf '%s supervise: %s exited with status %s; restarting in %ss\\n' "$(date -Is)" "$NAME" "$rc" "$RESTART_DELAY"
    sleep "$RESTART_DELAY"
  done
}}

start() {{
  local pid i
  if pid="$(running_pid)"; then
    echo "$NAME: already running (pid $pid)"
    return 0
  fi
  mkdir -p -- "$(dirname -- "$PIDFILE")" "$(dirname -- "$LOGFILE")"
  rm -f -- "$PIDFILE"
  setsid nohup "$SELF" __run >>"$LOGFILE" 2>&1 </dev/null &
  for ((i = 0; i < 100; i++)); do
    if pid="$(running_pid)"; then
      echo "$NAME: started (pid $pid)"
      return 0
    fi
    sleep 0.1
  done
  echo "$NAME: did not start within 10s (see $LOGFILE)" >&2
  return 1
}}

stop() {{
  local pid deadline
  if ! pid="$(running_pid)"; then
    rm -f -- "$PIDFILE"
    echo "$NAME: not running"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while group_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      echo "$NAME: still running after ${{STOP_TIMEOUT}}s; killing process group $pid" >&2
      kill -KILL -- "-$pid" 2>/dev/null || true
      deadline=$((SECONDS + 10))
      while group_alive "$pid"; do
        if ((SECONDS >= deadline)); then
          echo "$NAME: process group $pid survived SIGKILL" >&2
          return 1
        fi
        sleep 0.2
      done
      break
    fi
    sleep 0.2
  done
  rm -f -- "$PIDFILE"
  echo "$NAME: stopped"
}}

case "${{1:-}}" in
  start) start ;;
  stop) stop ;;
  restart) stop && start ;;
  status)
    if pid="$(running_pid)"; then echo "$NAME: running (pid $pid)"; else echo "$NAME: stopped"; exit 3; fi
    ;;
  __run) run ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
"""


# --- standalone scripts shared by all distributions -------------------------------------------------


def render_verify_artifact(artifact: Artifact) -> str:
    """Check one artifact's sha256 on the host; a mismatch names file, expected and actual
    digests and exits 3. Nothing is deleted or changed."""
    return Script(f"Verify artifact {artifact.name} ({artifact.dest}) against its sha256.", None,
                  lib=("verify_artifact",)).render(verify_lines([artifact]) + f'log "artifact {artifact.name} verified"\n')


@dataclass(frozen=True)
class KubeAccess:
    """How a server reaches its own API with admin rights."""

    kubectl: tuple[str, ...]  # argv prefix, e.g. (k3s, kubectl, --kubeconfig=...)
    binary: str  # present when the distribution is installed here
    client_fix: str = "install the cluster's command-line client"  # when kubectl[0] is a separate tool
    define: str = ""  # shell definitions kubectl[0] needs (e.g. a function)

    def prelude(self) -> str:
        """KUBECTL and api_ready; the bodies below expect them."""
        client = self.kubectl[0]
        check = ""
        if not client.startswith("/") and client != "env":
            check = f'command -v {q(client)} >/dev/null 2>&1 || die "{client} is not installed on $HOST (fix: {self.client_fix})"\n'
        return (self.define + f"KUBECTL=({' '.join(q(a) for a in self.kubectl)})\n"
                f"[[ -x {q(self.binary)} ]] || die \"{self.binary} is not installed on $HOST (fix: run this on a server of the site)\"\n"
                + check
                + '# shellcheck disable=SC2329 # called through wait_for\n'
                'api_ready() { "${KUBECTL[@]}" get --raw /readyz; }\n')

    def wait_api(self, timeout_s: int) -> str:
        return f'wait_for {int(timeout_s)} "the Kubernetes API" api_ready || die "the API on $HOST does not answer (fix: check the server\'s service)"\n'

    def node_exists(self) -> str:
        return 'node_exists() { [[ -n "$("${KUBECTL[@]}" get node "$NODE" --ignore-not-found -o name)" ]]; }\n'


def drain_body(access: KubeAccess, node_name: str, timeout_s: int) -> str:
    """Cordon and drain a node before its upgrade. A node not (yet) registered has nothing to
    drain; a node an operator had already cordoned stays cordoned after the upgrade."""
    return f"NODE={q(node_name)}\n" + access.wait_api(min(timeout_s, 120)) + access.node_exists() + f"""
if ! node_exists; then
  log "node $NODE is not registered; nothing to drain"
else
  if [[ "$("${{KUBECTL[@]}}" get node "$NODE" -o jsonpath='{{.spec.unschedulable}}')" != true ]]; then
    "${{KUBECTL[@]}}" annotate node "$NODE" --overwrite {DRAIN_ANNOTATION}=edgefleet >/dev/null
    "${{KUBECTL[@]}}" cordon "$NODE" >/dev/null
  fi
  log "draining $NODE (at most {int(timeout_s)}s)"
  if ! "${{KUBECTL[@]}}" drain "$NODE" --ignore-daemonsets --delete-emptydir-data --timeout={int(timeout_s)}s >&2; then
    die "node $NODE did not drain within {int(timeout_s)}s (fix: check PodDisruptionBudgets and pods without a controller on $NODE; the node stays cordoned)"
  fi
  log "node $NODE drained"
fi
"""


def uncordon_body(access: KubeAccess, node_name: str) -> str:
    """Make a node schedulable again."""
    return f"NODE={q(node_name)}\n" + access.wait_api(120) + access.node_exists() + f"""
if ! node_exists; then
  log "node $NODE is not registered; nothing to uncordon"
else
  "${{KUBECTL[@]}}" uncordon "$NODE" >/dev/null
  "${{KUBECTL[@]}}" annotate node "$NODE" {DRAIN_ANNOTATION}- >/dev/null 2>&1 || true
  log "node $NODE is schedulable"
fi
"""


def node_ready_body(access: KubeAccess, node_name: str, timeout_s: int, *, has_node: bool = True) -> str:
    """Wait until the node is Ready, then uncordon it if an upgrade drain cordoned it."""
    if not has_node:
        return f"NODE={q(node_name)}\n" + access.wait_api(timeout_s) + 'log "$NODE runs no kubelet; the API answers"\n'
    return f"NODE={q(node_name)}\n" + access.wait_api(timeout_s) + f"""
# shellcheck disable=SC2329 # called through wait_for
node_ready() {{
  [[ "$("${{KUBECTL[@]}}" get node "$NODE" -o jsonpath='{{.status.conditions[?(@.type=="Ready")].status}}')" == True ]]
}}
wait_for {int(timeout_s)} "node $NODE" node_ready || die "node $NODE did not become Ready within {int(timeout_s)}s (fix: check the node's service and its kubelet log)"
if [[ "$("${{KUBECTL[@]}}" get node "$NODE" -o jsonpath='{{.metadata.annotations.edgefleet\\.io/cordoned-by}}')" == edgefleet ]]; then
  "${{KUBECTL[@]}}" uncordon "$NODE" >/dev/null
  "${{KUBECTL[@]}}" annotate node "$NODE" {DRAIN_ANNOTATION}- >/dev/null
  log "node $NODE is Ready and uncordoned"
else
  log "node $NODE is Ready"
fi
"""


def remove_node_body(access: KubeAccess, node_name: str, timeout_s: int) -> str:
    """Drain and delete a node leaving the cluster (idempotent)."""
    return f"NODE={q(node_name)}\n" + access.wait_api(min(timeout_s, 120)) + access.node_exists() + f"""
if ! node_exists; then
  log "node $NODE is not registered; nothing to remove"
else
  "${{KUBECTL[@]}}" cordon "$NODE" >/dev/null
  # A node whose kubelet is gone cannot stop its pods: evict them without waiting.
  no_wait=()
  if [[ "$("${{KUBECTL[@]}}" get node "$NODE" -o jsonpath='{{.status.conditions[?(@.type=="Ready")].status}}')" != True ]]; then
    log "node $NODE is not ready: its pods are evicted without waiting for them to stop"
    no_wait=(--skip-wait-for-delete-timeout=1)
  fi
  if ! "${{KUBECTL[@]}}" drain "$NODE" --ignore-daemonsets --delete-emptydir-data --timeout={int(timeout_s)}s "${{no_wait[@]}}" >&2; then
    die "node $NODE did not drain within {int(timeout_s)}s (fix: check PodDisruptionBudgets on $NODE, then retry)"
  fi
  "${{KUBECTL[@]}}" delete node "$NODE" --ignore-not-found --wait=true --timeout={int(timeout_s)}s >/dev/null
  log "node $NODE drained and deleted"
fi
"""


def kube_script(purpose: str, access: KubeAccess, body: str) -> str:
    """A script run on a server with admin access to the API (host name taken at run time)."""
    return Script(purpose, None, lib=("wait",)).render(access.prelude() + body)


def wait_ready_lines(what: str, timeout_s: int) -> str:
    """Wait (bounded) for ``local_ready``; on timeout show the service's last log lines and
    fail naming the host."""
    return f"""if ! wait_for {int(timeout_s)} "{what}" local_ready; then
  svc_logs
  die "{what} on $HOST is not ready after {int(timeout_s)}s (fix: see $(svc_hint))"
fi
log "{what} is ready"
"""


def ready_function(command: str) -> str:
    """``local_ready``: the distribution's readiness test, polled by ``wait_for``."""
    return f"# shellcheck disable=SC2329 # called through wait_for\nlocal_ready() {{ {command}; }}\n"


def ere_literal(path: str) -> str:
    """A path as a bash regular expression matching it literally."""
    return "".join("\\^" if c == "^" else f"[{c}]" if c in ".[]()*+?{}|$\\" else c for c in path)


def render_cat(path: str, what: str, host: str) -> str:
    """Print one file and nothing else (stdout carries only the file)."""
    return Script(f"Print the {what} of {host}; only the file goes to stdout.", host).render(f"""
[[ -s {q(path)} ]] || die "{path} does not exist (fix: install the distribution on {host} first)"
cat -- {q(path)}
""")


def rewrite_kubeconfig(text: str, server_url: str) -> str:
    """The kubeconfig with every cluster's server replaced by ``server_url``; everything else
    (users, credentials, contexts, formatting) is kept as it was."""
    if not re.fullmatch(r"https://[^\s/]+(:\d+)?/?", server_url):
        raise DistributionError("server_url", f"{server_url!r} is not an https URL of an API server",
                                "give https://HOST:6443")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DistributionError("kubeconfig", f"not valid YAML: {exc}", "fetch the admin kubeconfig again") from None
    clusters = data.get("clusters") if isinstance(data, dict) else None
    if not clusters or not all(isinstance(c, dict) and isinstance(c.get("cluster"), dict) and "server" in c["cluster"]
                               for c in clusters):
        raise DistributionError("kubeconfig", "no clusters with a server address", "fetch the admin kubeconfig again")
    pattern = re.compile(r"^(\s*server:[ \t]*)(\S+)[ \t]*$", re.M)
    out, count = pattern.subn(lambda m: m.group(1) + server_url, text)
    parsed = yaml.safe_load(out)
    if count != len(clusters) or any(c["cluster"]["server"] != server_url for c in parsed["clusters"]):
        for c in data["clusters"]:
            c["cluster"]["server"] = server_url
        return yaml_text(data)
    return out


# --- registry mirrors -------------------------------------------------------------------------------


def mirror_host(endpoint: str) -> tuple[str, bool]:
    """``https://mirror:5000`` -> (``mirror:5000``, insecure=False)."""
    m = MIRROR_URL.fullmatch(endpoint)
    if not m:
        raise DistributionError("registry_mirrors", f"{endpoint!r} is not a registry endpoint URL",
                                "write the mirror as https://HOST[:PORT]")
    port = f":{m.group('port')}" if m.group("port") else ""
    return m.group("host") + port, m.group("scheme") == "http"


def check_mirrors(mirrors: Mapping[str, Sequence[str]]) -> None:
    for registry, endpoints in mirrors.items():
        # The registry name becomes a directory name (containerd's certs.d) and a TOML string.
        m = REGISTRY.fullmatch(registry)
        if m is None or not is_dns_name(m.group("host")):
            raise DistributionError("registry_mirrors", f"{registry!r} is not a registry name",
                                    "key mirrors by the registry's host[:port], e.g. docker.io")
        if not endpoints:
            raise DistributionError(f"registry_mirrors.{registry}", "no endpoints", "list at least one mirror URL")
        for e in endpoints:
            mirror_host(e)
