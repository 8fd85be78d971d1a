"""The fleet command on the real engine over simulated sites (tests/integration/projects/fleet-sim):
site stacks on a file backend, waves and budgets, an offline site that fails fast, resume after
SIGKILL, the lock against a second command, drift and its healing, migration by state alone.

Reachability is real: every online site's host is an SSH server on its own loopback address
(127.0.0.x) that completes the key exchange with its pinned key; the offline site's address
has nothing listening. No other address is contacted."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.unit.test_fleetcmd_preflight import free_port, ssh_server

from .conftest import REPO, kill_processes_of, processes_of, pulumi_env

pytestmark = pytest.mark.integration

PROJECT = REPO / "tests/integration/projects/fleet-sim"
OFFLINE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"


@dataclass
class Sim:
    root: Path
    env: dict[str, str]
    sim_dir: Path
    sites: list[dict] = field(default_factory=list)
    rollout: dict = field(default_factory=dict)

    def write(self) -> None:
        doc = {
            "fleet": "sim",
            "environment": "dev",
            "rollout": self.rollout,
            "defaults": {"ssh": {"private_key": {"config": "sshKey"}}},
            "sites": self.sites,
        }
        (self.root / "sites/sim.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    def site(self, name: str) -> dict:
        return next(s for s in self.sites if s["name"] == name)

    def fleet(self, *args: str, check: int | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleet",
                *args,
                "--stack",
                "sim",
                "--project-dir",
                str(self.root),
                "--log-dir",
                str(self.root / "logs"),
            ],
            cwd=REPO,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check is not None:
            assert proc.returncode == check, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def results(self, *args: str, check: int | None = None) -> dict[str, dict]:
        out = self.root / "result.json"
        self.fleet(*args, "--result-file", str(out), check=check)
        data = json.loads(out.read_text())
        return {r["site"]: r for r in data.get("results", data.get("sites", []))}

    def pulumi(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["pulumi", *args, "--non-interactive"],
            cwd=self.root,
            env=self.env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        assert not check or proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def stack_exists(self, stack: str) -> bool:
        return (self.root.parent / "state/.pulumi/stacks/fleetsim" / f"{stack}.json").exists()

    def actions(self) -> list[str]:
        log = self.sim_dir / "actions.log"
        return log.read_text().splitlines() if log.exists() else []


def sim_site(name: str, wave: int, address: str, port: int, key: str, **labels: str) -> dict:
    return {
        "name": name,
        "topology": "single-node",
        "wave": wave,
        "distribution": {"version": "v1.33.4+k3s1"},
        "labels": labels,
        "hosts": [{"name": f"{name}-h", "address": address, "ssh": {"port": port, "host_key": key}}],
    }


@pytest.fixture
def sim(tmp_path: Path):
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root)
    (root / "sites").mkdir()
    sim_dir = tmp_path / "sim"
    sim_dir.mkdir()
    env = pulumi_env(tmp_path / "state")
    (tmp_path / "state").mkdir()
    env["PYTHONPATH"] = str(REPO)
    env["CI"] = "true"
    (root / "Pulumi.sim.yaml").write_text(
        yaml.safe_dump({"config": {"fleetsim:inventory": "sites/sim.yaml", "fleetsim:simDir": str(sim_dir)}})
    )
    with ExitStack() as stack:
        servers = {
            addr: stack.enter_context(ssh_server(addr)) for addr in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
        }
        s = Sim(root, env, sim_dir)
        s.rollout = {"max_concurrency": 2, "max_failures": 1, "preflight_timeout": 2, "health_gate": False}
        s.sites = [
            sim_site("canary", 0, "127.0.0.2", *servers["127.0.0.2"]),
            sim_site("a1", 1, "127.0.0.3", *servers["127.0.0.3"]),
            sim_site("a2", 1, "127.0.0.4", *servers["127.0.0.4"]),
            sim_site("gone", 1, "127.0.0.9", free_port(), OFFLINE_KEY),
            sim_site("b1", 2, "127.0.0.5", *servers["127.0.0.5"]),
            {**sim_site("resting", 2, "127.0.0.6", 22, OFFLINE_KEY), "maintenance": True},
        ]
        s.write()
        stack.callback(kill_processes_of, root)  # what a failed test may have left running
        yield s


def test_waves_offline_within_budget_then_reruns_are_noops_and_status_is_true(sim: Sim):
    start = time.monotonic()
    first = sim.results("up", check=3)  # done within budget, one site offline
    assert {k: v["status"] for k, v in first.items()} == {
        "canary": "succeeded",
        "a1": "succeeded",
        "a2": "succeeded",
        "gone": "offline",
        "b1": "succeeded",
        "resting": "skipped",
    }
    assert first["gone"]["duration_s"] < 4 and "no SSH answer" in first["gone"]["reason"]
    assert time.monotonic() - start < 240
    assert not sim.stack_exists("sim.gone"), "an offline site never takes its stack's lock"
    assert sorted(sim.actions()) == ["install a1-h", "install a2-h", "install b1-h", "install canary-h"]

    again = sim.results("up", check=3)
    assert {k: v["status"] for k, v in again.items() if k not in ("gone", "resting")} == dict.fromkeys(
        ("canary", "a1", "a2", "b1"), "unchanged"
    )
    assert all(v["detail"].get("already") for k, v in again.items() if k not in ("gone", "resting"))
    assert len(sim.actions()) == 4

    proc = sim.fleet("status", "--format", "json", check=0)
    status = json.loads(proc.stdout)
    by_site = {s["site"]: s for s in status["sites"]}
    assert by_site["gone"]["state"] == "offline" and by_site["gone"]["last_seen"] is None
    assert by_site["canary"]["state"] == "available" and by_site["canary"]["last_result"] == "succeeded"
    assert by_site["resting"]["state"] == "maintenance"
    assert status["summary"] == {
        "total": 6,
        "applied": 4,
        "available": 4,
        "progressing": 0,
        "degraded": 0,
        "offline": 2,
        "skipped": 1,
    }  # the site in maintenance is offline too
    assert sim.fleet("status", "--check", "--format", "markdown").returncode == 5
    md = sim.fleet("status", "--format", "markdown", check=0).stdout
    assert "| gone | 1 | offline |" in md and "offline (last seen never)" in md


def test_a_canary_failure_stops_the_rollout_with_later_waves_untouched(sim: Sim):
    sim.site("canary")["labels"]["sim-fail"] = "true"
    sim.write()
    proc = sim.fleet("up", "--result-file", str(sim.root / "r.json"), check=1)
    results = {r["site"]: r for r in json.loads((sim.root / "r.json").read_text())["results"]}
    assert results["canary"]["status"] == "failed" and "simulated install failure" in results["canary"]["reason"]
    assert {results[s]["status"] for s in ("a1", "a2", "gone", "b1")} == {"not-started"}
    assert "rollout STOPPED: mandatory wave 0" in proc.stdout and "failed: canary (wave 0)" in proc.stdout
    assert not any(sim.stack_exists(f"sim.{s}") for s in ("a1", "a2", "b1"))


def test_sigkill_mid_rollout_then_rerun_converges_and_a_second_command_is_refused(sim: Sim):
    sim.site("a1")["labels"]["sim-seconds"] = "60"
    sim.write()
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            "up",
            "--stack",
            "sim",
            "--project-dir",
            str(sim.root),
            "--log-dir",
            str(sim.root / "logs"),
        ],
        cwd=REPO,
        env=sim.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 180
        while "install a1-h" not in sim.actions():
            assert time.monotonic() < deadline and first.poll() is None, "a1's install never started"
            time.sleep(0.5)
        second = sim.fleet("up", "--site", "a1,b1")
        assert second.returncode == 4, second.stdout + second.stderr
        assert "another fleet command is changing these site stacks: sim.a1 (held by 'fleet up sim'" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    # The workers follow their parent (PR_SET_PDEATHSIG) and take the engine and its plugins down.
    deadline = time.monotonic() + 30
    while left := processes_of(sim.root):
        assert time.monotonic() < deadline, f"the interrupted site's engine outlived the fleet command: {left}"
        time.sleep(0.5)

    sim.site("a1")["labels"]["sim-seconds"] = "0"
    sim.write()
    rerun = sim.results("up", check=3)
    assert rerun["canary"]["status"] == "unchanged"
    assert rerun["a1"]["status"] == "succeeded", rerun["a1"]
    notes = " ".join(rerun["a1"]["detail"].get("notes", []))
    assert "removed the lock a dead run left" in notes and "pending operation" in notes
    assert rerun["b1"]["status"] == "succeeded" and rerun["gone"]["status"] == "offline"
    assert sim.results("up", check=3)["a1"]["status"] == "unchanged"


def test_drift_names_the_wiped_site_and_up_refresh_heals_it(sim: Sim):
    sim.results("up", check=3)
    (sim.sim_dir / "wiped-a2-h").touch()
    drift = sim.fleet("drift", "--format", "json", check=5)
    sites = {s["site"]: s for s in json.loads(drift.stdout)["sites"]}
    assert sites["a2"]["status"] == "drifted" and sites["a2"]["resources"] == ["a2-a2-h"]
    assert {s for s, v in sites.items() if v["status"] == "drifted"} == {"a2"}
    assert sites["gone"]["status"] == "absent"
    healed = sim.results("up", "--refresh", "--site", "a2", check=0)
    assert healed["a2"]["status"] == "succeeded" and sim.actions()[-1] == "upgrade a2-h"
    (sim.sim_dir / "wiped-a2-h").unlink()
    sim.fleet("drift", "--site", "a2", check=0)


def test_migration_from_a_whole_fleet_stack_touches_no_host(sim: Sim):
    sim.sites = [s for s in sim.sites if s["name"] in ("canary", "a1", "b1")]
    sim.write()
    sim.pulumi("stack", "init", "sim")
    sim.pulumi("up", "--yes", "--stack", "sim")
    installs = sim.actions()
    assert len(installs) == 3
    sim.fleet("migrate", "--yes", check=0)
    preview = sim.results("preview", check=0)
    assert {k: v["detail"]["changes"] for k, v in preview.items()} == {"canary": 0, "a1": 0, "b1": 0}
    up = sim.results("up", check=0)
    assert {v["status"] for v in up.values()} == {"unchanged"}
    assert sim.actions() == installs, "migration or the next up ran something on a host"
    refused = sim.pulumi("preview", "--stack", "sim", check=False)
    assert refused.returncode != 0 and "fleetsim:siteStacks" in refused.stdout + refused.stderr


def test_a_site_past_its_progress_deadline_is_stopped_and_leaves_no_lock(sim: Sim):
    sim.sites = [s for s in sim.sites if s["name"] in ("canary", "a1")]
    sim.rollout["progress_deadline"] = 45  # a normal site's update takes a few seconds
    sim.site("a1")["labels"]["sim-seconds"] = "300"
    sim.write()
    start = time.monotonic()
    results = sim.results("up", check=3)  # within the budget of 1
    took = time.monotonic() - start
    assert results["a1"]["status"] == "timeout" and "progress deadline of" in results["a1"]["reason"]
    assert took < 45 + 30 + 60, "the site was stopped within its deadline and the grace period"
    assert processes_of(sim.root) == [], "the stopped update's engine and plugins are gone"
    locks = sim.root.parent / "state/.pulumi/locks/organization/fleetsim/sim.a1"
    assert not locks.exists() or not any(locks.iterdir()), "the stopped update left its stack locked"
    # The rerun recovers the stopped update (a refresh) before its own: it gets a deadline a
    # loaded machine keeps (the 45 s above only had to stop the 300 s update).
    sim.rollout["progress_deadline"] = 600
    sim.site("a1")["labels"]["sim-seconds"] = "0"
    sim.write()
    assert sim.results("up", check=0)["a1"]["status"] == "succeeded"
