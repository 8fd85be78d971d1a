"""Fleet inventory: the schema of ``sites/*.yaml`` and its loader.

An inventory is data only. :func:`load_inventory` validates one file completely and raises
:class:`InventoryError` listing *every* problem as ``file: field: message (fix: ...)``, so
``pulumi preview`` can refuse an invalid inventory before any resource is registered.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

Topology = Literal["single-node", "ha", "gateway"]
Distribution = Literal["k3s", "k0s", "microshift"]
Arch = Literal["amd64", "arm64"]

# Exact versions only: a channel name or "latest" is not a version. K3s: a release
# (v1.33.4+k3s1) or a build of one exact commit (v1.35.1+k3s-e69d1861).
VERSION_PATTERNS: dict[str, re.Pattern[str]] = {
    "k3s": re.compile(r"^v1\.\d+\.\d+\+k3s(\d+|-[0-9a-f]{8,40})\Z"),
    "k0s": re.compile(r"^v1\.\d+\.\d+\+k0s\.\d+\Z"),
    "microshift": re.compile(r"^4\.\d+\.\d+\Z"),
}
VERSION_EXAMPLES = {"k3s": "v1.33.4+k3s1", "k0s": "v1.33.4+k0s.0", "microshift": "4.19.0"}
SHA256 = re.compile(r"[0-9a-f]{64}")
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
HOST_KEY = re.compile(r"(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) [A-Za-z0-9+/=]{1,4096}"
                      r"( [\x21-\x7e][\x20-\x7e]{0,199})?")
SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
# Every string below reaches a host (a script, a service unit, a configuration file): each
# field accepts only its own syntax, so nothing a shell, systemd or a config parser would
# interpret can get through. Patterns are matched with fullmatch.
DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
DNS_NAME = re.compile(rf"{DNS_LABEL}(\.{DNS_LABEL})*")  # and at most 253 characters: is_dns_name()
LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(rf"({LABEL_NAME.pattern})?")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
ARTIFACT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
REGISTRY = re.compile(rf"(?P<host>{DNS_NAME.pattern})(:(?P<port>[0-9]{{1,5}}))?")
MIRROR_URL = re.compile(rf"(?P<scheme>https?)://(?P<host>{DNS_NAME.pattern}|\[[0-9a-f:]+\])(:(?P<port>[0-9]{{1,5}}))?/?")
HTTPS_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~+%-]+)*/?")
# A distribution flag: --name or --name=value, the value without spaces, quotes, `$`, `%`,
# backslashes or control characters (none of them is needed by a real flag).
FLAG = re.compile(r"--(?P<name>[a-z0-9][a-z0-9-]{0,63})(=(?P<value>[A-Za-z0-9._:/=,@+-]{0,512}))?")
PATH_MAX = 4096
# The one variable an inventory path may name: the project's own cache directory.
CACHE_VAR = "EDGEFLEET_CACHE"

# Flags the drivers render as the hardening baseline: extra_args/agent_args must not override
# them (a command-line flag wins over the configuration file). Sub-options of pass-through
# flags (``--kube-apiserver-arg=anonymous-auth=true``) are listed as ``flag:option``.
BASELINE_FLAGS: dict[str, dict[str, str]] = {
    "k3s": {
        "secrets-encryption": "Secrets encryption at rest", "write-kubeconfig-mode": "the kubeconfig mode 0600",
        "write-kubeconfig": "the kubeconfig path", "write-kubeconfig-group": "the kubeconfig mode 0600",
        "protect-kernel-defaults": "kernel protection", "token": "the join token file",
        "token-file": "the join token file", "agent-token": "the agent token", "agent-token-file": "the agent token",
        "data-dir": "the data directory", "config": "the configuration file", "server": "the join address",
        "node-name": "the node name", "node-ip": "the node address", "cluster-init": "the topology",
        "private-registry": "the registry mirrors file",
        "kube-apiserver-arg:anonymous-auth": "anonymous-auth=false",
        "kube-apiserver-arg:audit-policy-file": "the API audit log", "kube-apiserver-arg:audit-log-path": "the API audit log",
        "kube-apiserver-arg:audit-log-maxage": "the API audit log", "kube-apiserver-arg:audit-log-maxbackup": "the API audit log",
        "kube-apiserver-arg:audit-log-maxsize": "the API audit log",
        "kube-apiserver-arg:admission-control-config-file": "Pod Security admission",
        "kube-apiserver-arg:enable-admission-plugins": "the admission plugins",
        "kube-apiserver-arg:disable-admission-plugins": "the admission plugins",
        "kube-apiserver-arg:encryption-provider-config": "Secrets encryption at rest",
        "kube-apiserver-arg:authorization-mode": "API authorization",
        "kubelet-arg:anonymous-auth": "the kubelet's anonymous-auth=false",
        "kubelet-arg:authorization-mode": "kubelet authorization", "kubelet-arg:read-only-port": "the kubelet read-only port",
        "kubelet-arg:protect-kernel-defaults": "kernel protection",
    },
    "k0s": {
        "data-dir": "the data directory", "config": "the ClusterConfig", "token-file": "the join token file",
        "kubelet-extra-args": "the kubelet flags (node address, kernel protection)", "labels": "the node labels",
        "taints": "the node taints", "profile": "the worker profile",
    },
}


# Latency budgets per class (ms), from the use cases the fleet serves: closed-loop industrial
# control ~10 ms at the edge, video analytics 30-50 ms, batch scoring is not interactive.
LATENCY_BUDGET_MS = {"control": 10.0, "video": 50.0, "batch": 1000.0}


class InventoryError(Exception):
    """An inventory that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _custom(kind: str, message: str, fix: str) -> PydanticCustomError:
    return PydanticCustomError(kind, "{message} (fix: {fix})", {"message": message, "fix": fix})


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


