"""Kubernetes objects of a site's Prometheus agent (pure: typed args -> manifest dicts).

The agent (Prometheus 2.42 with ``--enable-feature=agent``) scrapes the site's inference pods,
the kubelet of every node (``/metrics``), cAdvisor (``/metrics/cadvisor``: containers) and the
kubelet's resource metrics
(``/metrics/resource``: node and pod CPU/memory, which a site without node-exporter still has),
labels every series with the site's ``site``, ``wave``, ``hardware_class`` and
``latency_class``, and remote-writes to the core.

Debian's Prometheus 2.42 is built without Kubernetes service discovery, so targets are found
without the API: the inference pods through a headless Service per scraped namespace (DNS A
records of the ready pods), the kubelets at the site's host addresses from the inventory. The
agent's token is needed only by the kubelets (``nodes/metrics``), never for the API server.

An intermittent link loses nothing within the class's outage window: samples the core has not
acknowledged stay in the agent's WAL (on its own volume, sized per hardware class) until
``--storage.agent.retention.max-time`` and are sent, oldest first, when the core answers again.

Network: no ingress at all; egress only to the core's address and port, the cluster DNS, the
kubelets and the inference pods' metrics port.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from components.monitoring.rules import INFER_JOB, KUBELET_JOB, LABEL_VALUE

NAME = "prometheus-agent"
PORT = 9090
RUN_AS = 65532
CONFIG_DIR = "/etc/prometheus"
WAL_DIR = "/var/lib/prometheus-agent"
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_VERSION_NP = "networking.k8s.io/v1"
PROMETHEUS_VERSION = "2.42.0"  # Debian bookworm's prometheus package (images/prometheus)
LABELS = {
    "app.kubernetes.io/name": NAME,
    "app.kubernetes.io/version": PROMETHEUS_VERSION,
    "app.kubernetes.io/component": "monitoring",
    "app.kubernetes.io/part-of": "edgefleet",
    "app.kubernetes.io/managed-by": "pulumi",
}
SELECTOR = {"app.kubernetes.io/name": NAME}
# The inference pods (components/serving.py labels them so; their port is named "http").
INFER_SELECTOR = {"app.kubernetes.io/component": "inference-server"}
PODS_SERVICE = "inference-pods"


class AgentError(ValueError):
    """Agent args that cannot be rendered; the message names the value and the fix."""


@dataclass(frozen=True)
class ClassProfile:
    """The agent's footprint on one hardware class.

    ``outage_window`` is how long the link may be down without losing samples (the WAL keeps
    unsent samples that long); ``wal_size`` is the volume that holds them for ``series`` active
    series (:func:`wal_bytes`); ``memory``/``cpu`` are the container's limits (the RSS budget).
    """

    scrape_interval: str
    outage_window: str
    wal_size: str
    memory: str
    cpu: str
    max_shards: int
    capacity: int
    max_samples_per_send: int
    series: int


PROFILES: dict[str, ClassProfile] = {
    "x86-server": ClassProfile("15s", "24h", "4Gi", "512Mi", "500m", 10, 10000, 2000, 40_000),
    "x86-edge": ClassProfile("15s", "12h", "2Gi", "384Mi", "250m", 5, 5000, 1000, 20_000),
    "arm64-edge": ClassProfile("15s", "12h", "2Gi", "384Mi", "250m", 5, 5000, 1000, 20_000),
    # Constrained: fewer scrapes, a shorter window on a smaller volume, one or two shards.
    "gateway": ClassProfile("30s", "6h", "512Mi", "128Mi", "100m", 2, 2500, 500, 5_000),
}

# WAL growth per sample: 7-9 bytes measured with the compressed WAL (bench/results/monitoring.json,
# outage_replay.runs[].wal_bytes_per_sample), doubled for series churn and less compressible values.
WAL_BYTES_PER_SAMPLE = 16.0


def wal_bytes(series: int, scrape_interval_s: float, window_s: float) -> int:
    """Bytes of WAL ``series`` series need to survive ``window_s`` of outage (WAL segments
    are 128 MiB; one more is allowed for the segment being written and the checkpoint)."""
    return int(series * window_s / scrape_interval_s * WAL_BYTES_PER_SAMPLE) + 2 * 128 * 2**20


@dataclass(frozen=True)
class CoreEndpoint:
    """Where the core's remote-write receiver listens: an IP address (the NetworkPolicy needs
    one) and a TCP port."""

    address: str
    port: int = 9090
    scheme: str = "http"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            raise AgentError(
                f"monitoring.core.address: {self.address!r} is not an IP address "
                "(fix: write the core's IP address; the agent's NetworkPolicy allows exactly it)"
            ) from None
        if not 1 <= self.port <= 65535:
            raise AgentError(f"monitoring.core.port: {self.port} is not a TCP port (fix: 1-65535, e.g. 9090)")
        if self.scheme not in ("http", "https"):
            raise AgentError(f"monitoring.core.scheme: {self.scheme!r} (fix: http or https)")

    @property
    def cidr(self) -> str:
        return str(ipaddress.ip_network(self.address))

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}/api/v1/write"


@dataclass(frozen=True)
class AgentArgs:
    """One site's agent. ``nodes`` maps the site's node names to their addresses (the kubelets
    listen there); ``scrape_namespaces`` are the namespaces of its inference servers."""

    site: str
    wave: int
    hardware_class: str
    latency_class: str
    image: str
    core: CoreEndpoint
    nodes: Mapping[str, str]
    scrape_namespaces: Sequence[str]
    namespace: str = "monitoring"
    kubelet_port: int = 10250
    infer_port: int = 8080
    dns_namespace: str = "kube-system"
    dns_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    dns_port: int = 53

    def __post_init__(self) -> None:
        if self.hardware_class not in PROFILES:
            raise AgentError(
                f"site {self.site}: hardware_class: {self.hardware_class!r} has no agent profile "
                f"(fix: one of {', '.join(PROFILES)})"
            )
        for what, value in (
            ("site", self.site),
            ("namespace", self.namespace),
            ("latency_class", self.latency_class),
            *(("scrape namespace", n) for n in self.scrape_namespaces),
        ):
            if not LABEL_VALUE.fullmatch(value):
                raise AgentError(
                    f"site {self.site}: {what}: {value!r} is not a label value (fix: lowercase letters, digits, '-')"
                )
        if not self.nodes:
            raise AgentError(f"site {self.site}: no node address (fix: list the site's host addresses)")
        for a in self.nodes.values():
            try:
                ipaddress.ip_address(a)
            except ValueError:
                raise AgentError(
                    f"site {self.site}: node address {a!r} is not an IP address "
                    "(fix: the hosts' IP addresses, which the kubelets listen on)"
                ) from None

    @property
    def profile(self) -> ClassProfile:
        return PROFILES[self.hardware_class]


def external_labels(args: AgentArgs) -> dict[str, str]:
    return {
        "site": args.site,
        "wave": str(args.wave),
        "hardware_class": args.hardware_class,
        "latency_class": args.latency_class,
    }


def _kubelet_job(name: str, path: str, args: AgentArgs) -> dict[str, Any]:
    return {
        "job_name": name,
        "scheme": "https",
        "metrics_path": path,
        "static_configs": [
            {"targets": [_hostport(address, args.kubelet_port)], "labels": {"node": node}}
            for node, address in sorted(args.nodes.items())
        ],
        "authorization": {"credentials_file": f"{TOKEN_DIR}/token"},
        "tls_config": {
            "ca_file": f"{TOKEN_DIR}/ca.crt",
            # Kubelet serving certificates are self-signed on K3s/k0s unless rotated
            # through the API; the bearer token still authenticates the agent.
            "insecure_skip_verify": True,
        },
    }


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def prometheus_config(args: AgentArgs) -> dict[str, Any]:
    """The agent's prometheus.yml."""
    p = args.profile
    inference = {
        "job_name": INFER_JOB,
        "dns_sd_configs": [
            {
                "names": [f"{PODS_SERVICE}.{ns}.svc.cluster.local" for ns in sorted(args.scrape_namespaces)],
                "type": "A",
                "port": args.infer_port,
                "refresh_interval": "30s",
            }
        ],
        "relabel_configs": [
            {
                "source_labels": ["__meta_dns_name"],
                "regex": f"{PODS_SERVICE}\\.([^.]+)\\..*",
                "target_label": "namespace",
            }
        ],
    }
    jobs = [inference] if args.scrape_namespaces else []
    return {
        "global": {
            "scrape_interval": p.scrape_interval,
            "scrape_timeout": "10s",
            "external_labels": external_labels(args),
        },
        "scrape_configs": [
            *jobs,
            _kubelet_job(KUBELET_JOB, "/metrics", args),
            _kubelet_job("cadvisor", "/metrics/cadvisor", args),
            _kubelet_job("node", "/metrics/resource", args),
        ],
        "remote_write": [remote_write(args.core, p)],
    }


