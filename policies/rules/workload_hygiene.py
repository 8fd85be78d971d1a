"""Workload hygiene: images, resources, probes, placement, labels, credentials, disruption."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from components.contract import IMAGE_DIGEST
from policies.resource import UNKNOWN, Resource, dig, items, mapping, reveal
from policies.rules import Violation, key_path, rule
from policies.rules._k8s import (
    LONG_RUNNING,
    NAMESPACED,
    POD_TARGETS,
    WORKLOADS,
    PodSpec,
    container_label,
    containers,
    labels,
    namespace,
    object_name,
    per_pod_spec,
    pod_specs,
    pod_template_metadata,
    selector_matches,
)

RECOMMENDED_LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/version", "app.kubernetes.io/part-of")
# Words that make a variable or key name a credential (compared per word of the name).
CREDENTIAL_WORDS = frozenset(
    {"password", "passwd", "passphrase", "secret", "token", "credential", "credentials", "apikey"}
)
CREDENTIAL_PAIRS = ("api_key", "access_key", "secret_key", "private_key", "client_secret", "auth_token")
# Names that point at a credential rather than hold one.
REFERENCE_SUFFIXES = ("_file", "_path", "_dir", "_name", "_ref")
# Values that are credentials whatever their name.
CREDENTIAL_VALUES = re.compile(
    r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----"  # PEM private keys
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{36}\b"  # GitHub tokens
    r"|\bK10[0-9a-f]{64}::"  # K3s secure join tokens
)
GPU_RESOURCE = re.compile(r"(^|[./])gpu($|[./-])|^nvidia\.com/|^amd\.com/gpu|^gpu\.intel\.com/")


def is_credential_name(name: str) -> bool:
    norm = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if norm.endswith(REFERENCE_SUFFIXES):
        return False
    return bool(CREDENTIAL_WORDS.intersection(norm.split("_"))) or any(p in norm for p in CREDENTIAL_PAIRS)


def looks_like_credential(value: Any) -> bool:
    return isinstance(value, str) and CREDENTIAL_VALUES.search(value) is not None


def image_reference(image: str) -> str:
    """``registry/repository`` of an image reference, with Docker Hub's implicit parts."""
    name = image.split("@", 1)[0]
    first, sep, _ = name.partition("/")
    if not sep:
        return f"docker.io/library/{name}"
    if "." in first or ":" in first or first == "localhost":
        return name
    return f"docker.io/{name}"


