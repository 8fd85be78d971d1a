"""A site stack (``edgefleet:site``) names its resources exactly as the whole-fleet stack does,
so a site moves between the two by state alone: machine ids are computed over the whole
inventory even when the stack manages one site."""

from __future__ import annotations

from pathlib import Path

import pulumi

from components.program import build_fleet
from tests.unit.test_inventory import HOST_KEY, PRIVATE_KEY
from tests.unit.test_topology import run

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx5Z2V0aGVyLWEtZGlmZmVyZW50LWtleS1mb3ItdGVzdA"
INVENTORY = f"""
fleet: unit
environment: dev
defaults: {{ssh: {{user: edgeops, private_key: {{config: sshKeyFleet}}}}}}
sites:
  - name: store-a
    topology: single-node
    distribution: {{name: k3s, version: v1.33.4+k3s1}}
    artifacts: [{{name: k3s, arch: amd64, source: https://artifacts.example.internal/k3s, sha256: {"9e" * 32}}}]
    hosts: [{{name: a-1, address: 10.0.1.10, ssh: {{host_key: "{HOST_KEY}"}}}}]
  - name: store-b
    topology: single-node
    distribution: {{name: k3s, version: v1.33.4+k3s1}}
    artifacts: [{{name: k3s, arch: amd64, source: https://artifacts.example.internal/k3s, sha256: {"9e" * 32}}}]
    hosts:
      - {{name: b-1, address: 10.0.2.10, ssh: {{host_key: "{HOST_KEY}"}}}}
      - {{name: b-2, address: 10.0.2.11, role: agent, ssh: {{host_key: "{OTHER_KEY}"}}}}
"""


def install_names(tmp_path: Path, **config: str) -> set[str]:
    path = tmp_path / "unit.yaml"
    path.write_text(INVENTORY)
    r = run(
        lambda: build_fleet(pulumi.Config(), "unit"),
        {"inventory": str(path), "fleetSecret": "s", "sshKeyFleet": PRIVATE_KEY, **config},
        secret_keys=("fleetSecret", "sshKeyFleet"),
        preview=True,
    )
    return {x.real_name for x in r.registered if x.real_name.endswith("-install")}


def test_a_site_stack_names_its_hosts_as_the_whole_fleet_stack_does(tmp_path: Path) -> None:
    whole = install_names(tmp_path)
    # a-1 and b-1 pin the same key (a cloned image): both fall back to ids with their names.
    assert {n for n in whole if n.endswith(("-a-1-install", "-b-1-install"))} == {
        n for n in whole if n.startswith("m-") and ("-a-1-" in n or "-b-1-" in n)
    }
    assert len([n for n in whole if n.endswith(("-a-1-install", "-b-1-install"))]) == 2
    site_b = install_names(tmp_path, site="store-b")
    assert site_b == {n for n in whole if "-a-1-" not in n}
    assert len(site_b) == 2
