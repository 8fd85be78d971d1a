"""Where things live in Kubernetes objects, for the rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import wraps
from typing import Any

from policies.resource import PATCH_SUFFIX, UNKNOWN, Resource, dig, is_patch, items, mapping, reveal
from policies.rules import ANY_KUBERNETES, Violation, key_path

# Where each workload kind keeps its pod spec.
POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "ReplicationController": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
WORKLOADS = frozenset(POD_SPEC_PATHS)
# What the pod-spec rules read: the workload kinds by name, and any other Kubernetes object
# (patches of workloads, PodTemplates, custom resources) in which a pod spec is found.
POD_TARGETS = WORKLOADS | {ANY_KUBERNETES}
LONG_RUNNING = frozenset({"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController"})
# Provider components whose objects are registered (and checked) one by one, and Helm releases
# whose objects are never seen (rule no-opaque-helm-release): a pod spec inside their inputs is
# not looked for, so nothing is judged twice or under the wrong name.
NOT_SEARCHED = frozenset({"yaml", "kustomize", "helm.sh"})
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


@dataclass(frozen=True)
class PodSpec:
    """A pod spec inside a resource: the spec (may be UNKNOWN or None), its dotted path, and the
    metadata of its pod template (the Pod's own for a Pod) with that path."""

    spec: Any
    path: str
    metadata: Any
    metadata_path: str


def _fixed(res: Resource, steps: tuple[str, ...]) -> PodSpec:
    meta_steps = (*steps[:-1], "metadata")
    return PodSpec(dig(res.props, *steps), ".".join(steps), dig(res.props, *meta_steps), ".".join(meta_steps))


def _looks_like_pod_spec(value: Mapping[str, Any]) -> bool:
    return any(isinstance(c, Mapping) for c in items(value.get("containers", None)))


def _search(value: Any, steps: tuple[str | int, ...], out: list[tuple[Any, tuple[str | int, ...]]]) -> None:
    value = reveal(value)
    if isinstance(value, Mapping):
        if steps and _looks_like_pod_spec(value):
            out.append((value, steps))
            return
        for k, v in value.items():
            if not steps and k in ("apiVersion", "kind", "metadata", "status"):
                continue
            _search(v, (*steps, str(k)), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _search(v, (*steps, i), out)


def _dotted(steps: tuple[str | int, ...]) -> str:
    path = ""
    for step in steps:
        path = f"{path}[{step}]" if isinstance(step, int) else key_path(path, step)
    return path


def pod_specs(res: Resource) -> list[PodSpec]:
    """Every pod spec of a Kubernetes resource: where a workload kind (or its patch) keeps it,
    else wherever one is found (``containers`` of mappings), e.g. in a custom resource's
    ``spec.template.spec`` or a list of templates."""
    if not res.type.startswith("kubernetes:"):
        return []
    kind = res.kind[: -len(PATCH_SUFFIX)] if is_patch(res.type) else res.kind
    if kind in POD_SPEC_PATHS:
        return [_fixed(res, POD_SPEC_PATHS[kind])]
    if res.type.split(":")[1].split("/")[0] in NOT_SEARCHED:
        return []
    found: list[tuple[Any, tuple[str | int, ...]]] = []
    _search(res.props, (), found)
    out = []
    for spec, steps in found:
        meta_steps = (*steps[:-1], "metadata") if steps[-1] == "spec" else None
        metadata = dig(res.props, *meta_steps) if meta_steps else None
        out.append(PodSpec(spec, _dotted(steps), metadata, _dotted(meta_steps) if meta_steps else ""))
    return out


def per_pod_spec(
    check: Callable[[Resource, PodSpec, dict[str, Any]], list[Violation]],
) -> Callable[..., list[Violation]]:
    """A rule over one pod spec as a rule over a resource: applied to each of its pod specs."""

    @wraps(check)
    def run(res: Resource, config: dict[str, Any]) -> list[Violation]:
        return [v for pod in pod_specs(res) for v in check(res, pod, config)]

    return run


def pod_template_metadata(res: Resource) -> Any:
    """The pod template's metadata of a workload kind."""
    return _fixed(res, POD_SPEC_PATHS[res.kind]).metadata


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