def remote_write(core: CoreEndpoint, p: ClassProfile) -> dict[str, Any]:
    return {
        "url": core.url,
        "remote_timeout": "30s",
        "queue_config": {
            "capacity": p.capacity,
            "max_shards": p.max_shards,
            "min_shards": 1,
            "max_samples_per_send": p.max_samples_per_send,
            "batch_send_deadline": "5s",
            "min_backoff": "100ms",
            "max_backoff": "30s",
        },
        "metadata_config": {"send": False},
    }


def agent_flags(p: ClassProfile, config_file: str, wal_dir: str, listen: str) -> list[str]:
    """The command line (shared with the local tests, which run the same flags)."""
    return [
        f"--config.file={config_file}",
        "--enable-feature=agent",
        f"--storage.agent.path={wal_dir}",
        "--storage.agent.wal-compression",
        f"--storage.agent.retention.max-time={p.outage_window}",
        f"--web.listen-address={listen}",
        "--log.format=json",
    ]


def _meta(args: AgentArgs, name: str = NAME, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {**LABELS, "edgefleet.io/site": args.site}}
    if namespaced:
        meta["namespace"] = args.namespace
    return meta


def config_map(args: AgentArgs) -> dict[str, Any]:
    text = yaml.safe_dump(prometheus_config(args), sort_keys=False)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(args), "data": {"prometheus.yml": text}}