def _cache_dir() -> str:
    return os.environ.get(CACHE_VAR) or str(Path.home() / ".cache/edgefleet")


_VAR = re.compile(r"\$\{([^}]*)\}")


def path_problem(value: str) -> tuple[str, str] | None:
    """Why ``value`` cannot be an inventory path (message, fix), or None. Only ``~`` and ``${EDGEFLEET_CACHE}``
    expand: any other variable could carry a secret of the environment running Pulumi."""
    if not value or len(value) > PATH_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return (f"{shown(value)} is not a usable path",
                f"write a path of at most {PATH_MAX} characters without control characters")
    others = sorted({m.group(1) for m in _VAR.finditer(value)} - {CACHE_VAR})
    if others or "$" in _VAR.sub("", value):
        named = ", ".join("${" + v + "}" for v in others) or "'$'"
        return (f"{shown(value)} names {named}; inventory paths may use only ~ and ${{{CACHE_VAR}}}",
                f"write the path itself, or put the file under ${{{CACHE_VAR}}}")
    return None


def expand_path(value: str, base: Path) -> Path:
    """``~`` and ``${EDGEFLEET_CACHE}`` expanded (default ~/.cache/edgefleet); relative paths
    are relative to the inventory file. Any other variable is refused (see path_problem)."""
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"{problem[0]} (fix: {problem[1]})")
    expanded = Path(os.path.expanduser(value).replace("${" + CACHE_VAR + "}", _cache_dir()))
    return expanded if expanded.is_absolute() else (base / expanded)


def _check_path(value: str | None) -> str | None:
    if value is not None and (problem := path_problem(value)) is not None:
        raise _custom("path", *problem)
    return value


def _paths(*fields: str) -> Any:
    """A field validator refusing unusable inventory paths (see path_problem)."""
    return field_validator(*fields)(classmethod(lambda cls, v: _check_path(v)))


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
            out.append((i, f"{shown(flag)} is not a {distribution} flag",
                        "write --name or --name=value; a value uses only letters, digits and . _ : / = , @ + -, "
                        "at most 512 characters"))
            continue
        name, value = m.group("name"), m.group("value") or ""
        option = value.split("=", 1)[0].lstrip("-")
        protects = baseline.get(name) or baseline.get(f"{name}:{option}")
        if protects:
            what = f"--{name}" + (f"={option}" if f"{name}:{option}" in baseline else "")
            out.append((i, f"{shown(flag)} overrides {what}, which edgefleet renders for {protects}",
                        "remove the flag; the hardening baseline is not configurable per site"))
    return out


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SecretRef(_Model):
    """Where a secret comes from: a file on the machine running Pulumi, or a Pulumi config
    secret (``pulumi config set --secret KEY``). Either way it becomes a Pulumi secret."""

    file: str | None = None
    config: str | None = None

    _file = _paths("file")

    @field_validator("config")
    @classmethod
    def _config_key(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}", v):
            raise _custom("config", f"{shown(v)} is not a Pulumi config key", "use letters, digits and _ . : -, e.g. sshKey")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.file is None) == (self.config is None):
            raise _custom("secret_ref", "exactly one of 'file' or 'config' must be set",
                          "write `private_key: {file: ~/.ssh/id_ed25519}` or `private_key: {config: sshKey}`")
        return self


