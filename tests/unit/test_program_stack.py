"""scripts/stack's guard rails, run in a copy of the repository with a recording `pulumi`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from components.program import DEV_PASSPHRASE

REPO = Path(__file__).resolve().parents[2]
FAKE_PULUMI = """#!/usr/bin/env bash
# Records each call (argv, then stdin for `config set`); no stack has a fleetSecret yet.
printf '%s\\n' "$*" >>"$CALLS"
case "$1 $2" in
  "config get") exit 1 ;;
  "config set") printf 'stdin=%s\\n' "$(cat)" >>"$CALLS" ;;
esac
exit 0
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    for name in ("stack", "env.sh", "versions.env"):
        shutil.copy2(REPO / "scripts" / name, root / "scripts" / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    (root / "policies/config").mkdir(parents=True)
    (root / "sites").mkdir()
    for stack, environment in (("dev", "dev"), ("prod-eu", "prod"), ("lab-eu", "dev")):
        (root / f"policies/config/{stack}.json").write_text("{}")
        (root / f"sites/{stack}.yaml").write_text(f"fleet: x\nenvironment: {environment}\nsites: []\n")
        (root / f"Pulumi.{stack}.yaml").write_text(f"config:\n  edgefleet:inventory: sites/{stack}.yaml\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "pulumi").write_text(FAKE_PULUMI)
    (bin_dir / "pulumi").chmod(0o755)
    return root


def stack(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "EDGEFLEET_"))}
    base.update(HOME=str(repo.parent), PATH=f"{repo.parent / 'bin'}:/usr/bin:/bin", CALLS=str(repo.parent / "calls"))
    return subprocess.run(
        [str(repo / "scripts/stack"), *args], capture_output=True, text=True, env={**base, **env}, timeout=60
    )


def calls(repo: Path) -> str:
    path = repo.parent / "calls"
    return path.read_text() if path.exists() else ""


def test_a_prod_inventory_under_another_stack_name_refuses_the_default_dev_passphrase(repo: Path) -> None:
    # No passphrase given: env.sh falls back to the public dev one, which prod must not use.
    run = stack(repo, "prod-eu", "preview")
    assert run.returncode == 2, run.stderr
    assert "refusing the public dev passphrase for stack prod-eu" in run.stderr and "(fix: " in run.stderr
    assert calls(repo) == "", "pulumi never ran"


def test_the_dev_passphrase_in_a_passphrase_file_is_refused(repo: Path, tmp_path: Path) -> None:
    phrase = tmp_path / "phrase"
    phrase.write_text(DEV_PASSPHRASE + "\n")
    run = stack(repo, "prod-eu", "preview", PULUMI_CONFIG_PASSPHRASE_FILE=str(phrase))
    assert run.returncode == 2 and "refusing the public dev passphrase" in run.stderr
    assert DEV_PASSPHRASE not in run.stderr


def test_a_prod_stack_with_its_own_passphrase_needs_its_owners_fleet_secret(repo: Path, tmp_path: Path) -> None:
    phrase = tmp_path / "phrase"
    phrase.write_text("a-real-prod-passphrase\n")
    run = stack(repo, "prod-eu", "preview", PULUMI_CONFIG_PASSPHRASE_FILE=str(phrase))
    assert run.returncode == 2 and "stack prod-eu has no fleetSecret" in run.stderr
    fix = run.stderr.split("(fix: ", 1)[1]
    assert "| pulumi config set --secret fleetSecret" in fix and "$(" not in fix
    assert "config set" not in calls(repo)


@pytest.mark.parametrize("name", ["dev", "lab-eu"])
def test_a_dev_stack_gets_a_fleet_secret_on_stdin_never_in_argv(repo: Path, name: str) -> None:
    run = stack(repo, name, "preview")
    assert run.returncode == 0, run.stderr
    recorded = calls(repo).splitlines()
    (set_call,) = [line for line in recorded if line.startswith("config set")]
    assert set_call == f"config set --secret fleetSecret --stack {name}"
    (stdin,) = [line for line in recorded if line.startswith("stdin=")]
    assert re.fullmatch(r"stdin=[0-9a-f]{64}", stdin)
    assert any(line.startswith(f"preview --stack {name} --non-interactive --policy-pack") for line in recorded)
