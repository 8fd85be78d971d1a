"""InferenceService: one model version served on one site, hardened and isolated.

What it creates (children ``{name}-<role>``, all in the model's own namespace):

- ``namespace``: Pod Security admission ``restricted`` (enforce, audit, warn, pinned version).
  Never one the stack does not own (the cluster's, the site's monitoring or DNS namespace, see
  ``components.catalog.RESERVED_NAMESPACES``): it is deleted with the model.
- ``network-*``: default-deny ingress and egress plus the declared paths (components/network.py).
- ``service-account``: no API token is mounted anywhere.
- ``registry-credentials``: a Secret with the registry's access key, when one is given.
- ``deployment``: the Open Inference Protocol v2 server, non-root, read-only root filesystem,
  no capabilities, RuntimeDefault seccomp, probes on ``/v2/health/*``, a preStop pause and a
  grace period for draining. An init container fetches the model and verifies its sha256 into
  an emptyDir the server mounts read-only at ``/models``; the server checks the digest again.
- ``service``: ClusterIP on port 8080 (``http``).
- ``hpa`` (CPU 70 %) and ``pdb`` (maxUnavailable 1) when the site can scale: not on gateways.
- ``vpa``: a recommendation-only VerticalPodAutoscaler when the site runs the VPA.

The manifests are rendered by pure functions (:func:`render`); the component only registers them.
Model URIs that are repository paths are read from the server image (which carries the
repository's ``models/`` directory), so they need no network; ``s3://`` URIs are fetched from the
model registry, which needs :class:`ModelRegistry` (egress to its address block).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pulumi
import pulumi_kubernetes as k8s

from components import contract
from components.catalog import reserved_namespace
from components.network import ClusterDns, RegistryEgress, create_network_policies, namespace_policies

TYPE = "edge:inference:InferenceService"
PORT = 8080
PORT_NAME = "http"
RUN_AS = 65532  # the conventional "nonroot" user of distroless-style images
MODELS_DIR = "/models"
PRE_STOP_S = 5  # lets endpoints drop the pod before the server stops accepting
SERVER_GRACE_S = 20  # in-flight requests may take this long after SIGTERM
TERMINATION_GRACE_S = PRE_STOP_S + SERVER_GRACE_S + 5
MAX_REPLICAS_CAP = 100  # the pack's default hpa-bounds cap
CPU_TARGET_PERCENT = 70
PART_OF = "edgefleet"
COMPONENT = "inference-server"
IMAGE = re.compile(
    r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)+"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?" + contract.IMAGE_DIGEST.pattern
)
SHA256 = re.compile(rf"^{contract.SHA256.pattern}\Z")
DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?$")
CPU_QUANTITY = re.compile(r"^(?P<cores>\d+(\.\d+)?)(?P<milli>m?)$")
REGISTRY_SECRET = "model-registry"

Topology = Literal["single-node", "ha", "gateway"]


class InferenceArgsError(ValueError):
    """Arguments an InferenceService cannot be built from; names the value and the fix."""


@dataclass(frozen=True)
class GpuSpec:
    """A GPU per replica and where such GPUs are: the device plugin's resource, the runtime
    class, and the node labels and taints of the GPU hosts."""

    resource: str = "nvidia.com/gpu"
    count: int = 1
    runtime_class: str | None = "nvidia"
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, str], ...] = ()


@dataclass(frozen=True)
class ModelRegistry:
    """The S3 model registry the init container fetches ``s3://`` models from."""

    egress: RegistryEgress
    endpoint: str | None = None  # AWS_ENDPOINT_URL for on-prem S3; None: AWS
    access_key_id: pulumi.Input[str] | None = None
    secret_access_key: pulumi.Input[str] | None = None

    @property
    def has_credentials(self) -> bool:
        return self.access_key_id is not None and self.secret_access_key is not None