class Ssh(_Model):
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    private_key: SecretRef | None = None
    private_key_passphrase: SecretRef | None = None  # for an encrypted private key
    host_key: str | None = None
    host_key_file: str | None = None

    _host_key_file = _paths("host_key_file")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not SSH_USER.fullmatch(v):
            raise _custom("user", f"{shown(v)} is not a user name", "use lowercase letters, digits, '_' and '-', at most 32 characters")
        return v

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        if v is not None and not HOST_KEY.fullmatch(v.strip()):
            raise _custom("host_key", f"{shown(v, 40)} is not an OpenSSH public host key",
                          "paste the host's key as `ssh-ed25519 AAAA...` (ssh-keyscan -t ed25519 HOST)")
        return v.strip() if v else v


class Gpu(_Model):
    vendor: Literal["nvidia", "amd", "intel"]
    count: int = Field(ge=1, le=16)


class Host(_Model):
    name: str
    address: str
    role: Literal["server", "agent"] = "server"
    arch: Arch | None = None  # detected over SSH when not declared
    ssh: Ssh = Ssh()
    labels: dict[str, str] = {}
    taints: list[str] = []
    gpu: Gpu | None = None
    # Prod: the host's stateful resources are protected; `true` lifts that, so that removing
    # the host from the inventory in a later change may drain and uninstall it.
    decommission: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise _custom("name", f"{shown(v)} is not a valid host name",
                          "use lowercase letters, digits and '-', at most 63 characters")
        return v

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not is_ip(v):
            raise _custom("address", f"{shown(v)} is not an IP address", "write the host's management IP, e.g. 10.0.0.11")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if bad_label_key(key):
                raise _custom("label", f"{shown(key)} is not a Kubernetes label key",
                              "write [prefix/]name: a DNS name prefix, a name of at most 63 letters, digits, '-', '_', '.'")
            if not LABEL_VALUE.fullmatch(value):
                raise _custom("label", f"label {key}: {shown(value)} is not a Kubernetes label value",
                              "use at most 63 letters, digits, '-', '_' and '.', starting and ending alphanumeric")
        return v

    @field_validator("taints")
    @classmethod
    def _taints(cls, v: list[str]) -> list[str]:
        for t in v:
            if not taint_ok(t):
                raise _custom("taint", f"{shown(t)} is not a taint",
                              "write key=value:Effect (Kubernetes label syntax) with Effect NoSchedule, PreferNoSchedule or NoExecute")
        return v


