"""While `make up`'s dev stack holds the lab hosts, the lab tests refuse to run (they would
reinstall and then uninstall the hosts under it) and say how to release them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.integration]


@pytest.mark.skipif(os.geteuid() != 0, reason="the lab fixture checks for root first")
def test_lab_tests_refuse_while_the_dev_stack_holds_the_hosts(tmp_path: Path) -> None:
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir()
    (lab_dir / "dev-stack").write_text("/srv/edgefleet (make up, 2026-12-01T10:00:00Z)\n")
    env = {**os.environ, "EDGEFLEET_LAB_DIR": str(lab_dir)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            "tests/integration/test_remote.py",
            "-m",
            "lab",
        ],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "the lab hosts run the dev stack of /srv/edgefleet (make up" in proc.stdout
    assert "(fix: run `make down` there first, then the lab tests)" in proc.stdout
    assert not (lab_dir / "hosts").exists(), "refused before any host was created"