@dataclass(frozen=True)
class InferenceArgs:
    """Everything one service needs, independent of the inventory: which model version (and
    its digest), where it runs (site, topology, GPU placement), who may call it, and the
    image. ``cpu``/``memory`` are one replica's needs (the catalog's hint)."""

    site: str
    topology: Topology
    model: str
    version: str
    uri: str
    sha256: str
    image: str
    cpu: str = "250m"
    memory: str = "256Mi"
    replicas: int = 1
    max_replicas: int | None = None
    gpu: GpuSpec | None = None
    clients: tuple[str, ...] = ()
    monitoring_namespace: str | None = None
    vpa: bool = False
    registry: ModelRegistry | None = None
    dns: ClusterDns = field(default_factory=ClusterDns)
    pod_security_version: str = "latest"
    namespace: str | None = None  # default: the model's name

    def __post_init__(self) -> None:
        problems = []
        if not DNS_LABEL.match(self.model):
            problems.append(f"model name {self.model!r} is not a DNS label (fix: lowercase letters, digits and '-')")
        if not LABEL_VALUE.match(self.version) or not self.version:
            problems.append(
                f"version {self.version!r} is not a Kubernetes label value (fix: letters, digits, '.', '_', '-', "
                "starting and ending with a letter or digit)"
            )
        if not SHA256.match(self.sha256):
            problems.append(f"sha256 {self.sha256!r} is not 64 lowercase hex digits (fix: use the catalog's digest)")
        if not IMAGE.match(self.image):
            problems.append(
                f"image {self.image!r} is not pinned by digest (fix: write registry/repository@sha256:<64 hex>)"
            )
        if not 1 <= self.replicas <= MAX_REPLICAS_CAP:
            problems.append(f"replicas {self.replicas} is outside 1-{MAX_REPLICAS_CAP}")
        if self.max_replicas is not None and not self.replicas <= self.max_replicas <= MAX_REPLICAS_CAP:
            problems.append(
                f"max_replicas {self.max_replicas} is outside {self.replicas}-{MAX_REPLICAS_CAP} "
                f"(fix: replicas <= max_replicas <= {MAX_REPLICAS_CAP})"
            )
        if self.topology == "gateway" and (self.replicas != 1 or self.clients):
            problems.append(
                "a gateway site runs one replica and accepts calls from its own namespace only "
                "(fix: set replicas: 1 and no clients)"
            )
        if self.uri.startswith("s3://") and self.registry is None:
            problems.append(
                f"{self.uri} is in the model registry but no registry egress is given "
                "(fix: pass registry=ModelRegistry(...) or a repository path the image carries)"
            )
        for ns in (*self.clients, *([self.monitoring_namespace] if self.monitoring_namespace else []), self.ns):
            if not DNS_LABEL.match(ns):
                problems.append(f"namespace {ns!r} is not a DNS label")
        # The service creates its namespace and deletes it when the model goes: never one it does not own.
        foreign = {
            self.monitoring_namespace: "the site's monitoring namespace",
            self.dns.namespace: "the cluster DNS namespace",
        }
        if self.ns in foreign or reserved_namespace(self.ns):
            what = foreign.get(self.ns, "a namespace of the cluster or its add-ons")
            problems.append(
                f"namespace {self.ns!r} is {what}; the service would adopt it and delete it with the model "
                "(fix: serve the model under another name)"
            )
        try:
            _millicores(self.cpu)
        except InferenceArgsError as exc:
            problems.append(str(exc))
        if problems:
            raise InferenceArgsError(
                f"InferenceService {self.model}:{self.version} at site {self.site}: " + "; ".join(problems)
            )

    @property
    def ns(self) -> str:
        return self.namespace or self.model

    @property
    def gateway(self) -> bool:
        return self.topology == "gateway"

    @property
    def autoscaled(self) -> bool:
        """Gateways run a fixed single replica: the gateway profile has no metrics server."""
        return not self.gateway

    @property
    def max_replica_count(self) -> int:
        if self.max_replicas is not None:
            return self.max_replicas
        return min(2 * self.replicas, MAX_REPLICAS_CAP)

    @property
    def model_path(self) -> str:
        return f"{MODELS_DIR}/{self.model}/{self.version}/model.onnx"


# --- quantities -------------------------------------------------------------------------------


def _millicores(cpu: str) -> int:
    m = CPU_QUANTITY.match(cpu)
    if not m:
        raise InferenceArgsError(
            f"{cpu!r} is not a CPU quantity (fix: write millicores like '250m' or cores like '0.5')"
        )
    value = float(m["cores"])
    return int(value) if m["milli"] else round(value * 1000)


