"""What runs on each site: the model versions the catalog and its canary choose, proven before
anything is deployed.

:func:`plan_fleet_workloads` does all the checking up front, in one pass over the fleet: the
catalog, the registry settings, every site's version choice, and every (model, version)
validated with onnxruntime (sha256, signature, p99 latency times the site's hardware factor
within the site's latency budget). Any problem raises :class:`pulumi.RunError` naming model,
version and site before a single resource is registered. The program then creates one
:class:`components.serving.InferenceService` per planned workload on its site's provider.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pulumi

from components.catalog import (
    CACHE,
    HARDWARE_FACTORS,
    CatalogEntry,
    LoadedCatalog,
    ModelError,
    SiteRef,
    fetch_verified,
    load_catalog,
    select_versions,
    validate_model,
)
from components.inventory import Host, Inventory, LoadedInventory, Site, Workload
from components.network import ClusterDns
from components.serving import GpuSpec, InferenceArgs, InferenceArgsError, ModelRegistry

# The device plugin's resource and the runtime class per GPU vendor.
GPU_RESOURCES: dict[str, tuple[str, str | None]] = {
    "nvidia": ("nvidia.com/gpu", "nvidia"),
    "amd": ("amd.com/gpu", None),
    "intel": ("gpu.intel.com/i915", None),
}
# Where each distribution runs its cluster DNS (MicroShift: the OpenShift DNS operator's pods,
# which listen on 5353 behind the DNS Service's port 53).
CLUSTER_DNS: dict[str, ClusterDns] = {
    "k3s": ClusterDns(),
    "k0s": ClusterDns(),
    "microshift": ClusterDns("openshift-dns", {"dns.operator.openshift.io/daemonset-dns": "default"}, 5353),
}


@dataclass(frozen=True)
class PlannedWorkload:
    """A workload of a site with the catalog version it runs (the pin, or the canary)."""

    site: Site
    workload: Workload
    entry: CatalogEntry


@dataclass(frozen=True)
class WorkloadSettings:
    image: str
    catalog: Path
    validate: bool
    registry: ModelRegistry | None


def plan_workloads(inventory: Inventory, catalog: LoadedCatalog) -> dict[str, list[PlannedWorkload]]:
    """Each site's workloads with the version it runs: its pin, or the model's canary version
    where the canary selects the site. Raises :class:`pulumi.RunError` listing every problem."""
    problems: list[str] = []
    pins: dict[str, dict[str, str]] = {}
    for site in inventory.sites:
        pins[site.name] = {}
        for wl in site.workloads:
            if wl.model in pins[site.name]:
                problems.append(
                    f"site {site.name!r}: model {wl.model!r} is listed twice "
                    "(fix: keep one workload per model and site)"
                )
            pins[site.name][wl.model] = wl.version
    refs = [SiteRef(s.name, s.wave) for s in inventory.sites]
    chosen: dict[tuple[str, str], str] = {}
    for model in sorted({wl.model for s in inventory.sites for wl in s.workloads}):
        try:
            canary = catalog.model(model).canary
        except ModelError as exc:
            users = sorted(s for s, p in pins.items() if model in p)
            problems.append(f"site(s) {', '.join(map(repr, users))}: {exc}")
            continue
        for site_name, version in select_versions(model, refs, pins, canary).items():
            chosen[(site_name, model)] = version
    plan: dict[str, list[PlannedWorkload]] = {}
    for site in inventory.sites:
        plan[site.name] = []
        for wl in site.workloads:
            chosen_version = chosen.get((site.name, wl.model))
            if chosen_version is None:
                continue  # the model is unknown: reported above
            try:
                plan[site.name].append(PlannedWorkload(site, wl, catalog.entry(wl.model, chosen_version)))
            except ModelError as exc:
                problems.append(f"site {site.name!r}: {exc}")
    if problems:
        raise pulumi.RunError("cannot choose model versions:\n  " + "\n  ".join(problems))
    return plan


def validate_planned(plan: dict[str, list[PlannedWorkload]], catalog: LoadedCatalog, cache_dir: Path) -> None:
    """Validate every (model, version) the plan deploys, on every site that runs it. The
    artifact is resolved once per version (``s3://`` ones fetched and verified, using
    AWS_ENDPOINT_URL when set) and measured once (the measurement is cached by sha256)."""
    by_version: dict[tuple[str, str], list[PlannedWorkload]] = defaultdict(list)
    for planned in plan.values():
        for p in planned:
            by_version[(p.entry.model, p.entry.version)].append(p)
    failures: list[str] = []
    for (model, version), users in sorted(by_version.items()):
        entry = users[0].entry
        sites = ", ".join(repr(p.site.name) for p in users)
        if entry.spec.uri.startswith("s3://"):
            try:
                path = fetch_verified(
                    entry.spec.uri,
                    entry.spec.sha256,
                    cache_dir / "models",
                    s3_endpoint=os.environ.get("AWS_ENDPOINT_URL") or None,
                )
            except ModelError as exc:
                failures.append(
                    f"model {model!r} version {version!r} for site(s) {sites}: " + "; ".join(map(str, exc.problems))
                )
                continue
        else:
            path = catalog.root / entry.spec.uri
        for p in users:
            try:
                validate_model(
                    entry,
                    path,
                    budget_ms=p.site.latency_budget_ms,
                    hardware_factor=HARDWARE_FACTORS[p.site.hardware_class],
                    cache_dir=cache_dir / "model-validation",
                    site=p.site.name,
                )
            except ModelError as exc:
                failures.append(
                    f"model {model!r} version {version!r} at site {p.site.name!r}: " + "; ".join(map(str, exc.problems))
                )
    if failures:
        raise pulumi.RunError("model validation failed; nothing was deployed:\n  " + "\n  ".join(failures))


def gpu_hosts(site: Site) -> list[Host]:
    """The hosts whose GPUs workloads use: those of the first GPU vendor listed."""
    vendors = [h.gpu.vendor for h in site.hosts if h.gpu is not None]
    if not vendors:
        raise pulumi.RunError(
            f"site {site.name!r} has no GPU host (fix: add `gpu: {{vendor: nvidia, count: 1}}` to a host)"
        )
    return [h for h in site.hosts if h.gpu is not None and h.gpu.vendor == vendors[0]]


def gpu_spec(site: Site) -> GpuSpec:
    """A GPU per replica on the site's GPU hosts: the labels they all carry select them, and
    their taints are tolerated."""
    hosts = gpu_hosts(site)
    vendor = hosts[0].gpu.vendor  # type: ignore[union-attr]
    common = set(hosts[0].labels.items())
    for h in hosts[1:]:
        common &= set(h.labels.items())
    tolerations: dict[str, dict[str, str]] = {}
    for h in hosts:
        for taint in h.taints:
            key_value, effect = taint.rsplit(":", 1)
            key, eq, value = key_value.partition("=")
            t = (
                {"key": key, "operator": "Equal", "value": value, "effect": effect}
                if eq
                else {"key": key, "operator": "Exists", "effect": effect}
            )
            tolerations[taint] = t
    resource, runtime_class = GPU_RESOURCES[vendor]
    return GpuSpec(resource, 1, runtime_class, dict(sorted(common)), tuple(tolerations[k] for k in sorted(tolerations)))


def pod_security_version(site: Site) -> str:
    """The Kubernetes minor the site runs, to pin the Pod Security Standards version:
    ``v1.33.4+k3s1`` -> ``v1.33``; MicroShift 4.N ships Kubernetes 1.(N+13)."""
    version = site.distribution.version
    if site.distribution.name == "microshift":
        return f"v1.{int(version.split('.')[1]) + 13}"
    return ".".join(version.split("+")[0].split(".")[:2])


def inference_args(planned: PlannedWorkload, image: str, registry: ModelRegistry | None) -> InferenceArgs:
    site, wl, entry = planned.site, planned.workload, planned.entry
    return InferenceArgs(
        site=site.name,
        topology=site.topology,
        model=entry.model,
        version=entry.version,
        uri=entry.spec.uri,
        sha256=entry.spec.sha256,
        image=image,
        cpu=entry.spec.resources.cpu,
        memory=entry.spec.resources.memory,
        replicas=wl.replicas,
        max_replicas=wl.max_replicas,
        gpu=gpu_spec(site) if wl.gpu else None,
        clients=tuple(wl.clients),
        monitoring_namespace=site.monitoring_namespace,
        vpa=site.vpa,
        # Least privilege: only a model that comes from the registry opens a path to it.
        registry=registry if entry.spec.uri.startswith("s3://") else None,
        dns=CLUSTER_DNS[site.distribution.name],
        pod_security_version=pod_security_version(site),
    )


def gpu_capacity_warning(planned: PlannedWorkload, args: InferenceArgs) -> str | None:
    """A warning when the site has fewer GPUs than the workload's replicas need."""
    if args.gpu is None:
        return None
    available = sum(h.gpu.count for h in gpu_hosts(planned.site) if h.gpu)
    if args.replicas * args.gpu.count <= available:
        return None
    return (
        f"site {args.site!r}: model {args.model!r} needs {args.replicas * args.gpu.count} GPU(s) for {args.replicas} "
        f"replica(s) but the site has {available}; the others stay Pending"
    )


