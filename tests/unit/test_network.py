"""NetworkPolicies of a workload namespace: deny by default, allow exactly the declared paths."""

from __future__ import annotations

from typing import Any

import pytest

from components.network import (
    ClusterDns,
    NetworkPolicyError,
    RegistryEgress,
    create_network_policies,
    default_deny,
    namespace_policies,
)
from policies.engine import evaluate
from policies.resource import Resource
from policies.rules import get_rule
from tests.unit.test_serving import run_program

POD = {"app.kubernetes.io/name": "quality-control", "app.kubernetes.io/component": "inference-server"}
MICROSHIFT_DNS = ClusterDns("openshift-dns", {"dns.operator.openshift.io/daemonset-dns": "default"}, 5353)


def flows(policies: dict[str, dict[str, Any]]) -> set[tuple[Any, ...]]:
    """Every allowed flow as (direction, pods it applies to, peer, protocol, port)."""
    out = set()
    for p in policies.values():
        spec = p["spec"]
        pods = tuple(sorted(spec["podSelector"].get("matchLabels", {}).items()))
        for direction, peer_key in (("ingress", "from"), ("egress", "to")):
            for rule in spec.get(direction, []):
                for peer in rule[peer_key]:
                    if "ipBlock" in peer:
                        who: tuple[Any, ...] = ("cidr", peer["ipBlock"]["cidr"])
                    else:
                        ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                        who = (
                            "namespace",
                            ns,
                            tuple(sorted(peer.get("podSelector", {}).get("matchLabels", {}).items())),
                        )
                    for port in rule["ports"]:
                        out.add((direction, pods, who, port["protocol"], port["port"]))
    return out


def test_default_deny_covers_ingress_and_egress_of_every_pod():
    assert default_deny("models") == {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny", "namespace": "models"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    }


def test_exactly_the_declared_paths_are_allowed():
    policies = namespace_policies(
        "quality-control",
        POD,
        8080,
        clients=["vision", "line-control", "vision"],
        monitoring_namespace="monitoring",
        registry=RegistryEgress("10.0.5.20/32", 9000),
    )
    assert list(policies) == ["default-deny", "allow-dns", "allow-clients", "allow-monitoring", "allow-registry"]
    server = tuple(sorted(POD.items()))
    dns_pods = (("k8s-app", "kube-dns"),)
    assert flows(policies) == {
        ("egress", (), ("namespace", "kube-system", dns_pods), "UDP", 53),
        ("egress", (), ("namespace", "kube-system", dns_pods), "TCP", 53),
        ("ingress", server, ("namespace", "line-control", ()), "TCP", 8080),
        ("ingress", server, ("namespace", "vision", ()), "TCP", 8080),
        ("ingress", server, ("namespace", "monitoring", ()), "TCP", 8080),
        ("egress", server, ("cidr", "10.0.5.20/32"), "TCP", 9000),
    }
    assert all(p["metadata"]["namespace"] == "quality-control" for p in policies.values())


def test_nothing_declared_leaves_only_dns():
    policies = namespace_policies("quality-control", POD, 8080)
    assert list(policies) == ["default-deny", "allow-dns"]
    assert {f[0] for f in flows(policies)} == {"egress"}


def test_microshift_dns_is_reached_on_the_pods_port():
    policies = namespace_policies("quality-control", POD, 8080, dns=MICROSHIFT_DNS)
    dns_pods = (("dns.operator.openshift.io/daemonset-dns", "default"),)
    assert flows(policies) == {
        ("egress", (), ("namespace", "openshift-dns", dns_pods), proto, 5353) for proto in ("UDP", "TCP")
    }


@pytest.mark.parametrize(
    "cidr,port,message",
    [
        ("0.0.0.0/0", 443, "every address"),
        ("::/0", 443, "every address"),
        ("registry.local", 443, "is not an address block"),
        ("10.0.5.20/32", 0, "is not a TCP port"),
    ],
)
def test_registry_egress_is_never_open(cidr: str, port: int, message: str):
    with pytest.raises(NetworkPolicyError, match=message):
        RegistryEgress(cidr, port)


def test_registry_block_is_normalised():
    assert RegistryEgress("10.0.5.20/24").cidr == "10.0.5.0/24"
    assert RegistryEgress("fd00::5").cidr == "fd00::5/128"


def test_policies_pass_the_network_rules():
    policies = namespace_policies(
        "quality-control",
        POD,
        8080,
        clients=["vision"],
        monitoring_namespace="monitoring",
        registry=RegistryEgress("10.0.5.20/32"),
    )
    resources = [Resource("kubernetes:networking.k8s.io/v1:NetworkPolicy", role, m) for role, m in policies.items()]
    deployment = Resource(
        "kubernetes:apps/v1:Deployment", "server", {"metadata": {"name": "server", "namespace": "quality-control"}}
    )
    rules = [get_rule("no-allow-all-network-policy"), get_rule("namespace-default-deny")]
    assert evaluate([*resources, deployment], rules=rules).findings == []
    # Without the default deny the namespace is open: the pack says so.
    report = evaluate([r for r in resources if r.name != "default-deny"] + [deployment], rules=rules)
    assert [f.rule.name for f in report.findings] == ["namespace-default-deny"]


def test_create_registers_one_network_policy_per_role():
    policies = namespace_policies("quality-control", POD, 8080, clients=["vision"])
    run = run_program(lambda: next(iter(create_network_policies("site-a-qc", policies).values())).metadata)
    assert sorted((r.type, r.name) for r in run.registered if r.type.startswith("kubernetes:")) == sorted(
        ("kubernetes:networking.k8s.io/v1:NetworkPolicy", f"site-a-qc-{role}") for role in policies
    )
    assert {r.name: r.inputs["spec"] for r in run.registered if r.type.startswith("kubernetes:")} == {
        f"site-a-qc-{role}": m["spec"] for role, m in policies.items()
    }
