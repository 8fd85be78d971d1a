"""The program's stacks on the real engine, without touching any host: previews of dev and
prod with the policy pack, clear inventory errors, per-stack enforcement, and the in-program
guard on a bare `pulumi up`.

Prod inventories name private addresses that are never contacted here: only previews run on
them (previews open no SSH connection; the server probe is off for prod). The one `up` below
uses a prod-like inventory whose hosts are on loopback."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fleet import toolchain

from .conftest import REPO, Pulumi, pulumi_env

pytestmark = pytest.mark.integration
PROD_PASSPHRASE = "prod-test-passphrase-not-the-dev-one"
BAD_IMAGE = "docker.io/library/busybox@sha256:" + "ab" * 32


def project_copy(tmp_path: Path) -> Path:
    return toolchain.project_copy(tmp_path)


def stack_cmd(root: Path, env: dict[str, str], stack: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "scripts/stack"), stack, *args], cwd=root, env=env, text=True, capture_output=True, timeout=900
    )


@pytest.fixture
def dev(tmp_path: Path) -> Pulumi:
    subprocess.run([str(REPO / "lab/lab"), "keys"], check=True, capture_output=True, timeout=60)
    tmp_path = tmp_path / "dev"
    root = project_copy(tmp_path)
    p = Pulumi(
        cwd=root, backend=tmp_path / "state", env=pulumi_env(tmp_path / "state", passphrase="edgefleet-dev-lab-only")
    )
    p.backend.mkdir()
    p.env["PYTHONPATH"] = str(root)
    p.run("stack", "init", "dev", "--non-interactive")
    p.run("config", "set", "probeServers", "false", "--stack", "dev")
    return p


@pytest.fixture
def prod(tmp_path: Path) -> Pulumi:
    tmp_path = tmp_path / "prod"
    root = project_copy(tmp_path)
    p = Pulumi(cwd=root, backend=tmp_path / "state", env=pulumi_env(tmp_path / "state", passphrase=PROD_PASSPHRASE))
    p.backend.mkdir()
    p.run("stack", "init", "prod", "--non-interactive")
    p.run("config", "set", "--secret", "fleetSecret", "f" * 64, "--stack", "prod")
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    p.run("config", "set", "--secret", "sshKeyFleet", "--stack", "prod", input=key.read_text())
    p.run(
        "config",
        "set",
        "inferenceImage",
        "registry.edgefleet.local/edgefleet/inference-server@sha256:" + "3c" * 32,
        "--stack",
        "prod",
    )
    return p


def _creates_per_site(out: str, sites: list[str]) -> dict[str, int]:
    # Resources are named under the fleet component (``fleet-<site>-…``).
    return {s: len([line for line in out.splitlines() if " create" in line and f" fleet-{s}-" in line]) for s in sites}


def test_dev_preview_with_the_pack_shows_every_site(dev: Pulumi):
    out = stack_cmd(dev.cwd, dev.env, "dev", "preview")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "edgefleet-security" in out.stdout
    counts = _creates_per_site(out.stdout, ["lab-single", "lab-ha", "lab-gw"])
    assert all(counts.values()), counts
    assert counts["lab-ha"] > counts["lab-gw"], "three servers and more workloads than the gateway"
    hosts = ("single-1", "agent-1", "ha-1", "ha-2", "ha-3", "gw-1")
    for host in hosts:
        assert re.search(rf"edge:host:EdgeHost\s+fleet-lab-[a-z]+-{host}\s", out.stdout), host
    # A host's steps are named by its machine (pinned host key), not by its inventory name.
    assert len(set(re.findall(r"\bm-[0-9a-f]{12}-install\b", out.stdout))) == len(hosts)


def test_prod_preview_with_mandatory_pack_passes_offline(prod: Pulumi):
    out = stack_cmd(prod.cwd, prod.env, "prod", "preview")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    inv = yaml.safe_load((REPO / "sites/prod.yaml").read_text())
    for site in inv["sites"]:
        # Sites are named under the fleet component, their hosts under the site.
        assert f"edge:site:EdgeSite fleet-{site['name']} " in " ".join(out.stdout.split())
        for host in site["hosts"]:
            assert f"edge:host:EdgeHost fleet-{site['name']}-{host['name']} " in " ".join(out.stdout.split())
    assert len(set(re.findall(r"\bm-[0-9a-f]{12}-install\b", out.stdout))) == sum(len(s["hosts"]) for s in inv["sites"])


def test_invalid_inventory_fails_preview_clearly_with_nothing_registered(dev: Pulumi):
    inv = dev.cwd / "sites/dev.yaml"
    inv.write_text(inv.read_text().replace("address: 10.213.7.23", "address: 10.213.7.300"))
    out = dev.run("preview", "--non-interactive", "--stack", "dev", check=False)
    assert out.returncode != 0
    assert "sites/dev.yaml: sites[1].hosts[2].address: '10.213.7.300' is not an IP address (fix:" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr
    assert "EdgeSite" not in out.stdout


def test_prod_refuses_the_dev_passphrase(prod: Pulumi):
    env = {**prod.env, "PULUMI_CONFIG_PASSPHRASE": "edgefleet-dev-lab-only"}
    out = stack_cmd(prod.cwd, env, "prod", "preview")
    assert out.returncode == 2 and "refusing the public dev passphrase for stack prod" in out.stderr


def test_violation_blocks_prod_and_warns_in_dev(prod: Pulumi, dev: Pulumi):
    prod.run("config", "set", "inferenceImage", BAD_IMAGE, "--stack", "prod")
    blocked = stack_cmd(prod.cwd, prod.env, "prod", "preview")
    assert blocked.returncode != 0
    # Refused (by the program's guard, before the pack sees it) naming resource, rule, level.
    assert "Deployment quality-control/quality-control violates image-from-allowed-registry" in blocked.stdout
    assert "mandatory in stack prod" in blocked.stdout

    dev.run("config", "set", "inferenceImage", BAD_IMAGE, "--stack", "dev")
    warned = stack_cmd(dev.cwd, dev.env, "dev", "preview")
    assert warned.returncode == 0, warned.stdout[-3000:]
    assert "image-from-allowed-registry" in warned.stdout and "advisory" in warned.stdout


def test_bare_up_on_prod_is_refused_by_the_in_program_guard(prod: Pulumi):
    """No --policy-pack: the program's own guard refuses the mandatory violation. The hosts are
    on loopback, so even a failing guard could not reach a real machine."""
    inv = yaml.safe_load((prod.cwd / "sites/prod.yaml").read_text())
    store = next(s for s in inv["sites"] if s["name"] == "store-0114")
    store["hosts"][0]["address"] = "127.0.0.2"
    inv["sites"] = [store]
    (prod.cwd / "sites/prod.yaml").write_text(yaml.safe_dump(inv, sort_keys=False))
    prod.run("config", "set", "inferenceImage", BAD_IMAGE, "--stack", "prod")
    out = prod.run("up", "--yes", "--non-interactive", "--stack", "prod", check=False)
    assert out.returncode != 0
    assert "image-from-allowed-registry" in out.stdout
    assert "mandatory in stack prod" in out.stdout and "(fix: " in out.stdout, out.stdout[-3000:]
    # A refusal is a clear message, not a program crash.
    assert "Traceback" not in out.stdout + out.stderr and "unhandled exception" not in out.stdout, out.stdout[-3000:]
    exported = prod.json("stack", "export", "--stack", "prod")["deployment"].get("resources") or []
    assert not [r for r in exported if r["type"].startswith("kubernetes:apps")], "no workload was created"
