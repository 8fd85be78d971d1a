"""The fleet command without the engine: plan output (text, JSON, the workflow's matrix),
the workflow's gate against the budget, and user errors as one line with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from fleet import EXIT
from fleet.cli import main

REPO = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"


def site(name: str, wave: int, **extra) -> dict:
    return {
        "name": name,
        "topology": "single-node",
        "wave": wave,
        "distribution": {"version": "v1.33.4+k3s1"},
        "hosts": [{"name": f"{name}-h", "address": f"10.9.0.{wave * 10 + len(name)}", "ssh": {"host_key": KEY}}],
        **extra,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    shutil.copytree(REPO / "tests/integration/projects/fleet-sim", root)
    (root / "sites").mkdir()
    sites = [site("c", 0), site("a1", 1), site("a22", 1), site("a333", 1), site("p", 2, paused=True), site("b1", 3)]
    (root / "sites/sim.yaml").write_text(
        yaml.safe_dump(
            {
                "fleet": "sim",
                "environment": "dev",
                "rollout": {"max_failures": 1, "max_concurrency": 2},
                "defaults": {"ssh": {"private_key": {"config": "k"}}},
                "sites": sites,
            }
        )
    )
    (root / "Pulumi.sim.yaml").write_text(yaml.safe_dump({"config": {"fleetsim:inventory": "sites/sim.yaml"}}))
    return root


def run(project: Path, *args: str) -> int:
    return main([*args, "--stack", "sim", "--project-dir", str(project)])


def test_plan_as_text_json_and_workflow_matrix(project: Path, capsys):
    assert run(project, "plan") == EXIT["ok"]
    text = capsys.readouterr().out
    assert (
        "wave 0 (mandatory): 1 site(s), concurrency 1, failure budget 0" in text and "sim.p: skipped (paused)" in text
    )
    assert run(project, "plan", "--format", "json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert [w["wave"] for w in plan["waves"]] == [0, 1, 2, 3] and plan["waves"][2]["skipped"][0]["reason"] == "paused"
    assert run(project, "plan", "--format", "github") == 0
    matrix = json.loads(capsys.readouterr().out)
    assert [(w["wave"], w["sites"], w["max_parallel"], w["fail_fast"], w["run"]) for w in matrix["waves"]] == [
        (0, ["c"], 1, True, True),
        (1, ["a1", "a22", "a333"], 2, False, True),
        (3, ["b1"], 1, False, True),
        (-1, ["none"], 1, True, False),
        (-1, ["none"], 1, True, False),
    ]  # the paused-only wave 2 has no job


def results(dir_: Path, **statuses: str) -> Path:
    dir_.mkdir(exist_ok=True)
    for site_name, status in statuses.items():
        (dir_ / f"result-{site_name}.json").write_text(json.dumps({"results": [{"site": site_name, "status": status}]}))
    return dir_


def test_the_gate_judges_a_wave_against_its_budget(project: Path, tmp_path: Path, capsys):
    ok = results(tmp_path / "r1", c="succeeded", a1="succeeded", a22="offline", a333="unchanged")
    assert run(project, "gate", "--gate-wave", "1", "--results-dir", str(ok)) == EXIT["ok"]
    over = results(tmp_path / "r2", a1="failed", a22="offline", a333="succeeded")
    assert run(project, "gate", "--gate-wave", "1", "--results-dir", str(over)) == EXIT["stopped"]
    assert "wave 1: 2 failed of 3: a1, a22" in capsys.readouterr().out
    # The canary wave is mandatory; a site with no result (cancelled by fail-fast) did not succeed.
    assert run(project, "gate", "--gate-wave", "0", "--results-dir", str(results(tmp_path / "r3"))) == EXIT["stopped"]


def test_user_errors_are_one_line_with_a_fix_and_exit_2(project: Path, capsys):
    assert run(project, "plan", "--select", "hardware_class=mainframe") == EXIT["usage"]
    err = capsys.readouterr().err
    assert err.startswith("python -m fleet: sim.yaml: the selector") and "(fix: " in err and "Traceback" not in err
    assert main(["plan", "--stack", "nope", "--project-dir", str(project)]) == EXIT["usage"]
    assert "Pulumi.nope.yaml: cannot read the base stack's config" in capsys.readouterr().err
    assert run(project, "destroy") == EXIT["usage"]
    assert "destroy removes everything the 5 selected site stack(s) manage (fix: add --yes" in capsys.readouterr().err
    (project / "sites/sim.yaml").write_text("fleet: sim\nenvironment: dev\nsites: []\n")
    assert run(project, "plan") == EXIT["usage"]
    assert "invalid inventory:" in capsys.readouterr().err


def test_progress_is_plain_lines_on_stderr_in_ci_and_a_live_table_on_a_terminal(project: Path, monkeypatch, capsys):
    from components.inventory import load_inventory
    from fleet.cli import Progress
    from fleet.plan import build_plan
    from fleet.rollout import SiteResult

    plan = build_plan(load_inventory(project / "sites/sim.yaml", check_files=False), "sim")
    monkeypatch.setenv("CI", "true")
    progress = Progress(plan, "up")
    progress.wave(plan.waves[1])
    progress.result(SiteResult("a1", "sim.a1", 1, "offline", "no SSH answer on port 22 within 10s", 10.0))
    progress.close()
    out, err = capsys.readouterr()
    assert out == ""
    assert "wave 1: 3 site(s), concurrency 2, failure budget 1" in err
    assert "  wave 1 a1: offline in 10.0s (no SSH answer on port 22 within 10s)" in err

    monkeypatch.delenv("CI")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    live = Progress(plan, "up")
    try:
        assert live.live is not None
        live.result(SiteResult("c", "sim.c", 0, "succeeded", "", 3.0))
        assert live.counts[0] == {"succeeded": 1}
    finally:
        live.close()