def _cpu(millicores: int) -> str:
    return f"{millicores}m"


def server_resources(args: InferenceArgs) -> dict[str, dict[str, str]]:
    """Requests from the catalog's hint; a CPU limit with room for bursts and a memory limit
    equal to the request (memory is not overcommitted). A gateway is shared with protocol
    adapters: it requests half the CPU and never bursts past the hint. Memory stays at the
    hint on every site: the model must fit."""
    cpu = _millicores(args.cpu)
    if args.gateway:
        requests = {"cpu": _cpu(max(cpu // 2, 50)), "memory": args.memory}
        limits = {"cpu": _cpu(cpu), "memory": args.memory}
    else:
        requests = {"cpu": _cpu(cpu), "memory": args.memory}
        limits = {"cpu": _cpu(max(2 * cpu, 500)), "memory": args.memory}
    if args.gpu is not None:
        # Extended resources are not overcommitted: request and limit are the same count.
        requests[args.gpu.resource] = str(args.gpu.count)
        limits[args.gpu.resource] = str(args.gpu.count)
    return {"requests": requests, "limits": limits}


# Fetching streams the file through sha256: little CPU and memory, only for a moment.
FETCH_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}


# --- manifests --------------------------------------------------------------------------------


def labels(args: InferenceArgs) -> dict[str, str]:
    """The recommended labels, plus the site."""
    return {
        "app.kubernetes.io/name": args.model,
        "app.kubernetes.io/version": args.version,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/component": COMPONENT,
        "app.kubernetes.io/managed-by": "pulumi",
        "edgefleet.io/site": args.site,
    }


def selector(args: InferenceArgs) -> dict[str, str]:
    """The pod selector: stable across versions (a Deployment's selector is immutable)."""
    return {"app.kubernetes.io/name": args.model, "app.kubernetes.io/component": COMPONENT}


def _metadata(args: InferenceArgs, name: str | None = None) -> dict[str, Any]:
    return {"name": name or args.model, "namespace": args.ns, "labels": labels(args)}


def namespace_manifest(args: InferenceArgs) -> dict[str, Any]:
    psa = {
        f"pod-security.kubernetes.io/{mode}{suffix}": value
        for mode in ("enforce", "audit", "warn")
        for suffix, value in (("", "restricted"), ("-version", args.pod_security_version))
    }
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.ns, "labels": {**labels(args), **psa}}}


def service_account_manifest(args: InferenceArgs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(args),
        "automountServiceAccountToken": False,
    }


def registry_secret_manifest(args: InferenceArgs) -> dict[str, Any] | None:
    registry = args.registry
    if registry is None or not registry.has_credentials:
        return None
    # pulumi-kubernetes keeps a Secret's stringData secret in the state whatever the inputs are.
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(args, REGISTRY_SECRET),
        "type": "Opaque",
        "stringData": {
            "AWS_ACCESS_KEY_ID": registry.access_key_id,
            "AWS_SECRET_ACCESS_KEY": registry.secret_access_key,
        },
    }


CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": RUN_AS,
    "runAsGroup": RUN_AS,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def fetch_container(args: InferenceArgs) -> dict[str, Any]:
    """The init container that delivers the model: fetch, verify sha256, write into /models."""
    env = [{"name": "TMPDIR", "value": "/tmp"}, {"name": "HOME", "value": "/tmp"}]
    container: dict[str, Any] = {
        "name": "fetch-model",
        "image": args.image,
        "command": [
            "python",
            "-m",
            "inference.fetch",
            "--uri",
            args.uri,
            "--sha256",
            args.sha256,
            "--dest",
            args.model_path,
        ],
        "resources": FETCH_RESOURCES,
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if args.registry is not None and args.registry.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL", "value": args.registry.endpoint})
    if args.registry is not None and args.registry.has_credentials:
        container["envFrom"] = [{"secretRef": {"name": REGISTRY_SECRET}}]
    container["env"] = env
    return container


def server_container(args: InferenceArgs) -> dict[str, Any]:
    return {
        "name": "server",
        "image": args.image,
        "command": [
            "python",
            "-m",
            "inference",
            "--model-repository",
            MODELS_DIR,
            "--port",
            str(PORT),
            "--grace-seconds",
            str(SERVER_GRACE_S),
            "--expect-sha256",
            f"{args.model}:{args.version}={args.sha256}",
        ],
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "resources": server_resources(args),
        "securityContext": CONTAINER_SECURITY,
        "startupProbe": _http_probe("/v2/health/live", 2, 30),
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        "readinessProbe": _http_probe("/v2/health/ready", 5, 2),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_S}}},
        "volumeMounts": [
            {"name": "models", "mountPath": MODELS_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def pod_spec(args: InferenceArgs) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": args.model,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_S,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [fetch_container(args)],
        "containers": [server_container(args)],
        "volumes": [{"name": "models", "emptyDir": {}}, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if args.topology == "ha":
        spec["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                # A cordoned (draining) node carries a NoSchedule taint and then does not count.
                "nodeTaintsPolicy": "Honor",
                "labelSelector": {"matchLabels": selector(args)},
                "matchLabelKeys": ["pod-template-hash"],
            }
        ]
    if args.gpu is not None:
        if args.gpu.runtime_class:
            spec["runtimeClassName"] = args.gpu.runtime_class
        if args.gpu.node_selector:
            spec["nodeSelector"] = dict(args.gpu.node_selector)
        if args.gpu.tolerations:
            spec["tolerations"] = [dict(t) for t in args.gpu.tolerations]
    return spec


def deployment_manifest(args: InferenceArgs) -> dict[str, Any]:
    """The server Deployment. Under an HPA ``spec.replicas`` is left out: the HPA owns it and
    holds it at ``minReplicas`` or above; an update never scales it back."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(args)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "revisionHistoryLimit": 3,
        "template": {"metadata": {"labels": labels(args)}, "spec": pod_spec(args)},
    }
    if args.gateway:
        # One replica on a constrained host: there is no room to surge a second one.
        spec["strategy"] = {"type": "Recreate"}
    elif args.gpu is not None:
        # Every GPU may be taken: a surge pod could wait forever, so replace one at a time.
        spec["strategy"]["rollingUpdate"] = {"maxUnavailable": 1, "maxSurge": 0}
    if not args.autoscaled:
        spec["replicas"] = args.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _metadata(args), "spec": spec}


def service_manifest(args: InferenceArgs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(args),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(args),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }


def _target(args: InferenceArgs) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": args.model}


def hpa_manifest(args: InferenceArgs) -> dict[str, Any] | None:
    if not args.autoscaled:
        return None
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(args),
        "spec": {
            "scaleTargetRef": _target(args),
            "minReplicas": args.replicas,
            "maxReplicas": args.max_replica_count,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT},
                    },
                }
            ],
        },
    }


def pdb_manifest(args: InferenceArgs) -> dict[str, Any] | None:
    if args.replicas < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(args),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(args)},
            # A crash-looping pod must not block a node drain during an upgrade.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def vpa_manifest(args: InferenceArgs) -> dict[str, Any] | None:
    if not args.vpa:
        return None
    return {
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": _metadata(args),
        "spec": {
            "targetRef": _target(args),
            # Recommendations only: evicting pods to resize them would fight the HPA and the PDB.
            "updatePolicy": {"updateMode": "Off"},
            "resourcePolicy": {
                "containerPolicies": [{"containerName": "server", "controlledResources": ["cpu", "memory"]}]
            },
        },
    }


def network_manifests(args: InferenceArgs) -> dict[str, dict[str, Any]]:
    """The namespace's NetworkPolicies. A gateway accepts calls from its own namespace only."""
    clients = (args.ns,) if args.gateway else args.clients
    meta_labels = {
        k: labels(args)[k] for k in ("app.kubernetes.io/part-of", "app.kubernetes.io/managed-by", "edgefleet.io/site")
    }
    return namespace_policies(
        args.ns,
        selector(args),
        PORT,
        clients=clients,
        monitoring_namespace=args.monitoring_namespace,
        registry=args.registry.egress if args.registry else None,
        dns=args.dns,
        labels=meta_labels,
    )


def render(args: InferenceArgs) -> dict[str, dict[str, Any]]:
    """Every object of the service by role, in creation order."""
    objects: dict[str, dict[str, Any] | None] = {
        "namespace": namespace_manifest(args),
        **{f"network-{role}": m for role, m in network_manifests(args).items()},
        "service-account": service_account_manifest(args),
        "registry-credentials": registry_secret_manifest(args),
        "deployment": deployment_manifest(args),
        "service": service_manifest(args),
        "hpa": hpa_manifest(args),
        "pdb": pdb_manifest(args),
        "vpa": vpa_manifest(args),
    }
    return {role: m for role, m in objects.items() if m is not None}


# --- the component ----------------------------------------------------------------------------

_RESOURCE_CLASSES: dict[tuple[str, str], Any] = {
    ("v1", "Namespace"): k8s.core.v1.Namespace,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
    ("v1", "Secret"): k8s.core.v1.Secret,
    ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "Service"): k8s.core.v1.Service,
    ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
    ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
    ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
}


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


def register(resource_name: str, manifest: Mapping[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """A manifest as its typed Pulumi resource; kinds without an SDK class (CRDs) as a CustomResource."""
    api_version, kind = manifest["apiVersion"], manifest["kind"]
    body = {_snake(k): v for k, v in manifest.items() if k not in ("apiVersion", "kind")}
    cls = _RESOURCE_CLASSES.get((api_version, kind))
    if cls is None:
        return k8s.apiextensions.CustomResource(resource_name, api_version=api_version, kind=kind, opts=opts, **body)
    resource: pulumi.CustomResource = cls(resource_name, **body, opts=opts)
    return resource


def object_name(resource: pulumi.CustomResource) -> pulumi.Output[str]:
    """The name of a Kubernetes object :func:`register` created (every such class has ``metadata``)."""
    meta: pulumi.Output[Any] = resource.metadata  # type: ignore[attr-defined]  # set by each pulumi_kubernetes class
    return meta.apply(lambda m: m["name"] if isinstance(m, dict) else m.name)


class InferenceService(pulumi.ComponentResource):
    """One model version served on one site (see the module docstring for what it creates).
    Pass the site's Kubernetes provider as ``opts.provider``."""

    namespace: pulumi.Output[str]
    service_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: InferenceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__(TYPE, name, {"site": args.site, "model": args.model, "version": args.version}, opts)
        provider = opts.provider if opts is not None else None
        manifests = render(args)

        def child(*depends_on: pulumi.Resource) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(parent=self, provider=provider, depends_on=list(depends_on))

        ns = register(f"{name}-namespace", manifests.pop("namespace"), child())
        policies = create_network_policies(
            f"{name}-network",
            {
                role.removeprefix("network-"): manifests.pop(role)
                for role in list(manifests)
                if role.startswith("network-")
            },
            child(ns),
        )
        sa = register(f"{name}-service-account", manifests.pop("service-account"), child(ns))
        secret = manifests.pop("registry-credentials", None)
        pod_deps: list[pulumi.Resource] = [ns, sa, *policies.values()]
        if secret is not None:
            pod_deps.append(register(f"{name}-registry-credentials", secret, child(ns)))
        # Pods start only once their namespace is isolated and the registry path is open.
        deployment = register(f"{name}-deployment", manifests.pop("deployment"), child(*pod_deps))
        service = register(f"{name}-service", manifests.pop("service"), child(ns))
        self.resources: dict[str, pulumi.CustomResource] = {
            "namespace": ns,
            **{f"network-{r}": p for r, p in policies.items()},
            "service-account": sa,
            "deployment": deployment,
            "service": service,
        }
        for role, manifest in manifests.items():  # hpa, pdb, vpa
            self.resources[role] = register(f"{name}-{role}", manifest, child(deployment))

        self.namespace = object_name(ns)
        self.service_name = object_name(service)
        self.endpoint = pulumi.Output.concat(
            "http://", self.service_name, ".", self.namespace, f".svc.cluster.local:{PORT}"
        )
        self.register_outputs(
            {"namespace": self.namespace, "service_name": self.service_name, "endpoint": self.endpoint}
        )
