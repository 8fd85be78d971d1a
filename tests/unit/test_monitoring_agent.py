"""The site agent's objects: prometheus.yml that promtool accepts, the site's labels, sizing per
hardware class, egress-only network, least-privilege RBAC, and a pod the policy pack passes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.monitoring import core
from components.monitoring.agent import (
    PROFILES,
    AgentArgs,
    AgentError,
    CoreEndpoint,
    agent_flags,
    prometheus_config,
    render,
    wal_bytes,
)
from components.monitoring.component import SiteMonitoring
from components.monitoring.rules import SiteExpectation
from tests.unit.test_serving import TestSite, policy_findings, run_program

IMAGE = "registry.edgefleet.local/edgefleet/prometheus@sha256:" + "ab" * 32
# Installed by scripts/bootstrap (scripts/apt-packages.txt): missing, the tests fail rather than skip.
PROMTOOL = shutil.which("promtool") or "promtool"


def args(**kw: Any) -> AgentArgs:
    base: dict[str, Any] = {
        "site": "plant-a",
        "wave": 2,
        "hardware_class": "x86-edge",
        "latency_class": "control",
        "image": IMAGE,
        "core": CoreEndpoint("10.20.0.5", 9090),
        "nodes": {"plant-a-1": "10.0.1.11", "plant-a-2": "10.0.1.12"},
        "scrape_namespaces": ["predictive-maintenance", "quality-control"],
    }
    return AgentArgs(**{**base, **kw})


def _seconds(d: str) -> int:
    return int(d[:-1]) * {"s": 1, "m": 60, "h": 3600}[d[-1]]


def _bytes(q: str) -> int:
    return int(q[:-2]) * {"Mi": 2**20, "Gi": 2**30}[q[-2:]]


@pytest.mark.parametrize("hardware_class", sorted(PROFILES))
def test_rendered_prometheus_yml_passes_promtool(tmp_path: Path, hardware_class: str) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(render(args(hardware_class=hardware_class))["config"]["data"]["prometheus.yml"])
    # --syntax-only: the token file exists only inside the pod.
    result = subprocess.run([PROMTOOL, "check", "config", "--syntax-only", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_config_passes_promtool(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    files = core.core_files(
        core.CoreArgs(rules_dir=str(rules_dir)),
        {"control": 0.01},
        [SiteExpectation("plant-a", "control", {"predictive-maintenance": ["2"]})],
    )
    path = tmp_path / "core.yml"
    path.write_text(files.pop("prometheus.yml"))
    for name, text in files.items():
        Path(name).write_text(text)
    result = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_every_series_carries_the_site_labels_and_goes_to_the_core() -> None:
    cfg = prometheus_config(args())
    assert cfg["global"]["external_labels"] == {
        "site": "plant-a",
        "wave": "2",
        "hardware_class": "x86-edge",
        "latency_class": "control",
    }
    assert [rw["url"] for rw in cfg["remote_write"]] == ["http://10.20.0.5:9090/api/v1/write"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"inference", "kubelet", "cadvisor", "node"}
    assert jobs["inference"]["dns_sd_configs"][0]["names"] == [
        "inference-pods.predictive-maintenance.svc.cluster.local",
        "inference-pods.quality-control.svc.cluster.local",
    ]
    assert [t["targets"] for t in jobs["cadvisor"]["static_configs"]] == [["10.0.1.11:10250"], ["10.0.1.12:10250"]]
    assert jobs["node"]["metrics_path"] == "/metrics/resource"


def test_core_accepts_samples_as_old_as_the_longest_outage_window() -> None:
    cfg = core.core_config()
    longest = max(_seconds(p.outage_window) for p in PROFILES.values())
    assert _seconds(cfg["storage"]["tsdb"]["out_of_order_time_window"]) == longest
    assert "--web.enable-remote-write-receiver" in core.core_flags("c.yml", "data", "127.0.0.1:9090")


def test_wal_keeps_the_outage_window_and_fits_its_volume() -> None:
    for name, p in PROFILES.items():
        flags = agent_flags(p, "c.yml", "/wal", ":9090")
        assert f"--storage.agent.retention.max-time={p.outage_window}" in flags, name
        need = wal_bytes(p.series, _seconds(p.scrape_interval), _seconds(p.outage_window))
        assert need <= _bytes(p.wal_size), f"{name}: {need} bytes of WAL do not fit {p.wal_size}"
    gateway, server = PROFILES["gateway"], PROFILES["x86-server"]
    assert _bytes(gateway.memory) < _bytes(server.memory) and gateway.max_shards < server.max_shards


def test_deployment_volume_and_limits_follow_the_hardware_class() -> None:
    pod = render(args(hardware_class="gateway"))["deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["resources"]["limits"] == {"cpu": "100m", "memory": "128Mi"}
    assert {v["name"]: v for v in pod["volumes"]}["wal"]["emptyDir"] == {"sizeLimit": "512Mi"}
    assert "--storage.agent.retention.max-time=6h" in c["args"] and "--enable-feature=agent" in c["args"]


def test_config_change_restarts_the_pod() -> None:
    def digest(a: AgentArgs) -> str:
        return render(a)["deployment"]["spec"]["template"]["metadata"]["annotations"]["edgefleet.io/config-sha256"]

    assert digest(args()) != digest(args(core=CoreEndpoint("10.20.0.6", 9090)))


def test_network_is_egress_only_to_the_core_dns_kubelets_and_inference_pods() -> None:
    m = render(args())
    deny = m["network-default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    egress = m["network-agent-egress"]["spec"]
    assert egress["policyTypes"] == ["Egress"] and "ingress" not in egress
    core_rule, dns, kubelets, pods = egress["egress"]
    assert core_rule == {"to": [{"ipBlock": {"cidr": "10.20.0.5/32"}}], "ports": [{"protocol": "TCP", "port": 9090}]}
    assert dns["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert kubelets == {
        "to": [{"ipBlock": {"cidr": "10.0.1.11/32"}}, {"ipBlock": {"cidr": "10.0.1.12/32"}}],
        "ports": [{"protocol": "TCP", "port": 10250}],
    }
    assert pods["ports"] == [{"protocol": "TCP", "port": 8080}] and len(pods["to"]) == 2
    for rule in egress["egress"]:
        assert rule["to"] and rule["ports"]


def test_rbac_is_only_kubelet_metrics() -> None:
    m = render(args())
    assert m["cluster-role"]["rules"] == [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]
    assert m["cluster-role-binding"]["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-agent", "namespace": "monitoring"}
    ]
    assert not [k for k, v in m.items() if v["kind"] in ("Role", "RoleBinding")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: CoreEndpoint("core.example"), "monitoring.core.address"),
        (lambda: CoreEndpoint("10.0.0.1", 0), "monitoring.core.port"),
        (lambda: args(hardware_class="mainframe"), "hardware_class"),
        (lambda: args(nodes={}), "no node address"),
        (lambda: args(nodes={"n": "node-1.local"}), "not an IP address"),
        (lambda: args(scrape_namespaces=["Bad_NS"]), "scrape namespace"),
    ],
)
def test_bad_args_name_the_field_and_the_fix(make, message: str) -> None:
    with pytest.raises(AgentError, match=message) as err:
        make()
    assert "(fix: " in str(err.value)


def deploy(hardware_class: str = "x86-edge"):
    def program() -> Any:
        site = TestSite("plant-a")
        mon = SiteMonitoring(
            "plant-a-monitoring",
            args(hardware_class=hardware_class),
            site.provider,
            pulumi.ResourceOptions(parent=site),
        )
        return mon.namespace

    return run_program(program)


def test_component_registers_every_object_on_the_site_provider() -> None:
    run = deploy()
    assert run.value == "monitoring"
    kinds = sorted(r.kind for r in run.k8s())
    assert kinds == sorted(
        [
            "Namespace",
            "NetworkPolicy",
            "NetworkPolicy",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "Service",
            "ConfigMap",
            "Deployment",
        ]
    )
    assert all("plant-a-k8s" in r.provider for r in run.k8s())
    (comp,) = [r for r in run.registered if r.type == "edge:monitoring:SiteMonitoring"]
    assert comp.name == "plant-a-monitoring"
    services = [r.inputs for r in run.k8s("Service")]
    assert {s["metadata"]["namespace"] for s in services} == {"predictive-maintenance", "quality-control"}
    assert all(s["spec"]["clusterIP"] == "None" for s in services)


@pytest.mark.parametrize("hardware_class", sorted(PROFILES))
def test_agent_passes_the_policy_pack(hardware_class: str) -> None:
    assert policy_findings(deploy(hardware_class).registered) == []


def test_policy_pack_sees_a_weakened_agent() -> None:
    """The pack judges what is rendered: an agent pod that mounts the API token is refused."""
    run = deploy()
    (dep,) = [r for r in run.registered if r.kind == "Deployment"]
    dep.inputs["spec"]["template"]["spec"]["automountServiceAccountToken"] = True
    assert any(f.startswith("no-service-account-token-automount") for f in policy_findings(run.registered))
