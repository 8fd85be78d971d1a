"""plan_fleet_workloads: versions per site (pins and canary), models proven before anything is
registered, and the InferenceServices the fleet's sites get."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

import components.catalog as models
from components.contract import file_sha256
from components.inventory import Inventory, LoadedInventory
from components.program import deploy_workloads, workload_settings
from components.workload_plan import PlannedWorkload, gpu_capacity_warning, inference_args, plan_fleet_workloads
from tests.unit.test_serving import Run, TestSite, pod, policy_findings, run_program

REPO = Path(__file__).resolve().parents[2]
IMAGE = "registry.edgefleet.local/edgefleet/inference@sha256:" + "c" * 64
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
PM, QC = "predictive-maintenance", "quality-control"


def host(name: str, address: str, role: str = "server", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "address": address,
        "role": role,
        "ssh": {"host_key": HOST_KEY, "private_key": {"config": "sshKey"}},
        **extra,
    }


def fleet(**plant_changes: Any) -> dict[str, Any]:
    """An HA plant with a GPU agent (wave 0), a store (wave 1) and a MicroShift gateway (wave 2)."""
    plant = {
        "name": "plant-a",
        "topology": "ha",
        "wave": 0,
        "hardware_class": "x86-server",
        "latency_class": "control",
        "distribution": {"name": "k3s", "version": "v1.33.4+k3s1"},
        "monitoring_namespace": "monitoring",
        "vpa": True,
        "hosts": [
            host("pa-1", "10.1.0.1"),
            host("pa-2", "10.1.0.2"),
            host("pa-3", "10.1.0.3"),
            host(
                "pa-gpu",
                "10.1.0.4",
                "agent",
                labels={"edgefleet.io/accelerator": "nvidia-l4"},
                taints=["nvidia.com/gpu=present:NoSchedule"],
                gpu={"vendor": "nvidia", "count": 2},
            ),
        ],
        "workloads": [
            {"model": PM, "version": "1", "replicas": 2, "max_replicas": 4, "clients": ["line-control"]},
            {"model": QC, "version": "1", "replicas": 2, "gpu": True, "clients": ["vision"]},
        ],
        **plant_changes,
    }
    store = {
        "name": "store-b",
        "topology": "single-node",
        "wave": 1,
        "hardware_class": "x86-edge",
        "latency_class": "video",
        "distribution": {"name": "k3s", "version": "v1.33.4+k3s1"},
        "hosts": [host("sb-1", "10.2.0.1")],
        "workloads": [{"model": PM, "version": "1", "clients": ["checkout"]}],
    }
    tower = {
        "name": "tower-c",
        "topology": "gateway",
        "wave": 2,
        "hardware_class": "gateway",
        # Budgets are judged on real measurements: "batch" leaves this machine's load out of the
        # structural tests here (too slow for its site: test_a_model_too_slow_for_the_site_names_the_site).
        "latency_class": "batch",
        "distribution": {"name": "microshift", "version": "4.19.0"},
        "hosts": [host("tc-gw", "10.3.0.1")],
        "workloads": [{"model": PM, "version": "1"}],
    }
    return {"fleet": "unit", "environment": "prod", "sites": [plant, store, tower]}


def loaded(tmp_path: Path, data: dict[str, Any]) -> LoadedInventory:
    return LoadedInventory(path=tmp_path / "sites" / "unit.yaml", inventory=Inventory.model_validate(data))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory with a copy of the repository's catalog and model files."""
    root = tmp_path / "project"
    for rel in (
        "models/catalog.yaml",
        f"models/{PM}/1/model.onnx",
        f"models/{PM}/2/model.onnx",
        f"models/{QC}/1/model.onnx",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, root / rel)
    return root


