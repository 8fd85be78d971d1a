"""Host identity: renaming a host, reordering the servers or changing the registration
address keeps every resource (same names, aliases from earlier releases, same triggers), so
nothing is uninstalled, drained or deleted; remote commands update in place; the uninstall
leaves a machine another resource claimed alone; prod protects what would uninstall."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

import tests.unit.test_topology as topo
from components import remote
from components.distributions import k3s
from components.distributions.bash import LIB
from components.host import CLAIM_FILE, claiming, machine_id, stack_claims, unless_claimed
from components.inventory import LoadedInventory, Site, load_inventory
from tests.unit.test_inventory import HOST_KEY, PRIVATE_KEY, REPO
from tests.unit.test_topology import COMMAND, COPY, Run, build_sites, k3s_config, lab_site

lab = topo.lab  # the fixture
STEPS = ("upload-k3s", "drain", "install", "node", "kubeconfig")


@pytest.fixture
def machines(lab: LoadedInventory) -> LoadedInventory:
    """The lab inventory with a host key of its own for every machine."""
    for i, host in enumerate(("single-1", "ha-agent", "ha-1", "ha-2", "ha-3", "gw-1")):
        path = lab.resolve(f"${{EDGEFLEET_CACHE}}/hostkeys/{host}.pub")
        path.write_text(f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{i:02d}{host.replace('-', '')} root@{host}\n")
    return lab


def host_steps(r: Run) -> dict[str, Any]:
    """Every per-host resource by its registered (machine) name."""
    return {x.real_name: x for x in r.registered if x.kind in (COMMAND, COPY) and x.real_name.startswith("m-")}


def renamed(site: Site, old: str, new: str) -> Site:
    return site.model_copy(
        update={"hosts": [h.model_copy(update={"name": new}) if h.name == old else h for h in site.hosts]}
    )


def test_children_are_named_by_machine_with_their_earlier_names_as_aliases(machines: LoadedInventory) -> None:
    site = lab_site(machines, "lab-ha")
    r = build_sites(machines, site)
    for host in site.hosts:
        key = machines.resolve(f"${{EDGEFLEET_CACHE}}/hostkeys/{host.name}.pub").read_text()
        mid = machine_id(key)
        assert mid == machine_id(key.rsplit(" ", 1)[0]), "the key's comment is not part of the machine"
        for step in STEPS if host.role == "server" else STEPS[:-1]:
            res = r.get(f"lab-ha-{host.name}-{step}")  # found through its alias
            assert res.real_name == f"{mid}-{step}" and res.aliases == {f"lab-ha-{host.name}-{step}"}
        assert r.get(f"lab-ha-{host.name}").inputs["machine"] == mid


def test_rename_reorder_and_registration_address_keep_every_resource_and_rerun_nothing(
    machines: LoadedInventory,
) -> None:
    site = lab_site(machines, "lab-ha").model_copy(
        update={"simulated_nodes": lab_site(machines, "lab-single").simulated_nodes}
    )
    before = host_steps(build_sites(machines, site))
    servers = [h for h in site.hosts if h.role == "server"]
    variants = {
        "rename": renamed(site, "ha-2", "ha-2b"),
        "reorder": site.model_copy(update={"hosts": [site.hosts[0], servers[2], servers[0], servers[1]]}),
        "registration": site.model_copy(update={"registration_address": "10.213.7.20"}),
    }
    kwok = build_sites(machines, site).get("lab-ha-kwok")
    for change, variant in variants.items():
        r = build_sites(machines, variant)
        after = host_steps(r)
        assert set(after) == set(before), change
        # kwok stays on its server (it is not moved to whichever server is listed first).
        assert r.get("lab-ha-kwok").plain("connection")["host"] == kwok.plain("connection")["host"], change
        if change != "registration":
            assert r.get("lab-ha-kwok").inputs["triggers"] == kwok.inputs["triggers"], change
        for name, res in after.items():
            if change == "registration" and res.kind == COMMAND and name.endswith(("-drain", "-install", "-node")):
                continue  # checked below
            assert res.inputs["triggers"] == before[name].inputs["triggers"], (change, name)
    # A new registration address: the agent's join URL is bootstrap-only (nothing re-runs);
    # the servers' certificates gain the address (a steady-state change: one at a time).
    r = build_sites(machines, variants["registration"])
    after = host_steps(r)
    agent = r.get("lab-ha-ha-agent-install").real_name
    assert after[agent].inputs["triggers"] == before[agent].inputs["triggers"]
    assert k3s_config(r, "lab-ha", "ha-agent")["server"] == "https://10.213.7.20:6443"
    assert "10.213.7.20" in k3s_config(r, "lab-ha", "ha-2")["tls-san"]
    # After the reorder the first server changed: ha-1 is a joiner now, and its node steps are
    # relayed through ha-3 (a connection change, an in-place update).
    r = build_sites(machines, variants["reorder"])
    assert k3s_config(r, "lab-ha", "ha-1")["server"] == "https://10.213.7.23:6443"
    assert r.get("lab-ha-ha-1-node").plain("connection")["host"] == "10.213.7.23"


def test_a_rename_keeps_the_node_name_k3s_registered(
    machines: LoadedInventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Registered(topo.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
            id_, outputs = super().new_resource(args)
            if args.name.endswith("-install"):
                outputs["stdout"] = "single-1: started (pid 42)\nedgefleet-node-name=single-1\n"
            return id_, outputs

    monkeypatch.setattr(topo, "Mocks", Registered)
    site = lab_site(machines, "lab-single").model_copy(update={"topology": "single-node"})
    with_agent = site.model_copy(
        update={
            "hosts": [
                *site.hosts,
                site.hosts[0].model_copy(
                    update={
                        "name": "edge-7",
                        "address": "10.213.7.41",
                        "role": "agent",
                        "ssh": site.hosts[0].ssh.model_copy(
                            update={"host_key_file": "${EDGEFLEET_CACHE}/hostkeys/gw-1.pub"}
                        ),
                    }
                ),
            ]
        }
    )
    r = build_sites(machines, renamed(with_agent, "edge-7", "edge-7b"))
    node = r.get("lab-single-edge-7b-node")
    assert "NODE=single-1" in node.inputs["create"] and "edge-7b" not in node.inputs["create"]
    assert "NODE=single-1" in node.inputs["delete"]


def run_bash(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, cwd=tmp_path)


def test_k3s_keeps_the_registered_node_name_and_a_config_change_alone_restarts_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("token-file: /etc/rancher/k3s/token\nnode-name: single-1\nserver: https://old:6443\n")
    new = "token-file: /etc/rancher/k3s/token\nnode-name: single-1b\nserver: https://new:6443\n"
    script = (
        LIB["log"]
        + LIB["files"]
        + "HOST=unit\n"
        + k3s._pinned_node_name("single-1b")
        + f"put_config {config} 0600 <<'EOF'\n{new}EOF\n"
        + 'echo "changed=$CHANGED name=$K3S_NODE_NAME"\n'
    )
    done = run_bash(script.replace(k3s.CONFIG_FILE, str(config)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "changed=0 name=single-1"
    assert config.read_text() == new.replace("single-1b", "single-1")
    # The steady-state config leaves out the bootstrap-only keys and the node name: a joining
    # server and the same machine as the first server (after a reorder) restart for nothing.
    joiner = topo.node_spec(*_single())
    first = replace(joiner, host="other", first_server=True, server_url=None)
    assert "server" in yaml.safe_load(k3s.render_config(joiner)) and "cluster-init" in yaml.safe_load(
        k3s.render_config(first)
    )
    assert k3s.steady_config(joiner) == k3s.steady_config(first)


def _single() -> tuple[Site, Any, Any]:
    loaded = load_inventory(REPO / "sites" / "prod.yaml")
    site = next(s for s in loaded.inventory.sites if s.topology == "ha" and s.distribution.name == "k3s")
    return site, site.hosts[1], site.hosts[0]


def test_remote_commands_update_in_place_and_run_only_on_a_trigger_change(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[str] = []
    monkeypatch.setattr(remote, "run_script", lambda conn, script, *a, **k: (ran.append(script), ("out", ""))[1])
    provider = remote._CommandProvider()
    olds = {
        "connection": {"host": "10.0.0.1"},
        "create": "c",
        "update": "u",
        "delete": "d",
        "triggers": ["1"],
        "label": "site 'a' host 'h' (10.0.0.1)",
        "stdout": "before",
    }
    news = {**olds, "connection": {"host": "10.0.0.9"}, "update": "u2", "label": "site 'a' host 'h2' (10.0.0.9)"}
    diff = provider.diff("id", olds, news)
    assert diff.changes and not diff.replaces, "a new address or relay is the same machine: never delete + create"
    assert provider.update("id", olds, news).outs["stdout"] == "before" and ran == []
    provider.update("id", olds, {**news, "triggers": ["2"]})
    assert ran == ["u2"]
    copy = remote._CopyProvider().diff(
        "id", {"connection": {"host": "a"}, "remote_path": "/x"}, {"connection": {"host": "b"}, "remote_path": "/x"}
    )
    assert copy.changes and not copy.replaces


@pytest.mark.parametrize("owner, runs", [(None, True), ("dev/m-1", True), ("dev/m-2", False)])
def test_uninstall_leaves_a_machine_claimed_by_another_resource_alone(
    tmp_path: Path, owner: str | None, runs: bool
) -> None:
    claim = tmp_path / "owner"
    if owner:
        claim.write_text(owner + "\n")
    script = unless_claimed("set -euo pipefail\ntouch uninstalled\n", "dev/m-1", "the uninstall")
    done = run_bash(script.replace(CLAIM_FILE, str(claim)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "uninstalled").exists() is runs
    assert claim.exists() is not runs
    if not runs:
        assert "not running the uninstall: this machine is managed as dev/m-2 now, not as dev/m-1" in done.stderr


@pytest.mark.parametrize("owner, runs", [("dev/m-1", True), ("dev.plant-a/m-1", True), ("prod/m-1", False)])
def test_a_site_stack_uninstalls_the_machines_its_whole_fleet_stack_claimed(
    tmp_path: Path, owner: str, runs: bool
) -> None:
    """``fleet migrate`` moves state only: the hosts still name the whole-fleet stack ``dev``,
    and the site stack ``dev.plant-a`` that took them over owns them all the same."""
    claim = tmp_path / "owner"
    claim.write_text(owner + "\n")
    mine, *inherited = stack_claims("dev.plant-a", "m-1")
    assert (mine, inherited) == ("dev.plant-a/m-1", ["dev/m-1"]) and stack_claims("dev", "m-1") == ("dev/m-1",)
    script = unless_claimed("set -euo pipefail\ntouch uninstalled\n", mine, "the uninstall", inherited)
    done = run_bash(script.replace(CLAIM_FILE, str(claim)), tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "uninstalled").exists() is runs


def test_site_stacks_that_claim_as_their_whole_fleet_stack_render_its_very_scripts(machines: LoadedInventory) -> None:
    """After ``fleet migrate`` (config claimsAs: the whole-fleet stack), a site stack renders
    the same scripts as the stack it was moved from: its first update changes nothing and no
    host is contacted; without it the claim names the stack itself."""
    site = lab_site(machines, "lab-ha")
    own = host_steps(build_sites(machines, site))
    whole = host_steps(build_sites(machines, site, claims_as="unit"))
    assert {n: r.inputs for n, r in whole.items()} == {n: r.inputs for n, r in own.items()}
    moved = host_steps(build_sites(machines, site, claims_as="dev"))
    installs = [n for n in moved if n.endswith("-install")]
    assert installs and all("dev/m-" in moved[n].inputs["create"] for n in installs)
    assert not any("unit/m-" in str(moved[n].inputs) for n in installs), "only the whole-fleet stack's claim"


def test_install_claims_the_machine_after_it_succeeded(tmp_path: Path) -> None:
    claim = tmp_path / "owner"
    script = claiming("true\n", "dev/m-1").replace(CLAIM_FILE, str(claim)).replace("/var/lib/edgefleet", str(tmp_path))
    assert run_bash(script, tmp_path).returncode == 0 and claim.read_text() == "dev/m-1\n"
    failing = (
        claiming("exit 1\n", "dev/m-9").replace(CLAIM_FILE, str(claim)).replace("/var/lib/edgefleet", str(tmp_path))
    )
    assert run_bash(failing, tmp_path).returncode == 1 and claim.read_text() == "dev/m-1\n"


PROD = """
fleet: unit
environment: prod
defaults: {ssh: {user: edgeops, private_key: {config: sshKeyFleet}}}
sites:
  - name: store-1
    topology: single-node
    distribution: {name: k3s, version: v1.33.4+k3s1}
    artifacts:
      - {name: k3s, arch: amd64, source: %(k3s)s, sha256: %(sha)s}
    hosts:
      - {name: s1, address: 10.0.3.11, ssh: {host_key: "%(hk)s1"}}
      - {name: a1, address: 10.0.3.21, role: agent, ssh: {host_key: "%(hk)s2"}}
      - {name: a2, address: 10.0.3.22, role: agent, decommission: true, ssh: {host_key: "%(hk)s3"}}
