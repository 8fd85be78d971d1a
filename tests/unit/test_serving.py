"""InferenceService under Pulumi mocks: what it registers on a site, and that the policy pack
finds nothing wrong with any of it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pytest

from components.network import ClusterDns, RegistryEgress
from components.serving import (
    FETCH_RESOURCES,
    GpuSpec,
    InferenceArgs,
    InferenceArgsError,
    InferenceService,
    ModelRegistry,
    render,
)
from policies.engine import evaluate
from policies.resource import Resource, Secret, neutralize
from tests.mocks import run_mocked

IMAGE = "registry.edgefleet.local/edgefleet/inference@sha256:" + "a" * 64
SHA = "b" * 64
GPU = GpuSpec(
    node_selector={"edgefleet.io/accelerator": "nvidia-l4"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"},),
)
REGISTRY = ModelRegistry(RegistryEgress("10.0.5.20/32", 9000), "http://10.0.5.20:9000")


def sample(**changes: Any) -> InferenceArgs:
    """An HA site's workload: two replicas, clients, monitoring, registry egress."""
    base = InferenceArgs(
        site="plant-a",
        topology="ha",
        model="quality-control",
        version="3",
        uri="s3://models/quality-control/3/model.onnx",
        sha256=SHA,
        image=IMAGE,
        cpu="250m",
        memory="128Mi",
        replicas=2,
        max_replicas=6,
        clients=("vision",),
        monitoring_namespace="monitoring",
        registry=REGISTRY,
        pod_security_version="v1.33",
    )
    return replace(base, **changes)


# --- the mock harness (also used by test_network.py and test_workload_plan.py) ---------------------


@dataclass(frozen=True)
class Registered:
    """One resource the program registered, as the mocks saw it."""

    type: str
    name: str
    inputs: dict[str, Any]
    provider: str

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]

    def policy_resource(self) -> Resource:
        """As the rules see it, with the numbers as the program wrote them (the mocks' wire
        format turns every number into a float)."""
        return Resource(self.type, self.name, _as_written(neutralize(self.inputs)), cluster=self.provider)


def _as_written(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_written(v) for v in value]
    return value


