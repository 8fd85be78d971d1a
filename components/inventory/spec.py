"""The schema of ``sites/*.yaml``: what each field of an inventory may hold.

Every string that reaches a host accepts only its own syntax (the patterns the renderers share
are in components.contract), so nothing a shell, systemd or a configuration parser would
interpret gets through; each validator says what is wrong and what to write instead.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from components.contract import (
    ARTIFACT_NAME,
    LABEL_VALUE,
    LATENCY_BUDGET_MS,
    MIRROR_URL,
    REGISTRY,
    VERSION_EXAMPLES,
    VERSION_PATTERNS,
    bad_label_key,
    flag_problems,
    is_dns_name,
    is_ip,
    shown,
    taint_ok,
)
from components.inventory.paths import check_path, path_fields
from components.schema import StrictModel, checked_name, checked_sha256, custom_error, exactly_one

Topology = Literal["single-node", "ha", "gateway"]
Distribution = Literal["k3s", "k0s", "microshift"]
Arch = Literal["amd64", "arm64"]

# The syntax of fields only the inventory reads (what reaches the renderers too is in
# components.contract). Patterns are matched with fullmatch.
HOST_KEY = re.compile(
    r"(ssh-ed25519|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|ssh-rsa) [A-Za-z0-9+/=]{1,4096}"
    r"( [\x21-\x7e][\x20-\x7e]{0,199})?"
)
SSH_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
HTTPS_URL = re.compile(r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~+%-]+)*/?")


class SecretRef(StrictModel):
    """Where a secret comes from: a file on the machine running Pulumi, or a Pulumi config
    secret (``pulumi config set --secret KEY``). Either way it becomes a Pulumi secret."""

    file: str | None = None
    config: str | None = None

    _file = path_fields("file")

    @field_validator("config")
    @classmethod
    def _config_key(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.:-]{0,127}", v):
            raise custom_error(
                "config", f"{shown(v)} is not a Pulumi config key", "use letters, digits and _ . : -, e.g. sshKey"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        exactly_one(
            self,
            "file",
            "config",
            "secret_ref",
            "write `private_key: {file: ~/.ssh/id_ed25519}` or `private_key: {config: sshKey}`",
        )
        return self


class Ssh(StrictModel):
    user: str = "root"
    port: int = Field(22, ge=1, le=65535)
    private_key: SecretRef | None = None
    private_key_passphrase: SecretRef | None = None  # for an encrypted private key
    host_key: str | None = None
    host_key_file: str | None = None

    _host_key_file = path_fields("host_key_file")

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not SSH_USER.fullmatch(v):
            raise custom_error(
                "user",
                f"{shown(v)} is not a user name",
                "use lowercase letters, digits, '_' and '-', at most 32 characters",
            )
        return v

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, v: str | None) -> str | None:
        if v is not None and not HOST_KEY.fullmatch(v.strip()):
            raise custom_error(
                "host_key",
                f"{shown(v, 40)} is not an OpenSSH public host key",
                "paste the host's key as `ssh-ed25519 AAAA...` (ssh-keyscan -t ed25519 HOST)",
            )
        return v.strip() if v else v


class Gpu(StrictModel):
    vendor: Literal["nvidia", "amd", "intel"]
    count: int = Field(ge=1, le=16)


class Host(StrictModel):
    name: str
    address: str
    role: Literal["server", "agent"] = "server"
    arch: Arch | None = None  # amd64 when not declared; the install script refuses a host of another arch
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
        return checked_name(v, "host")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not is_ip(v):
            raise custom_error(
                "address", f"{shown(v)} is not an IP address", "write the host's management IP, e.g. 10.0.0.11"
            )
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if bad_label_key(key):
                raise custom_error(
                    "label",
                    f"{shown(key)} is not a Kubernetes label key",
                    "write [prefix/]name: a DNS name prefix, a name of at most 63 letters, digits, '-', '_', '.'",
                )
            if not LABEL_VALUE.fullmatch(value):
                raise custom_error(
                    "label",
                    f"label {key}: {shown(value)} is not a Kubernetes label value",
                    "use at most 63 letters, digits, '-', '_' and '.', starting and ending alphanumeric",
                )
        return v

    @field_validator("taints")
    @classmethod
    def _taints(cls, v: list[str]) -> list[str]:
        for t in v:
            if not taint_ok(t):
                raise custom_error(
                    "taint",
                    f"{shown(t)} is not a taint",
                    "write key=value:Effect (Kubernetes label syntax) with Effect NoSchedule, PreferNoSchedule "
                    "or NoExecute",
                )
        return v


class ArtifactSpec(StrictModel):
    """An air-gap artifact as the inventory declares it: fetched from ``source`` (a local path
    or an https URL) and verified against ``sha256`` on the host before anything uses it."""

    name: str
    arch: Arch = "amd64"
    source: str
    sha256: str | None = None
    sha256_from: str | None = None  # a `sha256sum` checksums file that lists the artifact

    _sha256_from = path_fields("sha256_from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The name becomes part of a path on the host (e.g. the image directory).
        if not ARTIFACT_NAME.fullmatch(v):
            raise custom_error(
                "artifact_name",
                f"{shown(v)} is not an artifact name",
                "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
            )
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.startswith("https://"):
            if not HTTPS_URL.fullmatch(v) or len(v) > 2048:
                raise custom_error(
                    "source",
                    f"{shown(v)} is not an https URL of a file",
                    "write https://HOST[:PORT]/PATH with letters, digits and . _ ~ + % - in the path",
                )
        else:
            check_path(v)
        if not FILE_NAME.fullmatch(v.rstrip("/").rsplit("/", 1)[-1]):
            raise custom_error(
                "source",
                f"{shown(v)} does not end in a plain file name",
                "name the release file itself (letters, digits, '.', '_', '+', '-')",
            )
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        return v if v is None else checked_sha256(v, "FILE")

    @model_validator(mode="after")
    def _has_sum(self) -> ArtifactSpec:
        exactly_one(
            self,
            "sha256",
            "sha256_from",
            "artifact_sum",
            "every artifact is verified before use: give its sha256 or a checksums file",
        )
        return self


class DistributionSpec(StrictModel):
    name: Distribution = "k3s"
    version: str
    service_manager: Literal["systemd", "openrc", "supervised"] = "systemd"
    disable_agent: bool = False  # servers without kubelet (dedicated control plane)
    extra_args: list[str] = []  # extra flags for servers (controllers)
    agent_args: list[str] = []  # extra flags for agents (workers), e.g. an external CRI endpoint
    protect_kernel_defaults: bool = True  # kubelet refuses kernel settings other than its own (CIS)
    # For hosts whose runtime may not lower oom_score_adj (unprivileged containers, the lab).
    restrict_oom_score_adj: bool = False
    pull_secret: SecretRef | None = None  # MicroShift: the Red Hat pull secret CRI-O uses

    @field_validator("pull_secret")
    @classmethod
    def _pull_secret_for_microshift(cls, v: SecretRef | None, info: ValidationInfo) -> SecretRef | None:
        name = info.data.get("name", "k3s")
        if v is not None and name != "microshift":
            raise custom_error(
                "pull_secret",
                f"{name} takes no pull secret (only MicroShift does)",
                "remove pull_secret, or give registry credentials through registry_mirrors",
            )
        return v

    @field_validator("restrict_oom_score_adj")
    @classmethod
    def _oom_for_k3s(cls, v: bool, info: ValidationInfo) -> bool:
        name = info.data.get("name", "k3s")
        if v and name != "k3s":
            raise custom_error(
                "restrict_oom_score_adj",
                f"only the k3s driver renders this containerd setting, not {name}",
                "remove restrict_oom_score_adj, or set it in the runtime's own configuration",
            )
        return v

    @field_validator("extra_args", "agent_args")
    @classmethod
    def _flags(cls, v: list[str], info: ValidationInfo) -> list[str]:
        name = info.data.get("name", "k3s")
        if v and name == "microshift":
            raise custom_error(
                "flags", "MicroShift takes its settings from config.yaml, not flags", f"remove {info.field_name}"
            )
        for i, message, fix in flag_problems(v, name)[:1]:
            raise custom_error("flags", f"[{i}] {message}", fix)
        return v

    @field_validator("version")
    @classmethod
    def _exact_version(cls, v: str, info: ValidationInfo) -> str:
        name = info.data.get("name", "k3s")
        if not VERSION_PATTERNS[name].match(v):
            raise custom_error(
                "version",
                f"{shown(v)} is not an exact {name} version",
                f"pin a release such as {VERSION_EXAMPLES[name]!r}; channels and 'latest' are not allowed",
            )
        return v


class Network(StrictModel):
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
            raise custom_error(
                "cidr",
                f"{shown(v)} is not a valid CIDR ({shown(str(exc), 80)[1:-1]})",
                "write a network address with its prefix, e.g. 10.42.0.0/16",
            ) from None
        return v

    @field_validator("service_cidr")
    @classmethod
    def _no_overlap(cls, v: str, info: ValidationInfo) -> str:
        if "cluster_cidr" in info.data:
            a, b = ipaddress.ip_network(info.data["cluster_cidr"]), ipaddress.ip_network(v)
            if a.version == b.version and a.overlaps(b):
                raise custom_error(
                    "cidr_overlap",
                    f"{v!r} overlaps cluster_cidr {a}",
                    "choose two disjoint ranges, e.g. 10.42.0.0/16 and 10.43.0.0/16",
                )
        return v


class Workload(StrictModel):
    """A model served on the site (see models/catalog.yaml)."""

    model: str
    version: str
    replicas: int = Field(1, ge=1, le=50)
    max_replicas: int | None = Field(None, ge=1, le=100)
    gpu: bool = False
    clients: list[str] = []  # namespaces allowed to call the model server


class SimulatedNodes(StrictModel):
    """Lab only: kwok registers ``count`` fake worker nodes next to the first server, for
    hosts without a container runtime (see components/simulated.py). Refused in prod."""

    count: int = Field(2, ge=1, le=20)
    kwok: ArtifactSpec
    stages: str  # kwok Stage resources (node and pod lifecycle)

    _stages = path_fields("stages")


class Site(StrictModel):
    name: str
    topology: Topology
    distribution: DistributionSpec
    hardware_class: Literal["x86-server", "x86-edge", "arm64-edge", "gateway"] = "x86-edge"
    latency_class: Literal["control", "video", "batch"] = "control"
    wave: int = Field(1, ge=0, le=100)
    network: Network = Network()
    registration_address: str | None = None
    tls_sans: list[str] = []
    artifacts: list[ArtifactSpec] = []
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
        return checked_name(v, "site")

    @field_validator("registration_address")
    @classmethod
    def _reg(cls, v: str | None) -> str | None:
        if v is not None and not (is_ip(v) or is_dns_name(v)):
            raise custom_error(
                "address",
                f"{shown(v)} is neither an IP address nor a DNS name",
                "write the load balancer or VIP address the servers register through",
            )
        return v

    @field_validator("tls_sans")
    @classmethod
    def _sans(cls, v: list[str]) -> list[str]:
        for san in v:
            if not (is_ip(san) or is_dns_name(san)):
                raise custom_error(
                    "tls_san",
                    f"{shown(san)} is neither an IP address nor a DNS name",
                    "list the extra names of the API server certificate, e.g. k8s.site.example or 10.0.0.10",
                )
        return v

    @field_validator("registry_mirrors")
    @classmethod
    def _mirrors(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for registry, endpoints in v.items():
            m = REGISTRY.fullmatch(registry)
            if m is None or not is_dns_name(m.group("host")) or not 0 < int(m.group("port") or 443) < 65536:
                raise custom_error(
                    "registry",
                    f"{shown(registry)} is not a registry name",
                    "key each mirror list by the registry's host[:port], e.g. docker.io or registry.local:5000",
                )
            if not endpoints:
                raise custom_error(
                    "registry", f"registry {registry} has no mirror endpoints", "list at least one mirror URL"
                )
            for e in endpoints:
                m = MIRROR_URL.fullmatch(e)
                if (
                    m is None
                    or not 0 < int(m.group("port") or 443) < 65536
                    or (m.group("host").startswith("[") and not is_ip(m.group("host")[1:-1]))
                ):
                    raise custom_error(
                        "mirror",
                        f"registry {registry}: {shown(e)} is not a mirror URL",
                        "write https://HOST[:PORT] (http:// only for a lab mirror)",
                    )
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


def _amount(v: object, field: str, least: int) -> int | str:
    """A count (int) or a percentage of the sites ("25%")."""
    m = AMOUNT.fullmatch(str(v)) if isinstance(v, (int, str)) and not isinstance(v, bool) else None
    if m is None or int(m.group("n")) < least or (m.group("pct") and int(m.group("n")) > 100):
        raise custom_error(
            "amount",
            f"{shown(str(v))} is not a count of at least {least} or a percentage",
            f"write a number such as {max(least, 1)} or a percentage such as '25%'",
        )
    return f"{int(m.group('n'))}%" if m.group("pct") else int(m.group("n"))


def _duration(v: int | str, limit_s: int) -> int:
    """Seconds, from a number or a duration such as '90s', '5m', '1h'."""
    m = DURATION.fullmatch(v) if isinstance(v, str) else None
    seconds = (
        v
        if isinstance(v, int) and not isinstance(v, bool)
        else (int(m.group("n")) * DURATION_S[m.group("unit")] if m else None)
    )
    if seconds is None or not 0 <= seconds <= limit_s:
        raise custom_error(
            "duration",
            f"{shown(str(v))} is not a duration of at most {limit_s} s",
            "write seconds (90) or a duration such as '90s', '5m', '1h'",
        )
    return seconds


class Rollout(StrictModel):
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
            raise custom_error("wave", f"{v} names a wave outside 0..100", "list waves between 0 and 100, e.g. [0]")
        return sorted(set(v))

    @field_validator("progress_deadline", "preflight_timeout")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise custom_error(
                "duration", "must be at least 1 s", "give a deadline such as '30m' (progress) or 10 (preflight)"
            )
        return v


class MonitoringCore(StrictModel):
    """Where every site's Prometheus agent remote-writes: the core's receiver. An IP address,
    because the agent's egress NetworkPolicy allows exactly it."""

    address: str
    port: int = Field(9090, ge=1, le=65535)
    scheme: Literal["http", "https"] = "http"

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if not is_ip(v):
            raise custom_error(
                "address",
                f"{shown(v)} is not an IP address",
                "write the core's IP address; the agents' NetworkPolicy allows exactly it",
            )
        return v


class Monitoring(StrictModel):
    """Monitoring from core to edge: a Prometheus agent on every site (in the site's
    ``monitoring_namespace``) writing to ``core``."""

    core: MonitoringCore


class Inventory(StrictModel):
    fleet: str
    environment: Literal["dev", "prod"]
    rollout: Rollout = Rollout()
    monitoring: Monitoring | None = None
    sites: Annotated[list[Site], Field(min_length=1)]

    @field_validator("fleet")
    @classmethod
    def _fleet(cls, v: str) -> str:
        return checked_name(v, "fleet")