def plan_fleet_workloads(
    inventory: LoadedInventory, settings: WorkloadSettings, *, cache_dir: Path | None = None
) -> dict[str, list[InferenceArgs]]:
    """Each site's InferenceService arguments, every one checked first (see the module
    docstring); ``cache_dir`` holds fetched models and validation results (default:
    $EDGEFLEET_CACHE)."""
    inv = inventory.inventory
    if not any(s.workloads for s in inv.sites):
        return {}
    try:
        catalog = load_catalog(settings.catalog, check_files=settings.validate)
    except ModelError as exc:
        raise pulumi.RunError("invalid model catalog:\n" + str(exc)) from None
    plan = plan_workloads(inv, catalog)
    args: dict[str, list[InferenceArgs]] = {}
    problems: list[str] = []
    for site_name, planned in plan.items():
        args[site_name] = []
        for p in planned:
            if p.entry.spec.uri.startswith("s3://") and settings.registry is None:
                problems.append(
                    f"model {p.entry.model!r} version {p.entry.version!r} at site {site_name!r} comes "
                    f"from {p.entry.spec.uri} but pods may not reach the model registry: config "
                    "edgefleet:modelRegistryCidr is not set (fix: pulumi config set modelRegistryCidr "
                    "<registry address>/32, or serve a repository-path version, which the image carries)"
                )
                continue
            try:
                a = inference_args(p, settings.image, settings.registry)
            except InferenceArgsError as exc:
                problems.append(str(exc))
                continue
            args[site_name].append(a)
            warning = gpu_capacity_warning(p, a)
            if warning:
                pulumi.log.warn(warning)
    if problems:
        raise pulumi.RunError("cannot deploy workloads:\n  " + "\n  ".join(problems))
    if settings.validate:
        validate_planned(plan, catalog, cache_dir or CACHE)
    return args
