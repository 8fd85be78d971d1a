"""NetworkPolicies of a workload namespace: deny everything, then allow exactly the declared flows.

Every namespace the program creates gets a default deny of ingress and egress and, on top of it,
one policy per allowed path:

- ``allow-dns``: egress to the cluster DNS pods only (port 53, or whatever port the DNS pods
  listen on: policies see the pod port after the Service's translation).
- ``allow-clients``: ingress to the server port from the client namespaces, named by their
  ``kubernetes.io/metadata.name`` label (set by the API server, so it cannot be forged).
- ``allow-monitoring``: ingress to the server port from the site's monitoring namespace, for
  ``/metrics`` (served on the same port as the API).
- ``allow-registry``: egress to the model registry's address block and port, for the init
  container that fetches the model.

No rule has an empty peer list or an open address block: an allow-all rule would undo the deny.
The builders are pure (they return manifest dicts); :func:`create_network_policies` registers them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

NAMESPACE_LABEL = "kubernetes.io/metadata.name"
API_VERSION = "networking.k8s.io/v1"


class NetworkPolicyError(ValueError):
    """A network path that cannot be expressed safely; says which value and the fix."""


@dataclass(frozen=True)
class ClusterDns:
    """Where the cluster DNS pods run and the port they listen on."""

    namespace: str = "kube-system"
    pod_labels: Mapping[str, str] = field(default_factory=lambda: {"k8s-app": "kube-dns"})
    port: int = 53


@dataclass(frozen=True)
class RegistryEgress:
    """The model registry as the network sees it: an address block and a TCP port."""

    cidr: str
    port: int = 443

    def __post_init__(self) -> None:
        try:
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError as exc:
            raise NetworkPolicyError(
                f"model registry CIDR {self.cidr!r} is not an address block ({exc}) "
                "(fix: write the registry's address as a CIDR, e.g. 10.0.5.20/32)"
            ) from None
        if net.prefixlen == 0:
            raise NetworkPolicyError(
                f"model registry CIDR {self.cidr!r} would allow egress to every address "
                "(fix: narrow it to the registry's own addresses, e.g. 10.0.5.20/32)"
            )
        if not 1 <= self.port <= 65535:
            raise NetworkPolicyError(
                f"model registry port {self.port} is not a TCP port (fix: use 1-65535, usually 443)"
            )
        object.__setattr__(self, "cidr", str(net))


def _policy(name: str, namespace: str, spec: dict[str, Any], labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": API_VERSION, "kind": "NetworkPolicy", "metadata": metadata, "spec": spec}


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}}


def _tcp(port: int | str) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port}]


def default_deny(namespace: str, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Deny all ingress and egress of every pod in ``namespace``."""
    return _policy("default-deny", namespace, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, labels)


def allow_dns(
    namespace: str, dns: ClusterDns = ClusterDns(), labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Egress to the cluster DNS pods, UDP and TCP (large answers fall back to TCP)."""
    peer = {**_namespace_peer(dns.namespace), "podSelector": {"matchLabels": dict(dns.pod_labels)}}
    ports = [{"protocol": proto, "port": dns.port} for proto in ("UDP", "TCP")]
    return _policy(
        "allow-dns",
        namespace,
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [peer], "ports": ports}]},
        labels,
    )


def allow_ingress_from(
    name: str,
    namespace: str,
    pod_labels: Mapping[str, str],
    port: int | str,
    sources: Sequence[str],
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any] | None:
    """Ingress to ``port`` of the selected pods from the ``sources`` namespaces (None: no sources)."""
    if not sources:
        return None
    peers = [_namespace_peer(ns) for ns in sorted(set(sources))]
    spec = {
        "podSelector": {"matchLabels": dict(pod_labels)},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": peers, "ports": _tcp(port)}],
    }
    return _policy(name, namespace, spec, labels)


def allow_registry(
    namespace: str, pod_labels: Mapping[str, str], registry: RegistryEgress, labels: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Egress from the selected pods to the model registry only."""
    spec = {
        "podSelector": {"matchLabels": dict(pod_labels)},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"ipBlock": {"cidr": registry.cidr}}], "ports": _tcp(registry.port)}],
    }
    return _policy("allow-registry", namespace, spec, labels)


def namespace_policies(
    namespace: str,
    pod_labels: Mapping[str, str],
    port: int | str,
    *,
    clients: Sequence[str] = (),
    monitoring_namespace: str | None = None,
    registry: RegistryEgress | None = None,
    dns: ClusterDns = ClusterDns(),
    labels: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every policy of a model server namespace, by role: the deny and the allowed paths."""
    candidates = {
        "default-deny": default_deny(namespace, labels),
        "allow-dns": allow_dns(namespace, dns, labels),
        "allow-clients": allow_ingress_from("allow-clients", namespace, pod_labels, port, clients, labels),
        "allow-monitoring": allow_ingress_from(
            "allow-monitoring",
            namespace,
            pod_labels,
            port,
            [monitoring_namespace] if monitoring_namespace else [],
            labels,
        ),
        "allow-registry": allow_registry(namespace, pod_labels, registry, labels) if registry else None,
    }
    return {role: manifest for role, manifest in candidates.items() if manifest is not None}


def create_network_policies(
    name: str, manifests: Mapping[str, Mapping[str, Any]], opts: pulumi.ResourceOptions | None = None
) -> dict[str, k8s.networking.v1.NetworkPolicy]:
    """One ``NetworkPolicy`` resource per manifest, named ``{name}-{role}``."""
    return {
        role: k8s.networking.v1.NetworkPolicy(f"{name}-{role}", metadata=m["metadata"], spec=m["spec"], opts=opts)
        for role, m in manifests.items()
    }