def service_account(args: AgentArgs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(args),
        "automountServiceAccountToken": False,
    }


def cluster_role(args: AgentArgs) -> dict[str, Any]:
    """The kubelets' metrics endpoints, nothing else (targets are not discovered through the API)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta(args, f"{NAME}-{args.namespace}", namespaced=False),
        "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}],
    }


def cluster_role_binding(args: AgentArgs) -> dict[str, Any]:
    name = f"{NAME}-{args.namespace}"
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(args, name, namespaced=False),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": args.namespace}],
    }


def pods_services(args: AgentArgs) -> dict[str, dict[str, Any]]:
    """A headless Service per scraped namespace: its DNS name resolves to the ready inference pods."""
    return {
        f"pods-{ns}": {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {**_meta(args, PODS_SERVICE), "namespace": ns},
            "spec": {
                "type": "ClusterIP",
                "clusterIP": "None",
                "selector": dict(INFER_SELECTOR),
                "ports": [{"name": "http", "port": args.infer_port, "targetPort": args.infer_port, "protocol": "TCP"}],
            },
        }
        for ns in sorted(args.scrape_namespaces)
    }


def _resources(p: ClassProfile) -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": p.cpu, "memory": p.memory}, "limits": {"cpu": p.cpu, "memory": p.memory}}


def deployment(args: AgentArgs) -> dict[str, Any]:
    """One replica (a second would send every sample twice); ``Recreate`` so two never share the WAL."""
    p = args.profile
    config_hash = hashlib.sha256(config_map(args)["data"]["prometheus.yml"].encode()).hexdigest()[:16]

    def probe(path: str, period: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": PORT},
            "periodSeconds": period,
            "failureThreshold": 3,
            "timeoutSeconds": 5,
        }

    container = {
        "name": "prometheus",
        "image": args.image,
        "args": agent_flags(p, f"{CONFIG_DIR}/prometheus.yml", WAL_DIR, f"0.0.0.0:{PORT}"),
        "ports": [{"name": "web", "containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(p),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "readinessProbe": probe("/-/ready", 10),
        "livenessProbe": probe("/-/healthy", 30),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "wal", "mountPath": WAL_DIR},
            {"name": "token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
    }
    token = {
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ],
        }
    }
    pod = {
        "serviceAccountName": NAME,
        # The API token is mounted as a projected volume, only in this container.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": NAME}},
            {"name": "wal", "emptyDir": {"sizeLimit": p.wal_size}},
            {"name": "token", **token},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(args),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": SELECTOR},
            "template": {
                "metadata": {
                    "labels": {**LABELS, "edgefleet.io/site": args.site},
                    "annotations": {"edgefleet.io/config-sha256": config_hash},
                },
                "spec": pod,
            },
        },
    }


def _host_peers(addresses: Sequence[str]) -> list[dict[str, Any]]:
    return [{"ipBlock": {"cidr": str(ipaddress.ip_network(a))}} for a in sorted(set(addresses))]


def network_policies(args: AgentArgs) -> dict[str, dict[str, Any]]:
    """Deny all ingress and egress of the namespace, then allow the agent's egress paths."""
    pod = {"matchLabels": SELECTOR}

    def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API_VERSION_NP, "kind": "NetworkPolicy", "metadata": _meta(args, name), "spec": spec}

    def tcp(port: int) -> list[dict[str, Any]]:
        return [{"protocol": "TCP", "port": port}]

    return {
        "network-default-deny": policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
        "network-agent-egress": policy(
            "agent-egress",
            {
                "podSelector": pod,
                "policyTypes": ["Egress"],
                "egress": [
                    {"to": [{"ipBlock": {"cidr": args.core.cidr}}], "ports": tcp(args.core.port)},
                    {
                        "to": [
                            {
                                "namespaceSelector": {
                                    "matchLabels": {"kubernetes.io/metadata.name": args.dns_namespace}
                                },
                                "podSelector": {"matchLabels": dict(args.dns_labels)},
                            }
                        ],
                        "ports": [
                            {"protocol": "UDP", "port": args.dns_port},
                            {"protocol": "TCP", "port": args.dns_port},
                        ],
                    },
                    {"to": _host_peers(list(args.nodes.values())), "ports": tcp(args.kubelet_port)},
                    {
                        "to": [
                            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}}
                            for ns in sorted(args.scrape_namespaces)
                        ],
                        "ports": tcp(args.infer_port),
                    },
                ],
            },
        ),
    }


def namespace(args: AgentArgs) -> dict[str, Any]:
    psa = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
    psa.update({f"pod-security.kubernetes.io/{mode}-version": "latest" for mode in ("enforce", "audit", "warn")})
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": args.namespace, "labels": {**LABELS, "edgefleet.io/site": args.site, **psa}},
    }


def render(args: AgentArgs) -> dict[str, dict[str, Any]]:
    """Every object of the agent by role, in creation order."""
    out = {
        "namespace": namespace(args),
        **network_policies(args),
        "service-account": service_account(args),
        "cluster-role": cluster_role(args),
        "cluster-role-binding": cluster_role_binding(args),
        **pods_services(args),
        "config": config_map(args),
        "deployment": deployment(args),
    }
    if not args.scrape_namespaces:
        del out["network-agent-egress"]["spec"]["egress"][3]
    return out