"""


def test_prod_protects_what_would_uninstall_unless_the_host_is_decommissioned(tmp_path: Path) -> None:
    binary = tmp_path / "k3s"
    binary.write_bytes(b"k3s")
    path = tmp_path / "prod.yaml"
    path.write_text(PROD % {"k3s": binary, "sha": topo.sha(b"k3s"), "hk": HOST_KEY})
    r = topo.run(program_for(load_inventory(path)), {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",))
    protected = {x.name for x in r.registered if x.protect}
    assert protected == {"store-1-s1-install", "store-1-s1-node", "store-1-a1-install", "store-1-a1-node"}
    dev = yaml.safe_load(path.read_text())
    dev["environment"] = "dev"
    path.write_text(yaml.safe_dump(dev))
    r = topo.run(program_for(load_inventory(path)), {"sshKeyFleet": PRIVATE_KEY}, secret_keys=("sshKeyFleet",))
    assert not [x.name for x in r.registered if x.protect]


def program_for(loaded: LoadedInventory):  # type: ignore[no-untyped-def]
    """The fleet program for ``loaded``."""

    def program() -> Any:
        from components.fleet import EdgeFleet
        from components.program import fleet_args

        EdgeFleet("fleet", fleet_args(loaded, pulumi.Config(), pulumi.Output.secret(topo.FLEET_SECRET)))
        return True

    return program


def test_the_site_provider_is_the_same_cluster_wherever_its_api_moves_and_never_upserts(
    machines: LoadedInventory,
) -> None:
    site = lab_site(machines, "lab-ha")
    for variant in (site, site.model_copy(update={"registration_address": "10.213.7.20"})):
        provider = build_sites(machines, variant).get("lab-ha-k8s").inputs
        assert provider["clusterIdentifier"] == "edgefleet-site-lab-ha"
        assert provider["enableServerSideApply"] == "false"


def test_the_wrapped_lifecycle_scripts_are_shellcheck_clean(lab: LoadedInventory, tmp_path: Path) -> None:
    r = build_sites(lab, lab_site(lab, "lab-ha"))
    scripts = {
        "install": r.get("lab-ha-ha-2-install").inputs["create"],
        "uninstall": r.get("lab-ha-ha-2-install").inputs["delete"],
        "cluster-ca": r.get("lab-ha-cluster-ca").inputs["create"],
    }
    for name, text in scripts.items():
        path = tmp_path / f"{name}.sh"
        path.write_text(text)
        done = subprocess.run(
            [str(REPO / ".venv/bin/shellcheck"), "-s", "bash", "-S", "warning", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (name, done.stdout)
    assert scripts["uninstall"].index(CLAIM_FILE) < scripts["uninstall"].index("svc_stop")
