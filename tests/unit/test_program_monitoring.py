"""Monitoring from core to edge in the program: an inventory with a ``monitoring`` section
gets a Prometheus agent on every site, after the site's inference servers, writing to the
core named there; without the agent image nothing is registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime.rpc import unwrap_rpc_secret

from components.program import build_fleet
from policies.engine import evaluate
from policies.resource import Resource, neutralize
from tests.unit.test_inventory import HOST_KEY, PRIVATE_KEY
from tests.unit.test_topology import build_program_error, run

AGENT_IMAGE = "registry.edgefleet.local/edgefleet/prometheus@sha256:" + "ab" * 32
INFERENCE_IMAGE = "registry.edgefleet.local/edgefleet/inference@sha256:" + "cd" * 32
INVENTORY = f"""
fleet: unit
environment: dev
monitoring: {{core: {{address: 10.0.9.5, port: 9090}}}}
defaults: {{ssh: {{user: edgeops, private_key: {{config: sshKeyFleet}}}}}}
sites:
  - name: store
    topology: single-node
    hardware_class: x86-edge
    wave: 1
    monitoring_namespace: monitoring
    distribution: {{name: k3s, version: v1.33.4+k3s1}}
    artifacts:
      - {{name: k3s, arch: amd64, source: https://artifacts.example.internal/k3s, sha256: {"9e" * 32}}}
    hosts:
      - {{name: store-1, address: 10.0.1.10, ssh: {{host_key: "{HOST_KEY}"}}}}
      - {{name: store-2, address: 10.0.1.11, role: agent, ssh: {{host_key: "{HOST_KEY}"}}}}
    workloads:
      - {{model: predictive-maintenance, version: "1", clients: [line-control]}}
"""
CONFIG = {"fleetSecret": "s", "sshKeyFleet": PRIVATE_KEY, "inferenceImage": INFERENCE_IMAGE, "validateModels": "false"}


def build(tmp_path: Path, inventory: str = INVENTORY, **config: str) -> Any:
    path = tmp_path / "unit.yaml"
    path.write_text(inventory)
    return run(
        lambda: build_fleet(pulumi.Config(), "unit"),
        {"inventory": str(path), **CONFIG, **config},
        secret_keys=("fleetSecret", "sshKeyFleet"),
        preview=True,
    )


def test_every_site_gets_an_agent_after_its_inference_servers(tmp_path: Path) -> None:
    r = build(tmp_path, monitoringImage=AGENT_IMAGE)
    agent = r.get("fleet-store-monitoring")
    # (the harness shows the site by its earlier name, its alias)
    assert agent.type == "edge:monitoring:SiteMonitoring" and agent.parent == "store"
    deployment = r.get("fleet-store-monitoring-deployment")
    container = unwrap_rpc_secret(deployment.inputs)["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == AGENT_IMAGE
    # It writes only to the core: its egress policy names exactly the core's address and port.
    egress = unwrap_rpc_secret(r.get("fleet-store-monitoring-network-agent-egress").inputs)["spec"]["egress"]
    assert {"to": [{"ipBlock": {"cidr": "10.0.9.5/32"}}], "ports": [{"protocol": "TCP", "port": 9090}]} in egress
    # The kubelets of both nodes are scraped (the server runs its kubelet here).
    kubelet_peers = [e for e in egress if e.get("ports") == [{"protocol": "TCP", "port": 10250}]]
    assert sorted(p["ipBlock"]["cidr"] for p in kubelet_peers[0]["to"]) == ["10.0.1.10/32", "10.0.1.11/32"]
    # It scrapes the inference server's namespace, which lets the monitoring namespace in.
    config = unwrap_rpc_secret(r.get("fleet-store-monitoring-config").inputs)
    assert "predictive-maintenance" in config["data"]["prometheus.yml"]
    assert r.get("fleet-store-predictive-maintenance-network-allow-monitoring").type.endswith("NetworkPolicy")
    # The agent's objects pass every rule of the pack.
    agent_objects = [
        Resource(x.type, x.name, neutralize(unwrap_rpc_secret(x.inputs)))
        for x in r.registered
        if x.type.startswith("kubernetes:") and x.name.startswith("fleet-store-monitoring")
    ]
    assert agent_objects
    assert [f"{f.rule.name}: {f.resource.name if f.resource else ''}" for f in evaluate(agent_objects).findings] == []


def test_without_a_monitoring_section_no_agent_is_deployed(tmp_path: Path) -> None:
    inventory = INVENTORY.replace("monitoring: {core: {address: 10.0.9.5, port: 9090}}\n", "")
    r = build(tmp_path, inventory)
    assert not [x for x in r.registered if x.name.startswith("fleet-store-monitoring")]
    assert r.get("fleet-store-predictive-maintenance").type == "edge:inference:InferenceService"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (None, "config edgefleet:monitoringImage is not set (fix: pulumi config set monitoringImage "),
        ("prom/prometheus:latest", "config edgefleet:monitoringImage 'prom/prometheus:latest' is not an image pinned"),
    ],
)
def test_an_agent_image_not_pinned_stops_before_anything_is_registered(
    tmp_path: Path, image: str | None, message: str
) -> None:
    config = {**CONFIG, **({"monitoringImage": image} if image else {})}
    error = build_program_error(tmp_path, INVENTORY, **config)
    assert error.startswith(message), error


def test_a_site_without_a_monitoring_namespace_is_an_inventory_error(tmp_path: Path) -> None:
    inventory = INVENTORY.replace("    monitoring_namespace: monitoring\n", "")
    error = build_program_error(tmp_path, inventory, **CONFIG, monitoringImage=AGENT_IMAGE)
    assert "sites[0].monitoring_namespace: is required: the inventory names a monitoring core" in error
    assert "(fix: add monitoring_namespace: monitoring" in error