class Artifact(_Model):
    """An air-gap artifact: fetched from ``source`` (a local path or an https URL) and
    verified against ``sha256`` on the host before anything uses it."""

    name: str
    arch: Arch = "amd64"
    source: str
    sha256: str | None = None
    sha256_from: str | None = None  # a `sha256sum` checksums file that lists the artifact

    _sha256_from = _paths("sha256_from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The name becomes part of a path on the host (e.g. the image directory).
        if not ARTIFACT_NAME.fullmatch(v):
            raise _custom("artifact_name", f"{shown(v)} is not an artifact name",
                          "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("https://"):
            if not HTTPS_URL.fullmatch(v) or len(v) > 2048:
                raise _custom("source", f"{shown(v)} is not an https URL of a file",
                              "write https://HOST[:PORT]/PATH with letters, digits and . _ ~ + % - in the path")
        else:
            _check_path(v)
        if not FILE_NAME.fullmatch(v.rstrip("/").rsplit("/", 1)[-1]):
            raise _custom("source", f"{shown(v)} does not end in a plain file name",
                          "name the release file itself (letters, digits, '.', '_', '+', '-')")
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.fullmatch(v):
            raise _custom("sha256", f"{shown(v)} is not a sha256 hex digest", "write the 64 lowercase hex characters printed by `sha256sum FILE`")
        return v

    @model_validator(mode="after")
    def _has_sum(self) -> Artifact:
        if (self.sha256 is None) == (self.sha256_from is None):
            raise _custom("artifact_sum", "exactly one of 'sha256' or 'sha256_from' must be set",
                          "every artifact is verified before use: give its sha256 or a checksums file")
        return self


class DistributionSpec(_Model):
    name: Distribution = "k3s"
    version: str
    service_manager: Literal["systemd", "openrc", "supervised"] = "systemd"
    disable_agent: bool = False  # servers without kubelet (dedicated control plane)
    extra_args: list[str] = []  # extra flags for servers (controllers)
    agent_args: list[str] = []  # extra flags for agents (workers), e.g. an external CRI endpoint
    protect_kernel_defaults: bool = True  # kubelet refuses kernel settings other than its own (CIS)
    pull_secret: SecretRef | None = None  # MicroShift: the Red Hat pull secret CRI-O uses

    @field_validator("pull_secret")
    @classmethod
    def _pull_secret_for_microshift(cls, v: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        name = info.data.get("name", "k3s")
        if v is not None and name != "microshift":
            raise _custom("pull_secret", f"{name} takes no pull secret (only MicroShift does)",
                          "remove pull_secret, or give registry credentials through registry_mirrors")
        return v

    @field_validator("extra_args", "agent_args")
    @classmethod
    def _flags(cls, v: list[str], info: ValidationInfo) -> list[str]:
        name = info.data.get("name", "k3s")
        if v and name == "microshift":
            raise _custom("flags", "MicroShift takes its settings from config.yaml, not flags", f"remove {info.field_name}")
        for i, message, fix in flag_problems(v, name)[:1]:
            raise PydanticCustomError("flags", "[{index}] {message} (fix: {fix})", {"index": i, "message": message, "fix": fix})
        return v

    @field_validator("version")
    @classmethod
    def _exact_version(cls, v: str, info: ValidationInfo) -> str:
        name = info.data.get("name", "k3s")
        if not VERSION_PATTERNS[name].match(v):
            raise _custom("version", f"{shown(v)} is not an exact {name} version",
                          f"pin a release such as {VERSION_EXAMPLES[name]!r}; channels and 'latest' are not allowed")
        return v


class Network(_Model):
    cluster_cidr: str = "10.42.0.0/16"
    service_cidr: str = "10.43.0.0/16"

    @field_validator("cluster_cidr", "service_cidr")
    @classmethod
    def _cidr(cls, v: str) -> str:
        try:
            ipaddress.ip_network(v, strict=True)
            if "%" in v:
                raise ValueError("a scope is not part of a network")
        except ValueError as exc:
            raise _custom("cidr", f"{shown(v)} is not a valid CIDR ({shown(str(exc), 80)[1:-1]})",
                          "write a network address with its prefix, e.g. 10.42.0.0/16") from None
        return v

    @field_validator("service_cidr")
    @classmethod
    def _no_overlap(cls, v: str, info: ValidationInfo) -> str:
        if "cluster_cidr" in info.data:
            a, b = ipaddress.ip_network(info.data["cluster_cidr"]), ipaddress.ip_network(v)
            if a.version == b.version and a.overlaps(b):
                raise _custom("cidr_overlap", f"{v!r} overlaps cluster_cidr {a}", "choose two disjoint ranges, e.g. 10.42.0.0/16 and 10.43.0.0/16")
        return v


class Workload(_Model):
    """A model served on the site (see models/catalog.yaml)."""

    model: str
    version: str
    replicas: int = Field(1, ge=1, le=50)
    max_replicas: int | None = Field(None, ge=1, le=100)
    gpu: bool = False
    clients: list[str] = []  # namespaces allowed to call the model server


class SimulatedNodes(_Model):
    """Lab only: kwok registers ``count`` fake worker nodes next to the first server, for
    hosts without a container runtime (see components/simulated.py). Refused in prod."""

    count: int = Field(2, ge=1, le=20)
    kwok: Artifact
    stages: str  # kwok Stage resources (node and pod lifecycle)

    _stages = _paths("stages")


class Site(_Model):
    name: str
    topology: Topology
    distribution: DistributionSpec
    hardware_class: Literal["x86-server", "x86-edge", "arm64-edge", "gateway"] = "x86-edge"
    latency_class: Literal["control", "video", "batch"] = "control"
    wave: int = Field(1, ge=0, le=100)
    network: Network = Network()
    registration_address: str | None = None
    tls_sans: list[str] = []
    artifacts: list[Artifact] = []
    registry_mirrors: dict[str, list[str]] = {}
    monitoring_namespace: str | None = None
    vpa: bool = False
    workloads: list[Workload] = []
    simulated_nodes: SimulatedNodes | None = None
    hosts: Annotated[list[Host], Field(min_length=1)]
    # Rollouts skip a paused site or one in maintenance and report it (the fleet orchestrator).
    paused: bool = False
    maintenance: bool = False
    labels: dict[str, str] = {}  # selectors for fleet commands (Kubernetes label syntax)

    _labels = field_validator("labels")(classmethod(lambda cls, v: Host._labels(v)))

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise _custom("name", f"{shown(v)} is not a valid site name", "use lowercase letters, digits and '-', at most 63 characters")
        return v

    @field_validator("registration_address")
    @classmethod
    def _reg(cls, v: str | None) -> str | None:
        if v is not None and not (is_ip(v) or is_dns_name(v)):
            raise _custom("address", f"{shown(v)} is neither an IP address nor a DNS name", "write the load balancer or VIP address the servers register through")
        return v

    @field_validator("tls_sans")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        for san in v:
            if not (is_ip(san) or is_dns_name(san)):
                raise _custom("tls_san", f"{shown(san)} is neither an IP address nor a DNS name",
                              "list the extra names of the API server certificate, e.g. k8s.site.example or 10.0.0.10")
        return v

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for registry, endpoints in v.items():
            m = REGISTRY.fullmatch(registry)
            if m is None or not is_dns_name(m.group("host")) or not 0 < int(m.group("port") or 443) < 65536:
                raise _custom("registry", f"{shown(registry)} is not a registry name",
                              "key each mirror list by the registry's host[:port], e.g. docker.io or registry.local:5000")
            if not endpoints:
                raise _custom("registry", f"registry {registry} has no mirror endpoints", "list at least one mirror URL")
            for e in endpoints:
                m = MIRROR_URL.fullmatch(e)
                if m is None or not 0 < int(m.group("port") or 443) < 65536 or (
                        m.group("host").startswith("[") and not is_ip(m.group("host")[1:-1])):
                    raise _custom("mirror", f"registry {registry}: {shown(e)} is not a mirror URL",
                                  "write https://HOST[:PORT] (http:// only for a lab mirror)")
        return v

    @property
    def servers(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "server"]

    @property
    def agents(self) -> list[Host]:
        return [h for h in self.hosts if h.role == "agent"]

    @property
    def latency_budget_ms(self) -> float:
        return LATENCY_BUDGET_MS[self.latency_class]


AMOUNT = re.compile(r"(?P<n>[0-9]{1,6})(?P<pct>%?)")
DURATION = re.compile(r"(?P<n>[0-9]{1,6})(?P<unit>[smh])")
DURATION_S = {"s": 1, "m": 60, "h": 3600}


def _amount(v: int | str, field: str, least: int) -> int | str:
    """A count (int) or a percentage of the sites ("25%")."""
    m = AMOUNT.fullmatch(str(v)) if isinstance(v, (int, str)) and not isinstance(v, bool) else None
    if m is None or int(m.group("n")) < least or (m.group("pct") and int(m.group("n")) > 100):
        raise _custom("amount", f"{shown(str(v))} is not a count of at least {least} or a percentage",
                      f"write a number such as {max(least, 1)} or a percentage such as '25%'")
    return f"{int(m.group('n'))}%" if m.group("pct") else int(m.group("n"))


def _duration(v: int | str, limit_s: int) -> int:
    """Seconds, from a number or a duration such as '90s', '5m', '1h'."""
    m = DURATION.fullmatch(v) if isinstance(v, str) else None
    seconds = v if isinstance(v, int) and not isinstance(v, bool) else (
        int(m.group("n")) * DURATION_S[m.group("unit")] if m else None)
    if seconds is None or not 0 <= seconds <= limit_s:
        raise _custom("duration", f"{shown(str(v))} is not a duration of at most {limit_s} s",
                      "write seconds (90) or a duration such as '90s', '5m', '1h'")
    return seconds


class Rollout(_Model):
    """How fleet commands roll a change out (the shape of Open Cluster Management's progressive
    strategy): waves in order (each site's ``wave``), at most ``max_concurrency`` sites of a
    wave at once, and the rollout stops once more than ``max_failures`` sites failed (per wave,
    or over the whole rollout with ``failure_scope: rollout``); a mandatory wave (the canary
    wave 0 by default) tolerates no failure. A site counts as done once its update succeeded and
    its health gate held for ``min_success_time``; a site not done within ``progress_deadline``
    failed. Percentages are of the wave's sites (or of the rollout's with scope rollout):
    concurrency rounds up (at least 1), failures round down."""

    max_concurrency: int | str = "25%"
    max_failures: int | str = 0
    failure_scope: Literal["wave", "rollout"] = "wave"
    mandatory_waves: list[int] = [0]
    min_success_time: int | str = 0
    progress_deadline: int | str = 1800
    preflight_timeout: int | str = 10  # dial budget that classifies a site offline (at most 60 s)
    health_gate: bool = True

    _concurrency = field_validator("max_concurrency")(classmethod(lambda cls, v: _amount(v, "max_concurrency", 1)))
    _failures = field_validator("max_failures")(classmethod(lambda cls, v: _amount(v, "max_failures", 0)))
    _soak = field_validator("min_success_time")(classmethod(lambda cls, v: _duration(v, 24 * 3600)))
    _deadline = field_validator("progress_deadline")(classmethod(lambda cls, v: _duration(v, 24 * 3600)))
    _preflight = field_validator("preflight_timeout")(classmethod(lambda cls, v: _duration(v, 60)))

    @field_validator("mandatory_waves")
    @classmethod
    def _waves(cls, v: list[int]) -> list[int]:
        if any(w < 0 or w > 100 for w in v):
            raise _custom("wave", f"{v} names a wave outside 0..100", "list waves between 0 and 100, e.g. [0]")
        return sorted(set(v))

    @field_validator("progress_deadline", "preflight_timeout")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise _custom("duration", "must be at least 1 s", "give a deadline such as '30m' (progress) or 10 (preflight)")
        return v


class Inventory(_Model):
    fleet: str
    environment: Literal["dev", "prod"]
    rollout: Rollout = Rollout()
    sites: Annotated[list[Site], Field(min_length=1)]

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise _custom("name", f"{shown(v)} is not a valid fleet name", "use lowercase letters, digits and '-', at most 63 characters")
        return v


@dataclass(frozen=True)
class LoadedInventory:
    """A validated inventory and where it came from (paths resolve relative to it)."""

    path: Path
    inventory: Inventory

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve(self, value: str) -> Path:
        return expand_path(value, self.base)


def _loc(loc: tuple[Any, ...], data: Any) -> str:
    """pydantic's location tuple as ``sites[0].hosts[2].address`` (names, not indices, for
    dict keys)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _message(err: dict[str, Any]) -> str:
    """One pydantic error as ``<value>: <what is wrong> (fix: <what to do>)``."""
    kind, msg = err["type"], err["msg"]
    if kind == "missing":
        return "is required (fix: add this field)"
    if kind == "extra_forbidden":
        return "is not a known field (fix: check the spelling against the inventory format in README.md)"
    value = err.get("input")
    text = shown(value) if isinstance(value, str) else repr(value)
    if kind == "literal_error":
        return f"{text} is not allowed (fix: use one of {err['ctx']['expected']})"
    if "(fix:" in msg:  # our own validators already name value and fix
        return msg
    prefix = "" if isinstance(value, (dict, list)) else f"{text}: "
    return f"{prefix}{msg} (fix: correct the value; see the inventory format in README.md)"


def _cross_checks(inv: Inventory) -> list[tuple[str, str]]:
    """Rules that span fields: topology shape, uniqueness, version format, key files."""
    problems: list[tuple[str, str]] = []
    seen_sites: dict[str, int] = {}
    seen_hosts: dict[str, str] = {}
    seen_addrs: dict[str, str] = {}
    for i, site in enumerate(inv.sites):
        at = f"sites[{i}]"
        if site.name in seen_sites:
            problems.append((f"{at}.name", f"site name {site.name!r} is already used by sites[{seen_sites[site.name]}] (fix: give every site a unique name)"))
        seen_sites.setdefault(site.name, i)
        n_servers, n_agents = len(site.servers), len(site.agents)
        if site.topology == "ha" and n_servers != 3:
            problems.append((f"{at}.hosts", f"topology 'ha' needs exactly 3 servers, found {n_servers} (fix: mark 3 hosts `role: server` (embedded etcd); extra hosts are agents)"))
        if site.topology == "single-node" and n_servers != 1:
            problems.append((f"{at}.hosts", f"topology 'single-node' needs exactly 1 server, found {n_servers} (fix: mark one host `role: server`; others join as agents)"))
        if site.topology == "gateway" and (len(site.hosts) != 1 or n_servers != 1):
            problems.append((f"{at}.hosts", f"topology 'gateway' is one constrained host, found {len(site.hosts)} host(s) (fix: keep a single host with `role: server`)"))
        if site.distribution.name == "microshift" and site.topology == "ha":
            problems.append((f"{at}.distribution.name", "MicroShift runs single-node only (fix: use k3s or k0s for an 'ha' site)"))
        for j, host in enumerate(site.hosts):
            hat = f"{at}.hosts[{j}]"
            if host.name in seen_hosts:
                problems.append((f"{hat}.name", f"host name {host.name!r} is already used in {seen_hosts[host.name]} (fix: host names are unique across the fleet)"))
            seen_hosts.setdefault(host.name, f"site {site.name!r}")
            if host.address in seen_addrs:
                problems.append((f"{hat}.address", f"address {host.address} is already used by host {seen_addrs[host.address]!r} (fix: every host needs its own address)"))
            seen_addrs.setdefault(host.address, host.name)
            if host.ssh.host_key is None and host.ssh.host_key_file is None:
                problems.append((f"{hat}.ssh.host_key", "no SSH host key is pinned (fix: set `host_key: ssh-ed25519 AAAA...` or `host_key_file:` so the connection cannot be intercepted)"))
            if host.ssh.private_key is None:
                problems.append((f"{hat}.ssh.private_key", "no SSH private key reference (fix: set `private_key: {file: PATH}` or `{config: KEY}` here or in `defaults.ssh`)"))
        if site.distribution.disable_agent and not site.agents and site.simulated_nodes is None:
            problems.append((f"{at}.distribution.disable_agent", f"site {site.name!r} would have no node to run workloads: its servers run without the agent and it has no agents (fix: drop disable_agent, or add agents)"))
        if site.simulated_nodes is not None and inv.environment == "prod":
            problems.append((f"{at}.simulated_nodes", "simulated (kwok) nodes are for the lab only (fix: remove `simulated_nodes` from prod sites)"))
        for j, wl in enumerate(site.workloads):
            if wl.gpu and not any(h.gpu for h in site.hosts):
                problems.append((f"{at}.workloads[{j}].gpu", f"model {wl.model!r} asks for a GPU but no host of site {site.name!r} declares one (fix: add `gpu: {{vendor: nvidia, count: 1}}` to a host or set `gpu: false`)"))
            if wl.max_replicas is not None and wl.max_replicas < wl.replicas:
                problems.append((f"{at}.workloads[{j}].max_replicas", f"max_replicas {wl.max_replicas} is below replicas {wl.replicas} (fix: set max_replicas >= replicas)"))
    return problems


# Messages about files show each path as the inventory writes it, never its expansion.


def _private_file(ref: SecretRef | None, base: Path, at: str, fix: str) -> list[tuple[str, str]]:
    """A secret kept in a file must be readable by us and by nobody else."""
    if ref is None or ref.file is None:
        return []
    p = expand_path(ref.file, base)
    if not p.is_file() or not os.access(p, os.R_OK):
        return [(at, f"{shown(ref.file, 200)} is not a readable file (fix: {fix})")]
    if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [(at, f"{shown(ref.file, 200)} is readable by group or others (fix: chmod 600 {ref.file})")]
    return []


def _trusted_file(value: str, base: Path) -> str | None:
    """Why a file that pins trust (a host key) cannot be trusted, or None: others could
    rewrite it and so redirect the connection to a host of their choice."""
    p = expand_path(value, base)
    if p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{shown(value, 200)} is writable by group or others (fix: chmod go-w {value})"
    return None


def _file_checks(inv: Inventory, base: Path) -> list[tuple[str, str]]:
    """Secret, key and checksum files named by the inventory must exist; secrets must be private."""
    problems: list[tuple[str, str]] = []
    for i, site in enumerate(inv.sites):
        problems += _private_file(site.distribution.pull_secret, base, f"sites[{i}].distribution.pull_secret.file",
                                  "save the pull secret from console.redhat.com there, or use `{config: KEY}`")
        for j, host in enumerate(site.hosts):
            at = f"sites[{i}].hosts[{j}].ssh"
            problems += _private_file(host.ssh.private_key, base, f"{at}.private_key.file",
                                      "create the key or point to it; for the lab run `lab/lab keys`")
            problems += _private_file(host.ssh.private_key_passphrase, base, f"{at}.private_key_passphrase.file",
                                      "write the key's passphrase there, or use `{config: KEY}`")
            if host.ssh.host_key_file is not None:
                written = host.ssh.host_key_file
                p = expand_path(written, base)
                if not p.is_file():
                    problems.append((f"{at}.host_key_file", f"{shown(written, 200)} does not exist (fix: write the host's public key there; for the lab run `lab/lab keys`)"))
                elif (unsafe := _trusted_file(written, base)) is not None:
                    problems.append((f"{at}.host_key_file", unsafe))
                elif not HOST_KEY.fullmatch(p.read_text().strip()):
                    problems.append((f"{at}.host_key_file", f"{shown(written, 200)} does not hold an OpenSSH public host key (fix: write the output of `ssh-keyscan -t ed25519 HOST` without the host name)"))
        sim = [(f"sites[{i}].simulated_nodes.kwok", site.simulated_nodes.kwok)] if site.simulated_nodes else []
        if site.simulated_nodes and not expand_path(site.simulated_nodes.stages, base).is_file():
            problems.append((f"sites[{i}].simulated_nodes.stages", f"{shown(site.simulated_nodes.stages, 200)} does not exist (fix: run scripts/bootstrap kwok)"))
        for at, art in [(f"sites[{i}].artifacts[{j}]", a) for j, a in enumerate(site.artifacts)] + sim:
            if art.sha256_from is not None:
                p = expand_path(art.sha256_from, base)
                if not p.is_file():
                    problems.append((f"{at}.sha256_from", f"{shown(art.sha256_from, 200)} does not exist (fix: point to the release's checksums file, or run scripts/bootstrap for the lab build)"))
                elif artifact_sha256(art, base) is None:
                    problems.append((f"{at}.sha256_from", f"{shown(art.sha256_from, 200)} lists no checksum for {Path(art.source).name!r} (fix: use the checksums file of this release)"))
            if not art.source.startswith("https://"):
                p = expand_path(art.source, base)
                if not p.is_file():
                    problems.append((f"{at}.source", f"{shown(art.source, 200)} does not exist (fix: download the release artifact to this path or use an https:// URL)"))
    return problems


def artifact_sha256(art: Artifact, base: Path) -> str | None:
    """The expected digest of an artifact, read from its checksums file when needed."""
    if art.sha256 is not None:
        return art.sha256
    assert art.sha256_from is not None
    wanted = Path(art.source).name
    for line in expand_path(art.sha256_from, base).read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*./") == wanted and SHA256.fullmatch(parts[0]):
            return parts[0]
    return None


def _apply_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``defaults.ssh`` fills each host's ssh block (host values win)."""
    defaults = raw.pop("defaults", None) or {}
    ssh_defaults = defaults.get("ssh", {}) if isinstance(defaults, dict) else {}
    for site in raw.get("sites") or []:
        if not isinstance(site, dict):
            continue
        for host in site.get("hosts") or []:
            if isinstance(host, dict) and isinstance(ssh_defaults, dict):
                host["ssh"] = {**ssh_defaults, **(host.get("ssh") or {})}
    return raw


def _display(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML was built with it (a large inventory
    parses several times faster). libyaml words syntax errors more tersely, so a document it
    refuses is parsed again by the pure-Python parser, whose error names the offending token."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506 - CSafeLoader is the safe loader
    except yaml.YAMLError:
        return yaml.safe_load(text)


def load_inventory(path: str | Path, *, check_files: bool = True) -> LoadedInventory:
    """Load and validate an inventory file; raise :class:`InventoryError` with every problem."""
    path = Path(path)
    shown = _display(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InventoryError([f"{shown}: cannot read the inventory: {exc.strerror} (fix: check the `edgefleet:inventory` config value)"]) from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise InventoryError([f"{shown}: {where}invalid YAML: {getattr(exc, 'problem', exc)} (fix: correct the YAML syntax)"]) from None
    if not isinstance(raw, dict):
        raise InventoryError([f"{shown}: (top level): expected a mapping with `fleet`, `environment` and `sites` (fix: see the inventory format in README.md)"])
    raw = _apply_defaults(raw)
    try:
        inv = Inventory.model_validate(raw)
    except ValidationError as exc:
        raise InventoryError([f"{shown}: {_loc(e['loc'], raw)}: {_message(e)}" for e in exc.errors()]) from None
    problems = _cross_checks(inv)
    if check_files:
        problems += _file_checks(inv, path.parent)
    if problems:
        raise InventoryError([f"{shown}: {field}: {msg}" for field, msg in problems])
    return LoadedInventory(path=path.resolve(), inventory=inv)
