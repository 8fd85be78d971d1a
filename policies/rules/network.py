"""Network isolation: default-deny per namespace, no allow-all rules, no exposed Services,
Pod Security Admission labels on namespaces."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from policies.resource import UNKNOWN, Resource, contains_unknown, dig, items, mapping
from policies.rules import Violation, key_path, rule
from policies.rules._k8s import WORKLOADS, labels, namespace, object_name

EXPOSED_SERVICE_TYPES = ("LoadBalancer", "NodePort")
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"
OPEN_CIDRS = ("0.0.0.0/0", "::/0")


def _denies(policy: Resource, direction: str) -> bool | None:
    """Whether a NetworkPolicy is a default deny for ``direction`` (Ingress or Egress) over the
    whole namespace: empty pod selector, the direction in policyTypes, no rules. ``None`` if
    unknown."""
    spec = dig(policy.props, "spec")
    if contains_unknown(spec):
        return None
    selector = mapping(dig(spec, "podSelector"))
    if any(selector.get(k) for k in ("matchLabels", "matchExpressions")):
        return False
    types = items(dig(spec, "policyTypes"))
    if not types:  # Kubernetes' default: Ingress, plus Egress if egress rules are given
        types = ["Ingress"] + (["Egress"] if dig(spec, "egress") is not None else [])
    return direction in types and not items(dig(spec, direction.lower()))


@rule(
    name="namespace-default-deny",
    title="Default-deny NetworkPolicy per namespace",
    category="network",
    severity="high",
    description=(
        "Every namespace that runs workloads has a NetworkPolicy that denies all ingress and egress by default; "
        "allowed flows are added explicitly."
    ),
    remediation=(
        "Add a NetworkPolicy with podSelector: {} and policyTypes [Ingress, Egress] and no rules to the namespace "
        "(components/network.py does this per site)."
    ),
    targets=WORKLOADS | {"NetworkPolicy", "Namespace"},
    scope="stack",
)
def namespace_default_deny(resources: Sequence[Resource], config: dict[str, Any]) -> list[Violation]:
    # Keys are (cluster, namespace): two sites' "inference" namespaces are different namespaces.
    first_workload: dict[tuple[str, str], Resource] = {}
    namespaces: dict[tuple[str, str], Resource] = {}
    deny: dict[tuple[str, str], set[str]] = {}
    unknown_policy_ns: set[str] = set()
    for res in resources:
        if res.key in WORKLOADS:
            ns = namespace(res)
            if isinstance(ns, str):
                first_workload.setdefault((res.cluster, ns), res)
        elif res.key == "Namespace":
            name = object_name(res)
            if isinstance(name, str):
                namespaces[(res.cluster, name)] = res
        elif res.key == "NetworkPolicy":
            ns = namespace(res)
            if ns is UNKNOWN:
                unknown_policy_ns.add(res.cluster)
                continue
            for direction in ("Ingress", "Egress"):
                if _denies(res, direction) is not False:
                    deny.setdefault((res.cluster, ns), set()).add(direction)
    out = []
    for key, workload in sorted(first_workload.items(), key=lambda kv: kv[0]):
        if key[0] in unknown_policy_ns:
            continue  # a policy whose namespace is not known yet may be the one missing
        missing = {"Ingress", "Egress"} - deny.get(key, set())
        if missing:
            out.append(
                Violation(
                    f"namespace {key[1]} runs workloads ({workload.label}) without a default-deny "
                    f"{' and '.join(sorted(missing))} NetworkPolicy",
                    "",
                    namespaces.get(key, workload),
                )
            )
    return out


def _open_peers(peers: Any) -> bool:
    peer_list = items(peers)
    if not peer_list:
        return True
    for peer in peer_list:
        peer = mapping(peer)
        if not peer:
            return True
        if dig(peer, "ipBlock", "cidr") in OPEN_CIDRS and not items(dig(peer, "ipBlock", "except")):
            return True
        ns_sel, pod_sel = dig(peer, "namespaceSelector"), dig(peer, "podSelector")
        if ns_sel is not None and not mapping(ns_sel) and not mapping(pod_sel):
            return True
    return False


@rule(
    name="no-allow-all-network-policy",
    title="No allow-all NetworkPolicy rules",
    category="network",
    severity="high",
    description=(
        "A NetworkPolicy rule must restrict both peers and ports; a rule open to every peer on every port undoes "
        "default-deny."
    ),
    remediation=(
        "Name the peers (podSelector/namespaceSelector or a narrow ipBlock) and the ports in every ingress and egress "
        "rule."
    ),
    targets={"NetworkPolicy"},
)
def no_allow_all(res: Resource, config: dict[str, Any]) -> list[Violation]:
    out = []
    for direction, peer_key in (("ingress", "from"), ("egress", "to")):
        for i, r in enumerate(items(dig(res.props, "spec", direction))):
            if contains_unknown(r):
                continue
            if _open_peers(dig(r, peer_key)) and not items(dig(r, "ports")):
                out.append(Violation(f"{direction} rule {i} allows every peer on every port", f"spec.{direction}[{i}]"))
    return out


@rule(
    name="restricted-service-types",
    title="No LoadBalancer or NodePort Services outside gateways",
    category="network",
    severity="high",
    description=(
        "Services of type LoadBalancer or NodePort open the site to its network; only the configured gateway Services "
        "may."
    ),
    remediation=(
        "Use type ClusterIP, or list the Service as namespace/name in gatewayServices of this rule's pack config."
    ),
    targets={"Service"},
    config_schema={
        "gatewayServices": {
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "description": "Services (namespace/name) allowed to be LoadBalancer or NodePort.",
        }
    },
)
def restricted_service_types(res: Resource, config: dict[str, Any]) -> list[Violation]:
    kind = dig(res.props, "spec", "type")
    if kind not in EXPOSED_SERVICE_TYPES:
        return []
    ns, name = namespace(res), object_name(res)
    if ns is UNKNOWN or name is UNKNOWN:
        return []
    if f"{ns}/{name}" in set(config.get("gatewayServices", [])):
        return []
    return [Violation(f"Service {ns}/{name} is of type {kind}", "spec.type")]


@rule(
    name="namespace-psa-labels",
    title="Namespaces enforce Pod Security Admission",
    category="network",
    severity="medium",
    description=(
        "Every namespace carries pod-security.kubernetes.io/enforce at baseline or restricted, so the cluster refuses "
        "what the pack would."
    ),
    remediation=(
        "Label the namespace pod-security.kubernetes.io/enforce: restricted (baseline where a workload cannot be "
        "restricted)."
    ),
    targets={"Namespace"},
)
def namespace_psa_labels(res: Resource, config: dict[str, Any]) -> list[Violation]:
    have = labels(res)
    if have is UNKNOWN:
        return []
    level = mapping(have).get(PSA_ENFORCE)
    if level is UNKNOWN or level in ("baseline", "restricted"):
        return []
    what = f"is {level}" if level else "is not set"
    return [Violation(f"label {PSA_ENFORCE} {what}", key_path("metadata.labels", PSA_ENFORCE))]


@rule(
    name="namespace-patch-psa-restricted",
    title="Namespace patches keep Pod Security restricted",
    category="network",
    severity="high",
    description=(
        "A NamespacePatch that sets pod-security.kubernetes.io/enforce sets it to restricted: a patch changes a "
        "namespace the stack does not own (kube-system, a shared namespace), where nothing looser may be switched on."
    ),
    remediation=(
        "Set pod-security.kubernetes.io/enforce: restricted in the patch or leave the label out of it; a namespace "
        "that needs baseline is created and owned by its own stack (rule namespace-psa-labels)."
    ),
    targets={"NamespacePatch"},
)
def namespace_patch_psa(res: Resource, config: dict[str, Any]) -> list[Violation]:
    # A patch's props read a label it does not set as UNKNOWN: only what it sets is judged.
    level = dig(res.props, "metadata", "labels", PSA_ENFORCE)
    if level is UNKNOWN or level == "restricted":
        return []
    what = "removes it" if level is None else f"sets it to {level}"
    return [Violation(f"patch of label {PSA_ENFORCE} {what}", key_path("metadata.labels", PSA_ENFORCE))]
