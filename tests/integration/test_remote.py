"""Remote commands over SSH on the real engine, against a lab host."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.lab]
PROJECT = REPO / "tests/integration/projects/remote"


def in_host(lab, host: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "lab/lab"), "exec", host, *cmd], text=True, capture_output=True, timeout=60)


def _stack(make_pulumi, lab, tmp_path: Path, host: str, address: str):
    p = make_pulumi(PROJECT, copy=True)
    p.env["PYTHONPATH"] = str(REPO)
    payload = tmp_path / "payload.txt"
    payload.write_text("generation-1")
    p.run("stack", "init", "remote", "--non-interactive")
    for k, v in {
        "host": address,
        "keyFile": str(lab.key),
        "hostKey": lab.host_key(host),
        "payload": str(payload),
    }.items():
        p.run("config", "set", k, v)
    p.run("config", "set", "--secret", "token", "tok-3f9a8c1d")
    return p, payload


def test_command_lifecycle_on_a_lab_host(make_pulumi, lab, tmp_path: Path):
    p, payload = _stack(make_pulumi, lab, tmp_path, "agent-1", lab.address("agent-1"))
    p.run("up", "--yes", "--non-interactive")
    assert p.run("stack", "output", "stdout").stdout.strip() == "created"
    assert in_host(lab, "agent-1", "cat", "/etc/edgefleet/marker").stdout == "generation-1"
    assert not Path("/etc/edgefleet/marker").exists(), "the write stayed inside the host's view"
    state = p.run("stack", "export").stdout
    assert "tok-3f9a8c1d" not in state and "PRIVATE KEY" not in state
    p.run("up", "--yes", "--non-interactive", "--expect-no-changes")
    # A trigger change re-uploads and runs `update` in place.
    payload.write_text("generation-2")
    p.run("config", "set", "generation", "2")
    p.run("up", "--yes", "--non-interactive")
    assert p.run("stack", "output", "stdout").stdout.strip() == "updated"
    assert in_host(lab, "agent-1", "cat", "/etc/edgefleet/marker").stdout == "generation-2"
    p.run("destroy", "--yes", "--non-interactive")
    assert in_host(lab, "agent-1", "test", "-e", "/etc/edgefleet/marker").returncode == 1


def test_wrong_host_key_is_refused(make_pulumi, lab, tmp_path: Path):
    p, _ = _stack(make_pulumi, lab, tmp_path, "agent-1", lab.address("agent-1"))
    p.run("config", "set", "hostKey", lab.host_key("gw-1"))
    out = p.run("up", "--yes", "--non-interactive", check=False)
    assert out.returncode != 0
    assert "does not match the pinned key" in out.stdout + out.stderr


def test_unreachable_host_fails_in_bounded_time_naming_it(make_pulumi, lab, tmp_path: Path):
    import time

    p, _ = _stack(make_pulumi, lab, tmp_path, "agent-1", "10.213.7.99")  # on the lab bridge, no host
    p.run("config", "set", "dialTimeout", "8")
    t0 = time.monotonic()
    out = p.run("up", "--yes", "--non-interactive", check=False)
    assert out.returncode != 0
    assert "cannot reach 10.213.7.99:22" in out.stdout and "host '10.213.7.99'" in out.stdout
    assert time.monotonic() - t0 < 60


HANG = REPO / "tests/integration/projects/remote-hang"


def _link(host: str, state: str) -> None:
    # Inside the host's namespace its end of the lab link is eth0 (lab/lab host_up): taking it
    # down drops every packet silently, as a cut cable or a dead uplink would.
    subprocess.run(["ip", "-n", f"ef-{host}", "link", "set", "eth0", state], check=True, timeout=30)


def test_a_host_that_drops_mid_command_fails_within_the_deadline(make_pulumi, lab, tmp_path: Path):
    import time

    host, deadline = "agent-1", 20
    p = make_pulumi(HANG, copy=True)
    p.env["PYTHONPATH"] = str(REPO)
    p.run("stack", "init", "hang", "--non-interactive")
    for k, v in {
        "host": lab.address(host),
        "keyFile": str(lab.key),
        "hostKey": lab.host_key(host),
        "sleep": "300",
        "commandTimeout": str(deadline),
    }.items():
        p.run("config", "set", k, v)
    in_host(lab, host, "rm", "-f", "/var/lib/edgefleet/long-step-started")
    up = subprocess.Popen(
        ["pulumi", "up", "--yes", "--non-interactive"],
        cwd=p.cwd,
        env=p.env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        started = time.monotonic()
        while in_host(lab, host, "test", "-e", "/var/lib/edgefleet/long-step-started").returncode != 0:
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() - started < 120, "the command never started on the host"
            time.sleep(0.5)
        _link(host, "down")
        cut = time.monotonic()
        out, _ = up.communicate(timeout=deadline + 60)
        failed_after = time.monotonic() - cut
    finally:
        if up.poll() is None:
            up.kill()
        _link(host, "up")
    assert up.returncode != 0, out
    assert failed_after < deadline + 15, f"failed {failed_after:.0f}s after the cut; the deadline is {deadline}s"
    assert f"host '{lab.address(host)}'" in out and "step 'long-step/create'" in out
    assert f"did not finish within its deadline of {deadline}s" in out
    # The lock was released and, with the link back, the same stack converges.
    p.run("config", "set", "sleep", "1")
    p.run("up", "--yes", "--non-interactive")
    assert p.run("stack", "output", "stdout").stdout.strip() == "done"
    p.run("destroy", "--yes", "--non-interactive")
