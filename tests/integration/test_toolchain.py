"""The offline toolchain on the real engine: versions, a full stack lifecycle exercising the
python host, the python dynamic-provider host and the kubernetes provider, secrets at rest,
and clear bootstrap failures."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO, VERSIONS

pytestmark = pytest.mark.integration
PROJECT = REPO / "tests/integration/projects/toolchain"


def test_cli_and_plugins_report_pinned_versions(make_pulumi):
    p = make_pulumi(PROJECT)
    assert p.run("version").stdout.strip() == f"v{VERSIONS['PULUMI_VERSION']}"
    plugins = {(pl["name"], pl["kind"], pl["version"]) for pl in p.json("plugin", "ls", "--json")}
    assert ("kubernetes", "resource", VERSIONS["PULUMI_KUBERNETES_VERSION"]) in plugins


def test_plugins_match_what_the_python_sdks_ask_for():
    import importlib.resources as res

    for pkg, key in (("pulumi_kubernetes", "PULUMI_KUBERNETES_VERSION"),):
        meta = json.loads((res.files(pkg) / "pulumi-plugin.json").read_text())
        assert meta["version"] == VERSIONS[key], (
            f"{pkg} asks for plugin {meta['version']}, versions.env pins {VERSIONS[key]}"
        )


def _changes(p, stack: str) -> dict[str, int]:
    out = p.json("preview", "--stack", stack, "--json", "--non-interactive")
    return {k: v for k, v in out["changeSummary"].items() if k != "same"}


def test_stack_lifecycle_preview_up_noop_destroy(make_pulumi, tmp_path: Path):
    p = make_pulumi(PROJECT, copy=True)
    render = tmp_path / "rendered"
    p.run("stack", "init", "throwaway", "--non-interactive")
    p.run("config", "set", "renderDir", str(render))
    preview = p.run("preview", "--non-interactive")
    assert "+ 4 to create" in preview.stdout or "4 to create" in preview.stdout, preview.stdout
    p.run("up", "--yes", "--non-interactive")
    assert p.run("stack", "output", "greeting").stdout.strip() == "hello from throwaway on Linux"
    manifests = list(render.rglob("*.yaml"))
    assert manifests and "hello from throwaway" in manifests[0].read_text()
    # Nothing changed: a second update plans and performs no change.
    assert _changes(p, "throwaway") == {}
    p.run("up", "--yes", "--non-interactive", "--expect-no-changes")
    # A changed input the provider marks as replacing replaces that resource.
    p.run("config", "set", "generation", "2")
    steps = p.json("preview", "--json", "--non-interactive")["steps"]
    replaced = {s["urn"].rsplit("::", 1)[1] for s in steps if s["op"] == "replace"}
    assert "greeting" in replaced
    p.run("destroy", "--yes", "--non-interactive")
    assert p.json("stack", "export")["deployment"].get("resources") in (None, [])


def test_config_secret_encrypted_at_rest_and_in_state(make_pulumi, tmp_path: Path):
    p = make_pulumi(PROJECT, copy=True)
    secret = "s3cr3t-join-token-7f1c"
    p.run("stack", "init", "secrets", "--non-interactive")
    p.run("config", "set", "renderDir", str(tmp_path / "r"))
    p.run("config", "set", "--secret", "token", secret)
    stack_file = (p.cwd / "Pulumi.secrets.yaml").read_text()
    assert secret not in stack_file and "secure:" in stack_file
    p.run("up", "--yes", "--non-interactive")
    exported = p.run("stack", "export").stdout
    assert secret not in exported
    state_files = "".join(f.read_text() for f in p.backend.rglob("*.json"))
    assert secret not in state_files
    assert p.run("stack", "output", "token").stdout.strip() == "[secret]"
    assert p.run("stack", "output", "token", "--show-secrets").stdout.strip() == secret
    p.run("destroy", "--yes", "--non-interactive")


def _bootstrap(env: dict[str, str], *steps: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts/bootstrap"), *steps], env=env, text=True, capture_output=True, timeout=300
    )


def test_bootstrap_without_go_names_the_step_and_the_fix(tmp_path: Path):
    env = {**os.environ, "EDGEFLEET_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    env.pop("GOROOT", None)
    proc = _bootstrap(env, "pulumi")
    assert proc.returncode != 0
    assert 'step "pulumi" failed' in proc.stderr
    assert "Go toolchain is not on PATH" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bootstrap_with_unreachable_module_proxy_names_the_module(tmp_path: Path):
    env = {
        **os.environ,
        "EDGEFLEET_CACHE": str(tmp_path / "cache"),
        "GOPROXY": "http://127.0.0.1:9/",
        "GOMODCACHE": str(tmp_path / "modcache"),
        "GOFLAGS": "-mod=mod",
    }
    proc = _bootstrap(env, "kwok")
    assert proc.returncode != 0
    assert 'step "kwok" failed' in proc.stderr
    assert "sigs.k8s.io/kwok" in proc.stderr
    assert (tmp_path / "cache/logs/kwok.log").read_text(), "the failing step's log is kept"


def test_warm_bootstrap_rebuilds_nothing():
    """A warm re-run only verifies the manifests (README records how long that takes)."""
    proc = subprocess.run([str(REPO / "scripts/bootstrap")], text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "bootstrap complete" in proc.stdout
    for step in ("pulumi", "kubernetes", "kwok", "k3s"):
        assert f"{step}: cached in" in proc.stdout, proc.stdout
