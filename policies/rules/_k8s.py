"""Where things live in Kubernetes objects, for the rules."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from policies.model import UNKNOWN, Resource, dig, items, mapping

# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
WORKLOADS = frozenset(POD_SPEC_PATHS)
LONG_RUNNING = frozenset({"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"})
REPLICATED = frozenset({"Deployment", "StatefulSet", "ReplicaSet"})
NAMESPACED = WORKLOADS | {
    "Service",
    "ConfigMap",
    "Secret",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Ingress",
    "Role",
    "RoleBinding",
}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def pod_spec(res: Resource) -> tuple[Any, str]:
    """The pod spec of a workload and its dotted path (spec may be UNKNOWN or None)."""
    path = POD_SPEC_PATHS[res.kind]
    return dig(res.props, *path), ".".join(path)


def pod_template_metadata(res: Resource) -> Any:
    path = POD_SPEC_PATHS[res.kind]
    return dig(res.props, *path[:-1], "metadata") if res.kind != "Pod" else dig(res.props, "metadata")


def containers(spec: Any, base: str, lists: tuple[str, ...] = CONTAINER_LISTS) -> Iterator[tuple[dict[str, Any], str]]:
    """Every container of a pod spec with its path; unknown lists or entries are skipped."""
    for key in lists:
        for i, c in enumerate(items(dig(spec, key))):
            if isinstance(c, dict):
                yield c, f"{base}.{key}[{i}]"


def container_label(c: dict[str, Any], path: str) -> str:
    name = c.get("name")
    return f"container {name!r}" if isinstance(name, str) else path


def labels(res: Resource) -> Any:
    return dig(res.props, "metadata", "labels")


def annotations(res: Resource) -> Any:
    return dig(res.props, "metadata", "annotations")


def object_name(res: Resource) -> Any:
    """``metadata.name`` (Pulumi may auto-name: then the resource name, or UNKNOWN)."""
    name = dig(res.props, "metadata", "name")
    return res.name if name is None else name


def namespace(res: Resource) -> Any:
    """The namespace a namespaced object lands in; unset means the provider's default."""
    meta = dig(res.props, "metadata")
    if meta is UNKNOWN or meta is None:
        # No metadata at all: the object is not known yet (a preview against a cluster that
        # does not exist yet), not an object in the default namespace.
        return UNKNOWN
    ns = dig(res.props, "metadata", "namespace")
    if ns is UNKNOWN:
        return UNKNOWN
    return ns if isinstance(ns, str) and ns else "default"


def selector_matches(selector: Any, pod_labels: Any) -> bool | None:
    """Whether a label selector (``matchLabels`` only, or a plain map) selects these labels;
    ``None`` when that cannot be known."""
    selector = mapping(selector) if selector is not UNKNOWN else UNKNOWN
    if selector is UNKNOWN or pod_labels is UNKNOWN:
        return None
    match = selector.get("matchLabels", selector if "matchExpressions" not in selector else {})
    if match is UNKNOWN:
        return None
    want = mapping(match)
    have = mapping(pod_labels)
    for k, v in want.items():
        if v is UNKNOWN or have.get(k) is UNKNOWN:
            return None
        if have.get(k) != v:
            return False
    if selector.get("matchExpressions"):
        return None  # set-based selectors are not evaluated; never a false failure
    return True
