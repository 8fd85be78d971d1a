"""The real program as site stacks: `python -m fleet preview` over a generated prod-like
inventory (addresses in 10.64.0.0/10 that previews never contact), with the policy pack, and
the whole-fleet stack still working beside them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.preview_bench import fleet_project, inventory

from .conftest import REPO

pytestmark = pytest.mark.integration


def test_site_stacks_preview_the_same_program_one_site_each(tmp_path: Path):
    project = fleet_project(tmp_path)
    (project.cwd / "sites/bench.yaml").write_text(yaml.safe_dump(inventory(3, True), sort_keys=False))
    env = {**project.env, "PYTHONPATH": str(REPO), "CI": "true"}

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "fleet",
                *args,
                "--stack",
                "bench",
                "--project-dir",
                str(project.cwd),
                "--log-dir",
                str(tmp_path / "logs"),
            ],
            cwd=REPO,
            env=env,
            text=True,
            capture_output=True,
            timeout=900,
        )

    plan = json.loads(fleet("plan", "--format", "json").stdout)
    assert [[s["site"] for s in w["sites"]] for w in plan["waves"]] == [["site-0000"], ["site-0001"], ["site-0002"]]
    assert plan["waves"][0]["sites"][0]["models"] == {"predictive-maintenance": "1"}

    proc = fleet("preview", "--site", "site-0000,site-0001", "--result-file", str(tmp_path / "r.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = {r["site"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert set(results) == {"site-0000", "site-0001"}
    for site, r in results.items():
        assert r["status"] == "succeeded" and r["detail"]["changes"] > 0, r
        log = (tmp_path / "logs" / f"bench.{site}.log").read_text()
        assert f"pulumi:pulumi:Stack edgefleet-bench.{site}" in log
        other = "site-0001" if site == "site-0000" else "site-0000"
        assert f"EdgeSite fleet-{other}" not in log and f"EdgeSite fleet-{site}" in log  # one site per stack
    config = yaml.safe_load((project.cwd / "Pulumi.bench.site-0000.yaml").read_text())
    assert config["config"]["edgefleet:site"] == "site-0000"
    assert (
        config["config"]["edgefleet:fleetSecret"]
        == yaml.safe_load((project.cwd / "Pulumi.bench.yaml").read_text())["config"]["edgefleet:fleetSecret"]
    )

    # The whole-fleet stack of the same project is untouched by all this and still previews.
    whole = project.survey()
    assert whole[0] > 0