@rule(
    name="image-pinned-by-digest",
    title="Images pinned by digest",
    category="workload",
    severity="high",
    description="Every container image must be referenced by sha256 digest so what runs is exactly what was reviewed.",
    remediation="Reference the image as registry/name@sha256:<digest> (a tag may stay in front: name:tag@sha256:...).",
    targets=POD_TARGETS,
)
@per_pod_spec
def image_pinned(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    return [
        Violation(f"{container_label(c, p)} image {c['image']} is not pinned by digest", f"{p}.image")
        for c, p in containers(spec, base)
        if isinstance(reveal(c.get("image")), str) and not IMAGE_DIGEST.search(reveal(c["image"]))
    ]


@rule(
    name="image-from-allowed-registry",
    title="Images from allowed registries",
    category="workload",
    severity="high",
    description="Container images must come from the fleet's allowed registries (pack config: allowedRegistries).",
    remediation=(
        "Mirror the image into an allowed registry and reference it there, or add the registry to allowedRegistries in "
        "policies/config/<stack>.json."
    ),
    targets=POD_TARGETS,
    config_schema={
        "allowedRegistries": {
            "type": "array",
            "items": {"type": "string"},
            "default": ["registry.edgefleet.local"],
            "description": "Registry prefixes (host or host/path) images may come from.",
        }
    },
)
@per_pod_spec
def image_registry(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    allowed = [a.rstrip("/") for a in config.get("allowedRegistries", [])]
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        image = reveal(c.get("image"))
        if not isinstance(image, str):
            continue
        ref = image_reference(image)
        if not any(ref == a or ref.startswith(a + "/") for a in allowed):
            out.append(
                Violation(
                    f"{container_label(c, p)} image {image} is not from an allowed registry "
                    f"({', '.join(allowed) or 'none configured'})",
                    f"{p}.image",
                )
            )
    return out


@rule(
    name="container-resources",
    title="Requests and limits set",
    category="workload",
    severity="medium",
    description=(
        "Every container must request CPU and memory and set CPU and memory limits, so one workload cannot starve a "
        "small edge node."
    ),
    remediation=(
        "Set resources.requests.cpu, resources.requests.memory, resources.limits.cpu and resources.limits.memory."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def container_resources(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base, ("containers", "initContainers")):
        resources = dig(c, "resources")
        if resources is UNKNOWN:
            continue
        missing = [
            f"{section}.{name}"
            for section in ("requests", "limits")
            for name in ("cpu", "memory")
            if dig(resources, section) is not UNKNOWN and dig(resources, section, name) is None
        ]
        if missing:
            out.append(
                Violation(f"{container_label(c, p)} has no resources.{', resources.'.join(missing)}", f"{p}.resources")
            )
    return out


@rule(
    name="gpu-limits",
    title="GPU limits match GPU requests",
    category="workload",
    severity="medium",
    description=(
        "A container that requests a GPU must set the same GPU limit; extended resources are not overcommitted."
    ),
    remediation=(
        "Set resources.limits.<gpu resource> equal to resources.requests.<gpu resource> (e.g. nvidia.com/gpu: 1)."
    ),
    targets=POD_TARGETS,
)
@per_pod_spec
def gpu_limits(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base, ("containers", "initContainers")):
        requests = mapping(dig(c, "resources", "requests"))
        limits = dig(c, "resources", "limits")
        if limits is UNKNOWN:
            continue
        for name, amount in requests.items():
            if not GPU_RESOURCE.search(name) or amount is UNKNOWN:
                continue
            limit = dig(limits, name)
            if limit is None:
                out.append(
                    Violation(
                        f"{container_label(c, p)} requests {name}: {amount} without a limit", f"{p}.resources.limits"
                    )
                )
            elif limit is not UNKNOWN and str(limit) != str(amount):
                out.append(
                    Violation(
                        f"{container_label(c, p)} requests {name}: {amount} but limits it to {limit}",
                        f"{p}.resources.limits",
                    )
                )
    return out


def _probe_rule(probe: str, res: Resource) -> list[Violation]:
    if res.kind not in LONG_RUNNING:
        return []
    return [
        Violation(f"{container_label(c, p)} has no {probe}", f"{p}.{probe}")
        for pod in pod_specs(res)
        for c, p in containers(pod.spec, pod.path, ("containers",))
        if dig(c, probe) is None
    ]


@rule(
    name="readiness-probe",
    title="Readiness probe set",
    category="workload",
    severity="medium",
    description=(
        "Long-running containers need a readiness probe so traffic only reaches a model server that has loaded its "
        "model."
    ),
    remediation="Add readinessProbe (e.g. httpGet /v2/health/ready for the inference server).",
    targets=LONG_RUNNING,
)
def readiness_probe(res: Resource, config: dict[str, Any]) -> list[Violation]:
    return _probe_rule("readinessProbe", res)


@rule(
    name="liveness-probe",
    title="Liveness probe set",
    category="workload",
    severity="low",
    description="Long-running containers need a liveness probe so a wedged process is restarted.",
    remediation="Add livenessProbe (e.g. httpGet /v2/health/live), distinct from the readiness probe.",
    targets=LONG_RUNNING,
)
def liveness_probe(res: Resource, config: dict[str, Any]) -> list[Violation]:
    return _probe_rule("livenessProbe", res)


@rule(
    name="no-bare-pods",
    title="No bare pods",
    category="workload",
    severity="medium",
    description=(
        "Pods must be managed by a controller (Deployment, StatefulSet, DaemonSet, Job) so they are rescheduled."
    ),
    remediation="Wrap the pod spec in a Deployment (or a Job for run-to-completion work).",
    targets={"Pod"},
)
def no_bare_pods(res: Resource, config: dict[str, Any]) -> list[Violation]:
    owners = dig(res.props, "metadata", "ownerReferences")
    if owners is UNKNOWN or items(owners):
        return []
    return [Violation("pod has no controller", "metadata.ownerReferences")]


@rule(
    name="no-default-namespace",
    title="Nothing in the default namespace",
    category="workload",
    severity="medium",
    description=(
        "Workloads and their objects must live in a dedicated namespace with its own NetworkPolicies and PSA labels."
    ),
    remediation="Set metadata.namespace to the application's namespace.",
    targets=NAMESPACED,
)
def no_default_namespace(res: Resource, config: dict[str, Any]) -> list[Violation]:
    explicit = dig(res.props, "metadata", "namespace")
    if namespace(res) != "default":
        return []
    how = "has no namespace (lands in default)" if explicit in (None, "") else "is in the default namespace"
    return [Violation(f"{res.kind} {how}", "metadata.namespace")]


@rule(
    name="hpa-bounds",
    title="HPA bounds are sane",
    category="workload",
    severity="low",
    description=(
        "A HorizontalPodAutoscaler needs a target, minReplicas >= 1, maxReplicas >= minReplicas and maxReplicas within "
        "the cap."
    ),
    remediation="Set spec.scaleTargetRef, spec.minReplicas >= 1 and minReplicas <= spec.maxReplicas <= maxReplicasCap.",
    targets={"HorizontalPodAutoscaler"},
    config_schema={
        "maxReplicasCap": {
            "type": "integer",
            "minimum": 1,
            "default": 100,
            "description": "Largest maxReplicas an HPA may set.",
        }
    },
)
def hpa_bounds(res: Resource, config: dict[str, Any]) -> list[Violation]:
    spec = dig(res.props, "spec")
    if spec is UNKNOWN:
        return []
    out = []
    low = dig(spec, "minReplicas")
    low = 1 if low is None else low
    high = dig(spec, "maxReplicas")
    cap = int(config.get("maxReplicasCap", 100))
    if dig(spec, "scaleTargetRef", "name") is None:
        out.append(Violation("HPA has no scaleTargetRef.name", "spec.scaleTargetRef"))
    if isinstance(low, int) and low < 1:
        out.append(Violation(f"minReplicas is {low}", "spec.minReplicas"))
    if high is None:
        out.append(Violation("HPA has no maxReplicas", "spec.maxReplicas"))
    elif isinstance(high, int):
        if isinstance(low, int) and high < low:
            out.append(Violation(f"maxReplicas {high} is below minReplicas {low}", "spec.maxReplicas"))
        if high > cap:
            out.append(Violation(f"maxReplicas {high} is above the cap of {cap}", "spec.maxReplicas"))
    return out


@rule(
    name="recommended-labels",
    title="Recommended labels set",
    category="workload",
    severity="low",
    description=(
        "Workloads carry app.kubernetes.io/name, /version and /part-of so fleet tooling can find and group them."
    ),
    remediation="Add metadata.labels app.kubernetes.io/name, app.kubernetes.io/version and app.kubernetes.io/part-of.",
    targets=WORKLOADS,
)
def recommended_labels(res: Resource, config: dict[str, Any]) -> list[Violation]:
    have = labels(res)
    if have is UNKNOWN:
        return []
    missing = [k for k in RECOMMENDED_LABELS if k not in mapping(have)]
    return [Violation(f"missing labels {', '.join(missing)}", "metadata.labels")] if missing else []


@rule(
    name="no-env-credentials",
    title="No credentials in env literals",
    category="workload",
    severity="high",
    description=(
        "Credentials must not be written as literal environment values: they end up in the pod spec, in etcd and in "
        "every describe."
    ),
    remediation="Put the value in a Secret and use env[].valueFrom.secretKeyRef (or mount it as a file).",
    targets=POD_TARGETS,
)
@per_pod_spec
def no_env_credentials(res: Resource, pod: PodSpec, config: dict[str, Any]) -> list[Violation]:
    spec, base = pod.spec, pod.path
    out = []
    for c, p in containers(spec, base):
        for i, env in enumerate(items(c.get("env"))):
            name, value = dig(env, "name"), dig(env, "value")
            if not isinstance(value, str) or not value or not isinstance(name, str):
                continue
            if is_credential_name(name) or looks_like_credential(value):
                # Name only: the value is a credential and must not be printed.
                out.append(
                    Violation(
                        f"{container_label(c, p)} sets credential {name} as a literal value", f"{p}.env[{i}].value"
                    )
                )
    return out


@rule(
    name="no-configmap-credentials",
    title="No credentials in ConfigMaps",
    category="workload",
    severity="high",
    description="ConfigMaps are not secret: they must hold no passwords, tokens or private keys.",
    remediation="Move the entry into a Secret and reference it from the pod.",
    targets={"ConfigMap"},
)
def no_configmap_credentials(res: Resource, config: dict[str, Any]) -> list[Violation]:
    out = []
    for section in ("data", "binaryData"):
        for key, value in mapping(dig(res.props, section)).items():
            if value is UNKNOWN or value in (None, ""):
                continue
            if is_credential_name(key) or looks_like_credential(reveal(value)):
                out.append(Violation(f"ConfigMap key {key} holds a credential", key_path(section, key)))
    return out


@rule(
    name="pdb-for-multi-replica",
    title="Multi-replica workloads have a PDB",
    category="workload",
    severity="medium",
    description=(
        "A Deployment or StatefulSet with two or more replicas (or an HPA minimum of two) needs a PodDisruptionBudget, "
        "so node drains during edge upgrades keep it serving."
    ),
    remediation=(
        "Add a PodDisruptionBudget in the same namespace whose selector matches the pod template labels (e.g. "
        "maxUnavailable: 1)."
    ),
    targets={"Deployment", "StatefulSet", "PodDisruptionBudget", "HorizontalPodAutoscaler"},
    scope="stack",
)
def pdb_for_multi_replica(resources: Sequence[Resource], config: dict[str, Any]) -> list[Violation]:
    pdbs = [r for r in resources if r.key == "PodDisruptionBudget"]
    hpas = [r for r in resources if r.key == "HorizontalPodAutoscaler"]
    out = []
    for res in resources:
        if res.key not in ("Deployment", "StatefulSet"):
            continue
        replicas = dig(res.props, "spec", "replicas")
        ns = namespace(res)
        if replicas is UNKNOWN or ns is UNKNOWN:
            continue
        count = 1 if replicas is None else replicas
        for hpa in hpas:
            if (
                hpa.cluster == res.cluster
                and namespace(hpa) == ns
                and dig(hpa.props, "spec", "scaleTargetRef", "kind") == res.kind
                and dig(hpa.props, "spec", "scaleTargetRef", "name") == object_name(res)
            ):
                low = dig(hpa.props, "spec", "minReplicas")
                if low is UNKNOWN:
                    count = UNKNOWN
                    break
                count = max(count, 1 if low is None else low)
        if count is UNKNOWN or not isinstance(count, int) or count < 2:
            continue
        pod_labels = dig(pod_template_metadata(res), "labels")
        covered = any(
            pdb.cluster == res.cluster
            and namespace(pdb) in (ns, UNKNOWN)
            and selector_matches(dig(pdb.props, "spec", "selector"), pod_labels) is not False
            for pdb in pdbs
        )
        if not covered:
            out.append(
                Violation(
                    f"{res.label} runs {count} replicas and no PodDisruptionBudget selects its pods",
                    "spec.replicas",
                    res,
                )
            )
    return out


# Helm releases whose objects are created out of the engine's sight, by type group: the
# provider's Release installs the chart itself; K3s's HelmChart and Flux's HelmRelease have an
# in-cluster controller do it.
OPAQUE_HELM = {"Release": "helm.sh/", "HelmChart": "helm.cattle.io/", "HelmRelease": "helm.toolkit.fluxcd.io/"}


@rule(
    name="no-opaque-helm-release",
    title="No Helm releases the rules cannot see into",
    category="workload",
    severity="high",
    description=(
        "A Helm release installed by the provider (kubernetes:helm.sh/v3:Release) or by an in-cluster controller (K3s "
        "HelmChart, Flux HelmRelease) creates objects no rule ever sees; its chart and values are opaque, so it is "
        "refused unless allowed by name (pack config: allowedReleases) or exempted."
    ),
    remediation=(
        "Deploy the chart with kubernetes.helm.v4.Chart, or render it with `helm template` and apply the YAML, so "
        "every object it creates is checked; after reviewing the chart, list the release as namespace/name in "
        "allowedReleases of policies/config/<stack>.json (or, for HelmChart and HelmRelease objects, exempt them with "
        "edgefleet.io/policy-exempt)."
    ),
    targets=set(OPAQUE_HELM),
    config_schema={
        "allowedReleases": {
            "type": "array",
            "items": {"type": "string"},
            "default": [],
            "description": "Reviewed Helm releases (namespace/name) that may be installed opaquely.",
        }
    },
)
def no_opaque_helm_release(res: Resource, config: dict[str, Any]) -> list[Violation]:
    group = OPAQUE_HELM.get(res.kind)
    if group is None or not res.type.split(":")[1].startswith(group):
        return []
    if res.kind == "Release":
        name, ns, chart = dig(res.props, "name"), dig(res.props, "namespace"), dig(res.props, "chart")
        name = res.name if name is None else name
        ns = "default" if ns in (None, "") else ns
    else:
        name, ns = object_name(res), namespace(res)
        chart = dig(res.props, "spec", "chart")
        chart = dig(chart, "spec", "chart") if isinstance(chart, Mapping) else chart  # Flux nests it
    if name is UNKNOWN or ns is UNKNOWN:
        return []
    if f"{ns}/{name}" in set(config.get("allowedReleases", [])):
        return []
    what = f"chart {chart}" if isinstance(chart, str) else "a chart"
    return [Violation(f"{res.kind} {ns}/{name} installs {what} whose objects no policy rule sees")]