class Recorder(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.registered: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.registered.append(Registered(args.typ, args.name, dict(args.inputs), args.provider or ""))
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


@dataclass
class Run:
    registered: list[Registered]
    value: Any

    def k8s(self, kind: str | None = None) -> list[Registered]:
        return [r for r in self.registered if r.type.startswith("kubernetes:") and (kind is None or r.kind == kind)]

    def one(self, kind: str, name_suffix: str = "") -> dict[str, Any]:
        (found,) = [r for r in self.k8s(kind) if r.name.endswith(name_suffix)]
        return found.inputs


def run_program(
    program: Callable[[], Any], config: dict[str, str] | None = None, secret_keys: list[str] | None = None
) -> Run:
    """Run ``program`` under Pulumi mocks (project ``edgefleet``) and return what it registered
    and the resolved value of what it returned."""
    mocks = Recorder()
    value = run_mocked(program, mocks, config=config, secret_keys=secret_keys or ())
    return Run(mocks.registered, value)


class TestSite(pulumi.ComponentResource):
    """Stands in for EdgeSite: a parent component with the site's Kubernetes provider."""

    __test__ = False

    def __init__(self, name: str):
        super().__init__("test:site:Site", name, {}, None)
        self.resource_name = name
        self.provider = k8s.Provider(f"{name}-k8s", kubeconfig="{}", opts=pulumi.ResourceOptions(parent=self))


def policy_findings(registered: list[Registered]) -> list[str]:
    """Every finding of every rule (advisory ones too) over the Kubernetes objects registered."""
    report = evaluate([r.policy_resource() for r in registered if r.type.startswith("kubernetes:")])
    return [f"{f.rule.name}: {f.resource.label if f.resource else 'stack'}: {f.message}" for f in report.findings]


def deploy(*args_list: InferenceArgs | Callable[[], InferenceArgs]) -> Run:
    """One InferenceService per args (or per args factory, for args holding outputs, which
    must be made inside the program), each on its own site; returns the services' outputs."""

    def program() -> Any:
        outs = []
        for item in args_list:
            args = item() if callable(item) else item
            site = TestSite(args.site)
            svc = InferenceService(
                f"{args.site}-{args.model}", args, pulumi.ResourceOptions(parent=site, provider=site.provider)
            )
            outs.append(
                pulumi.Output.all(
                    svc.namespace,
                    svc.service_name,
                    svc.endpoint,
                    *[r.urn for r in svc.resources.values()],
                    site.provider.urn,
                )
            )
        return pulumi.Output.all(*outs)

    return run_program(program)


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


# --- tests ------------------------------------------------------------------------------------


def test_every_hardening_field_is_set():
    run = deploy(sample())
    deployment = run.one("Deployment")
    spec = pod(deployment)
    assert spec["automountServiceAccountToken"] is False
    assert run.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == run.one("ServiceAccount")["metadata"]["name"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    (init,), (server,) = spec["initContainers"], spec["containers"]
    for c in (init, server):
        assert c["image"] == IMAGE
        assert c["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
            c["resources"]["limits"]
        )
    assert server["resources"] == {
        "requests": {"cpu": "250m", "memory": "128Mi"},
        "limits": {"cpu": "500m", "memory": "128Mi"},
    }
    assert init["resources"] == FETCH_RESOURCES
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    probes = {
        k: (server[k]["httpGet"]["path"], server[k]["httpGet"]["port"])
        for k in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": ("/v2/health/live", "http"),
        "livenessProbe": ("/v2/health/live", "http"),
        "readinessProbe": ("/v2/health/ready", "http"),
    }
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 0 < pre_stop < spec["terminationGracePeriodSeconds"]
    grace = server["command"][server["command"].index("--grace-seconds") + 1]
    assert pre_stop + float(grace) < spec["terminationGracePeriodSeconds"]
    # The model: fetched and verified by the init container, mounted read-only by the server,
    # and checked against the same digest once more when the server loads it.
    assert init["command"] == [
        "python",
        "-m",
        "inference.fetch",
        "--uri",
        "s3://models/quality-control/3/model.onnx",
        "--sha256",
        SHA,
        "--dest",
        "/models/quality-control/3/model.onnx",
    ]
    assert server["command"][:3] == ["python", "-m", "inference"]
    assert f"quality-control:3={SHA}" in server["command"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all(set(v) == {"name", "emptyDir"} for v in volumes.values())  # no hostPath or anything else
    mounts = {(m["name"], m["mountPath"], m.get("readOnly", False)) for m in server["volumeMounts"]}
    assert ("models", "/models", True) in mounts
    assert ("models", "/models", False) in {
        (m["name"], m["mountPath"], m.get("readOnly", False)) for m in init["volumeMounts"]
    }
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://10.0.5.20:9000"} in init["env"]
    assert "env" not in server
    for obj in (deployment, deployment["spec"]["template"]):
        assert {
            k: obj["metadata"]["labels"][k]
            for k in (
                "app.kubernetes.io/name",
                "app.kubernetes.io/version",
                "app.kubernetes.io/part-of",
                "app.kubernetes.io/component",
                "app.kubernetes.io/managed-by",
            )
        } == {
            "app.kubernetes.io/name": "quality-control",
            "app.kubernetes.io/version": "3",
            "app.kubernetes.io/part-of": "edgefleet",
            "app.kubernetes.io/component": "inference-server",
            "app.kubernetes.io/managed-by": "pulumi",
        }


def test_namespace_enforces_restricted_pod_security_and_holds_everything():
    run = deploy(sample())
    ns = run.one("Namespace")["metadata"]
    assert ns["name"] == "quality-control"
    assert {k: v for k, v in ns["labels"].items() if k.startswith("pod-security")} == {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "v1.33",
        "pod-security.kubernetes.io/audit": "restricted",
        "pod-security.kubernetes.io/audit-version": "v1.33",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "v1.33",
    }
    others = [r for r in run.k8s() if r.kind != "Namespace"]
    assert {r.kind for r in others} == {
        "NetworkPolicy",
        "ServiceAccount",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert all(r.inputs["metadata"]["namespace"] == "quality-control" for r in others)


def test_children_are_named_by_role_parented_and_on_the_site_provider():
    run = deploy(sample())
    provider_urn = run.value[0][-1]
    urns = run.value[0][3:-1]
    assert all("edge:inference:InferenceService$kubernetes:" in urn for urn in urns)
    assert {r.provider.rsplit("::", 1)[0] for r in run.k8s()} == {provider_urn}
    assert sorted(r.name for r in run.k8s()) == sorted(
        f"plant-a-quality-control-{role}"
        for role in (
            "namespace",
            "network-default-deny",
            "network-allow-dns",
            "network-allow-clients",
            "network-allow-monitoring",
            "network-allow-registry",
            "service-account",
            "deployment",
            "service",
            "hpa",
            "pdb",
        )
    )


def test_outputs_name_the_namespace_service_and_endpoint():
    run = deploy(sample())
    namespace, service, endpoint = run.value[0][:3]
    assert (namespace, service) == ("quality-control", "quality-control")
    assert endpoint == "http://quality-control.quality-control.svc.cluster.local:8080"
    service_spec = run.one("Service")["spec"]
    assert service_spec["type"] == "ClusterIP"
    assert service_spec["ports"] == [{"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}]
    assert service_spec["selector"] == run.one("Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("gpu", [GPU, None], ids=["gpu", "cpu"])
def test_gpu_fields_only_for_gpu_workloads(gpu: GpuSpec | None):
    run = deploy(sample(gpu=gpu))
    deployment = run.one("Deployment")
    spec = pod(deployment)
    server, init = spec["containers"][0], spec["initContainers"][0]
    if gpu is None:
        text = json.dumps(deployment)
        assert "nvidia" not in text and "gpu" not in text
        assert not {"runtimeClassName", "nodeSelector", "tolerations"} & set(spec)
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    else:
        assert (
            server["resources"]["limits"]["nvidia.com/gpu"] == "1" == server["resources"]["requests"]["nvidia.com/gpu"]
        )
        assert "nvidia.com/gpu" not in json.dumps(init["resources"])
        assert spec["runtimeClassName"] == "nvidia"
        assert spec["nodeSelector"] == {"edgefleet.io/accelerator": "nvidia-l4"}
        assert spec["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
        ]
        # All GPUs may be taken: an update replaces pods instead of surging an extra one.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 1, "maxSurge": 0}


@pytest.mark.parametrize("topology", ["ha", "single-node"])
def test_replicas_spread_over_hosts_only_on_ha_sites(topology: str):
    spec = pod(deploy(sample(topology=topology)).one("Deployment"))
    if topology == "ha":
        (tsc,) = spec["topologySpreadConstraints"]
        assert tsc["topologyKey"] == "kubernetes.io/hostname" and tsc["maxSkew"] == 1
        assert tsc["labelSelector"]["matchLabels"] == {
            "app.kubernetes.io/name": "quality-control",
            "app.kubernetes.io/component": "inference-server",
        }
    else:
        assert "topologySpreadConstraints" not in spec


@pytest.mark.parametrize("replicas,max_replicas,expect_max", [(1, None, 2), (3, None, 6), (2, 5, 5), (50, None, 100)])
def test_hpa_and_pdb_follow_replicas(replicas: int, max_replicas: int | None, expect_max: int):
    run = deploy(sample(replicas=replicas, max_replicas=max_replicas))
    deployment = run.one("Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns it; an update never scales it back
    hpa = run.one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (replicas, expect_max)
    assert hpa["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    pdbs = run.k8s("PodDisruptionBudget")
    if replicas > 1:
        (pdb,) = pdbs
        assert pdb.inputs["spec"]["maxUnavailable"] == 1
        assert pdb.inputs["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    else:
        assert pdbs == []


def test_gateway_runs_one_small_replica_without_autoscaling():
    gateway = sample(site="tower-1", topology="gateway", replicas=1, max_replicas=None, clients=())
    run = deploy(gateway)
    deployment = run.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert run.k8s("HorizontalPodAutoscaler") == [] and run.k8s("PodDisruptionBudget") == []
    assert "topologySpreadConstraints" not in pod(deployment)
    requests = pod(deployment)["containers"][0]["resources"]["requests"]
    standard = pod(deploy(sample(topology="single-node")).one("Deployment"))["containers"][0]["resources"]["requests"]
    assert int(requests["cpu"].rstrip("m")) < int(standard["cpu"].rstrip("m"))
    assert requests["memory"] == standard["memory"]  # the model must still fit
    peers = run.one("NetworkPolicy", "allow-clients")["spec"]["ingress"][0]["from"]
    assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "quality-control"}}}]


@pytest.mark.parametrize("vpa", [True, False])
def test_vpa_only_when_the_site_runs_it(vpa: bool):
    run = deploy(sample(vpa=vpa))
    found = [r for r in run.k8s() if r.type == "kubernetes:autoscaling.k8s.io/v1:VerticalPodAutoscaler"]
    if not vpa:
        assert found == []
        return
    (obj,) = found
    assert obj.inputs["metadata"]["namespace"] == "quality-control"
    assert obj.inputs["spec"]["targetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "quality-control"}
    assert obj.inputs["spec"]["updatePolicy"] == {"updateMode": "Off"}


def test_registry_credentials_live_in_a_secret_the_init_container_reads():
    def args() -> InferenceArgs:
        return sample(
            registry=ModelRegistry(
                REGISTRY.egress,
                REGISTRY.endpoint,
                pulumi.Output.secret("AKIDEXAMPLE"),
                pulumi.Output.secret("not-a-real-secret-key"),
            )
        )

    run = deploy(args)
    secret = run.one("Secret")
    assert secret["metadata"]["namespace"] == "quality-control"
    data = neutralize(secret["stringData"])
    assert isinstance(data, Secret)  # kept secret in the state
    assert set(data.value) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    spec = pod(run.one("Deployment"))
    assert spec["initContainers"][0]["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    assert "envFrom" not in spec["containers"][0]
    assert "not-a-real-secret-key" not in json.dumps(run.one("Deployment"))


def test_sample_ha_gpu_and_gateway_sites_pass_every_policy_rule():
    ha = sample(vpa=True)
    gpu = sample(
        site="plant-b",
        topology="single-node",
        gpu=GPU,
        replicas=1,
        max_replicas=None,
        registry=None,
        uri="models/quality-control/3/model.onnx",
        monitoring_namespace=None,
    )
    gateway = sample(site="tower-1", topology="gateway", replicas=1, max_replicas=None, clients=())
    run = deploy(ha, gpu, gateway)
    assert len(run.k8s("Deployment")) == 3
    assert policy_findings(run.registered) == []


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"image": "registry.edgefleet.local/edgefleet/inference:1.0"}, "is not pinned by digest"),
        ({"registry": None}, "no registry egress"),
        ({"topology": "gateway", "replicas": 1, "max_replicas": None}, "accepts calls from its own namespace only"),
        ({"topology": "gateway", "clients": ()}, "runs one replica"),
        ({"max_replicas": 1}, "max_replicas 1 is outside 2-100"),
        ({"sha256": "B" * 64}, "is not 64 lowercase hex"),
        ({"cpu": "a lot"}, "is not a CPU quantity"),
        ({"clients": ("Vision",)}, "namespace 'Vision' is not a DNS label"),
        # The service deletes its namespace with the model: never one the stack does not own.
        (
            {"model": "metrics", "monitoring_namespace": "metrics"},
            "namespace 'metrics' is the site's monitoring namespace; "
            "the service would adopt it and delete it with the model",
        ),
        ({"model": "kube-system"}, "namespace 'kube-system' is the cluster DNS namespace"),
        ({"model": "kube-public"}, "namespace 'kube-public' is a namespace of the cluster or its add-ons"),
        ({"namespace": "default"}, "namespace 'default' is a namespace of the cluster or its add-ons"),
        (
            {"model": "openshift-dns", "dns": ClusterDns("openshift-dns", {}, 5353)},
            "namespace 'openshift-dns' is the cluster DNS",
        ),
    ],
)
def test_arguments_that_cannot_work_are_refused(changes: dict[str, Any], message: str):
    with pytest.raises(InferenceArgsError, match=message):
        sample(**changes)


def test_render_is_pure_and_ordered():
    manifests = render(sample())
    assert next(iter(manifests)) == "namespace"
    assert list(manifests).index("deployment") > max(
        list(manifests).index(r) for r in manifests if r.startswith("network-")
    )
    assert render(sample()) == manifests