def edit_catalog(project: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = project / "models" / "catalog.yaml"
    data = yaml.safe_load(path.read_text())
    change({m["name"]: m for m in data["models"]})
    path.write_text(yaml.safe_dump(data))


def deploy_fleet(inventory: LoadedInventory, project: Path, cache: Path, **config: str) -> Run:
    """What the program does: plan and check every site's workloads, then deploy them on each site."""

    def program() -> bool:
        need_image = any(s.workloads for s in inventory.inventory.sites)
        planned = plan_fleet_workloads(
            inventory, workload_settings(pulumi.Config(), project, need_image=need_image), cache_dir=cache
        )
        for site in inventory.inventory.sites:
            deploy_workloads(TestSite(site.name), planned.get(site.name, []))
        return True

    return run_program(program, {"inferenceImage": IMAGE, **config}, ["modelRegistrySecretAccessKey"])


def deployments(run: Run) -> dict[tuple[str, str], dict[str, Any]]:
    """(site, model) -> Deployment inputs."""
    out = {}
    for r in run.k8s("Deployment"):
        labels = r.inputs["metadata"]["labels"]
        out[(labels["edgefleet.io/site"], labels["app.kubernetes.io/name"])] = r.inputs
    return out


def served(run: Run) -> dict[tuple[str, str], tuple[str, str]]:
    """(site, model) -> (version label, digest the server expects)."""
    out = {}
    for key, d in deployments(run).items():
        command = pod(d)["containers"][0]["command"]
        out[key] = (
            d["metadata"]["labels"]["app.kubernetes.io/version"],
            command[command.index("--expect-sha256") + 1].rsplit("=", 1)[1],
        )
    return out


def sha(project: Path, model: str, version: str) -> str:
    return file_sha256(project / "models" / model / version / "model.onnx")


def test_canary_version_reaches_the_canary_wave_only(tmp_path: Path, project: Path):
    edit_catalog(project, lambda m: m[PM].update(canary={"version": "2", "waves": [0]}))
    run = deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    assert served(run) == {
        ("plant-a", PM): ("2", sha(project, PM, "2")),
        ("plant-a", QC): ("1", sha(project, QC, "1")),
        ("store-b", PM): ("1", sha(project, PM, "1")),
        ("tower-c", PM): ("1", sha(project, PM, "1")),
    }


def test_the_fleet_gets_site_aware_services_that_pass_every_policy_rule(tmp_path: Path, project: Path):
    run = deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    d = deployments(run)
    qc = pod(d[("plant-a", QC)])
    assert qc["runtimeClassName"] == "nvidia" and qc["nodeSelector"] == {"edgefleet.io/accelerator": "nvidia-l4"}
    assert qc["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
    ]
    assert qc["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "runtimeClassName" not in pod(d[("plant-a", PM)]) and "topologySpreadConstraints" in pod(d[("plant-a", PM)])
    assert d[("tower-c", PM)]["spec"]["replicas"] == 1
    namespaces = {
        r.inputs["metadata"]["labels"]["edgefleet.io/site"]: r.inputs["metadata"]["labels"][
            "pod-security.kubernetes.io/enforce-version"
        ]
        for r in run.k8s("Namespace")
    }
    assert namespaces == {"plant-a": "v1.33", "store-b": "v1.33", "tower-c": "v1.32"}
    dns_egress = {
        r.provider.rsplit("::", 1)[0].rsplit("::", 1)[-1]: r.inputs["spec"]["egress"][0]
        for r in run.k8s("NetworkPolicy")
        if r.name.endswith("allow-dns")
    }
    assert dns_egress["tower-c-k8s"]["ports"][0]["port"] == 5353  # MicroShift's DNS pods
    assert dns_egress["store-b-k8s"]["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kube-system"
    }
    vpas = [r for r in run.k8s() if r.kind == "VerticalPodAutoscaler"]
    assert sorted(r.name for r in vpas) == [f"plant-a-{PM}-vpa", f"plant-a-{QC}-vpa"]
    assert policy_findings(run.registered) == []


def test_a_tampered_model_stops_the_update_before_anything_is_registered(tmp_path: Path, project: Path):
    edit_catalog(project, lambda m: m[PM]["versions"]["1"].update(sha256=sha(project, QC, "1")))
    with pytest.raises(pulumi.RunError) as err:
        deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    message = str(err.value)
    for site in ("plant-a", "store-b", "tower-c"):
        assert f"model '{PM}' version '1' at site '{site}'" in message
    assert "sha256" in message and QC not in message.split("\n")[0]


def test_validation_can_be_turned_off(tmp_path: Path, project: Path):
    edit_catalog(project, lambda m: m[PM]["versions"]["1"].update(sha256=sha(project, QC, "1")))
    run = deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache", validateModels="false")
    assert len(deployments(run)) == 4


def test_a_model_too_slow_for_the_site_names_the_site(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(models.HARDWARE_FACTORS, "gateway", 1e9)  # a device a billion times slower
    with pytest.raises(pulumi.RunError) as err:
        deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    (line,) = [ln for ln in str(err.value).splitlines() if "exceeds" in ln]
    assert f"model '{PM}' version '1' at site 'tower-c'" in line


def test_each_version_is_measured_once(tmp_path: Path, project: Path, monkeypatch: pytest.MonkeyPatch):
    opened: list[Path] = []
    real = models.open_session
    monkeypatch.setattr(models.validation, "open_session", lambda path: opened.append(Path(path)) or real(path))
    deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    assert sorted(p.parent.parent.name for p in opened) == [PM, QC]  # PM runs on three sites
    deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")
    assert len(opened) == 2  # the next preview reuses the measurements


@pytest.fixture
def s3_catalog(project: Path, monkeypatch: pytest.MonkeyPatch):
    """The PM versions published to an in-process S3 (moto) and the catalog pointing at them."""
    from moto import mock_aws

    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        s3 = models.s3_client()
        s3.create_bucket(Bucket="fleet-models")
        for version in ("1", "2"):
            s3.put_object(
                Bucket="fleet-models",
                Key=f"{PM}/{version}/model.onnx",
                Body=(project / "models" / PM / version / "model.onnx").read_bytes(),
            )
        edit_catalog(
            project,
            lambda m: [m[PM]["versions"][v].update(uri=f"s3://fleet-models/{PM}/{v}/model.onnx") for v in ("1", "2")],
        )
        yield s3


REGISTRY_CONFIG = {
    "modelRegistryCidr": "10.0.5.20/32",
    "modelRegistryPort": "9000",
    "modelRegistryEndpoint": "http://10.0.5.20:9000",
}


def test_s3_models_are_fetched_verified_and_reachable(tmp_path: Path, project: Path, s3_catalog: Any):
    run = deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache", **REGISTRY_CONFIG)
    init = pod(deployments(run)[("store-b", PM)])["initContainers"][0]
    assert init["command"][init["command"].index("--uri") + 1] == f"s3://fleet-models/{PM}/1/model.onnx"
    assert {"name": "AWS_ENDPOINT_URL", "value": "http://10.0.5.20:9000"} in init["env"]
    egress = [
        r.inputs["spec"]["egress"] for r in run.k8s("NetworkPolicy") if r.name == f"store-b-{PM}-network-allow-registry"
    ]
    assert egress == [[{"to": [{"ipBlock": {"cidr": "10.0.5.20/32"}}], "ports": [{"protocol": "TCP", "port": 9000}]}]]
    # Repository-path models need no registry: their namespaces get no registry egress.
    assert not [
        r for r in run.k8s("NetworkPolicy") if r.name.startswith(f"plant-a-{QC}") and r.name.endswith("allow-registry")
    ]


def test_a_tampered_s3_object_names_model_version_and_sites(tmp_path: Path, project: Path, s3_catalog: Any):
    s3_catalog.put_object(
        Bucket="fleet-models",
        Key=f"{PM}/1/model.onnx",
        Body=(project / "models" / QC / "1" / "model.onnx").read_bytes(),
    )
    with pytest.raises(pulumi.RunError) as err:
        deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache", **REGISTRY_CONFIG)
    message = str(err.value)
    assert f"model '{PM}' version '1' for site(s) 'plant-a', 'store-b', 'tower-c'" in message
    assert f"content has sha256 {sha(project, QC, '1')}" in message


def test_s3_models_need_registry_egress(tmp_path: Path, project: Path, s3_catalog: Any):
    with pytest.raises(
        pulumi.RunError, match=f"model '{PM}' version '1' at site 'store-b' .*edgefleet:modelRegistryCidr is not set"
    ):
        deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache")


@pytest.mark.parametrize(
    "config,message",
    [
        ({"inferenceImage": ""}, "config edgefleet:inferenceImage is not set"),
        ({"inferenceImage": "registry.edgefleet.local/edgefleet/inference:1.0"}, "is not pinned by digest"),
        ({"modelRegistryCidr": "0.0.0.0/0"}, "would allow egress to every address"),
        ({"modelRegistryPort": "9000"}, "modelRegistryCidr is not set but the registry's port or endpoint is"),
        ({"modelRegistryCidr": "10.0.5.20/32", "modelRegistryAccessKeyId": "AKIDEXAMPLE"}, "must be set together"),
    ],
)
def test_config_that_cannot_work_is_refused(tmp_path: Path, project: Path, config: dict[str, str], message: str):
    with pytest.raises(pulumi.RunError, match=message):
        deploy_fleet(loaded(tmp_path, fleet()), project, tmp_path / "cache", **config)


def test_a_fleet_without_workloads_needs_no_image(tmp_path: Path, project: Path):
    data = fleet(workloads=[])
    for site in data["sites"]:
        site["workloads"] = []
    run = deploy_fleet(loaded(tmp_path, data), project, tmp_path / "cache", inferenceImage="")
    assert run.k8s() == []


@pytest.mark.parametrize(
    "workloads,message",
    [
        ([{"model": "anomaly", "version": "1"}], "site\\(s\\) 'plant-a': .*no model named 'anomaly'"),
        ([{"model": PM, "version": "7"}], "site 'plant-a': .*has no version '7'"),
        (
            [{"model": PM, "version": "1"}, {"model": PM, "version": "2"}],
            "site 'plant-a': model 'predictive-maintenance' is listed twice",
        ),
    ],
)
def test_workloads_the_catalog_cannot_serve_are_refused(
    tmp_path: Path, project: Path, workloads: list[dict[str, Any]], message: str
):
    with pytest.raises(pulumi.RunError, match=message):
        deploy_fleet(loaded(tmp_path, fleet(workloads=workloads)), project, tmp_path / "cache")


def test_a_model_served_in_the_sites_monitoring_namespace_is_refused(tmp_path: Path, project: Path):
    """Its namespace would be adopted, and deleted with everything in it when the model goes."""
    data = fleet(monitoring_namespace=PM)
    with pytest.raises(pulumi.RunError, match=f"at site plant-a: namespace '{PM}' is the site's monitoring namespace"):
        deploy_fleet(loaded(tmp_path, data), project, tmp_path / "cache")


def test_a_gateway_accepts_no_declared_clients(tmp_path: Path, project: Path):
    data = fleet()
    data["sites"][2]["workloads"][0]["clients"] = ["scada"]
    with pytest.raises(
        pulumi.RunError,
        match="at site tower-c: a gateway site runs one replica and accepts calls from its own namespace only",
    ):
        deploy_fleet(loaded(tmp_path, data), project, tmp_path / "cache")


@pytest.mark.parametrize("replicas,warns", [(2, False), (3, True)])
def test_more_gpu_replicas_than_gpus_is_warned_about(tmp_path: Path, project: Path, replicas: int, warns: bool):
    site = loaded(tmp_path, fleet()).inventory.sites[0]  # two GPUs on its GPU agent
    workload = site.workloads[1].model_copy(update={"replicas": replicas})
    planned = PlannedWorkload(site, workload, models.load_catalog(project / "models" / "catalog.yaml").entry(QC, "1"))
    warning = gpu_capacity_warning(planned, inference_args(planned, IMAGE, None))
    if warns:
        assert (
            warning == f"site 'plant-a': model '{QC}' needs 3 GPU(s) for 3 replica(s) "
            "but the site has 2; the others stay Pending"
        )
    else:
        assert warning is None
