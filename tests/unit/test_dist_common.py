"""Shared distribution machinery: artifact selection and verification, the pid-file
supervisor (executed for real against harmless commands), kubeconfig rewriting, templates,
the driver registry."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from components.contract import VERSION_PATTERNS
from components.distributions import DistributionError, driver_for
from components.distributions.artifacts import UploadedArtifact, artifact_arch, pick_artifact, verify_lines
from components.distributions.bash import ARTIFACT_VERIFY_EXIT, Script, ere_literal, heredoc_file
from components.distributions.kube import rewrite_kubeconfig
from components.distributions.templating import fill
from components.distributions.units import render_supervisor
from tests.unit.dist_fixtures import node_with

SHA = "0" * 64
NODE = node_with()


def art(name: str, path: str) -> UploadedArtifact:
    return UploadedArtifact(
        name=name, url_or_path=path, sha256=SHA, dest=f"/var/lib/edgefleet/artifacts/{Path(path).name}"
    )


# --- artifacts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path,arch",
    [
        ("dist/k3s", None),
        ("dist/k3s-arm64", "arm64"),
        ("https://example.org/k0s-v1.33.4+k0s.0-amd64", "amd64"),
        ("k3s-airgap-images-arm64.tar.zst", "arm64"),
        ("images/aarch64/microshift-4.19.0.rpm", "arm64"),
        ("microshift-4.19.0-1.el9.x86_64.rpm", "amd64"),
    ],
)
def test_artifact_arch_reads_the_release_file_name(path: str, arch: str | None) -> None:
    assert artifact_arch(art("k3s", path)) == arch


def test_pick_artifact_prefers_the_declared_architecture() -> None:
    amd, arm = art("k3s", "dist/k3s"), art("k3s", "dist/k3s-arm64")
    images = art("k3s-airgap-images", "k3s-airgap-images-arm64.tar.zst")
    assert pick_artifact([amd, arm, images], "arm64", "k3s") is arm
    assert pick_artifact([amd, arm, images], "amd64", "k3s") is amd  # the upstream amd64 binary has no suffix


def test_pick_artifact_refuses_missing_and_ambiguous_choices() -> None:
    with pytest.raises(DistributionError, match="no 'k3s' artifact for arm64"):
        pick_artifact([art("k3s", "dist/k3s-amd64")], "arm64", "k3s")
    with pytest.raises(DistributionError, match="several 'k3s' artifacts fit amd64") as err:
        pick_artifact([art("k3s", "a/k3s"), art("k3s", "b/k3s")], "amd64", "k3s")
    assert err.value.fix


def test_the_install_verification_accepts_the_published_file_and_refuses_a_tampered_one(tmp_path: Path) -> None:
    blob = tmp_path / "k3s"
    blob.write_bytes(b"release bytes\n")
    good = hashlib.sha256(blob.read_bytes()).hexdigest()
    artifact = UploadedArtifact("k3s", str(blob), good, str(blob))
    # What every install runs before it changes anything on the host.
    lines = verify_lines([artifact])
    assert lines in driver_for("k3s").render_install(NODE, [artifact])
    script = Script("verify", "unit", lib=("verify_artifact",)).render(lines + 'log "verified"\n')
    ok = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stderr

    blob.write_bytes(b"release bytes, tampered\n")
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()
    bad = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20)
    assert bad.returncode == ARTIFACT_VERIFY_EXIT
    assert f"refusing artifact k3s: {blob} has sha256 {actual}, expected {good}" in bad.stderr
    assert blob.exists(), "a refused artifact is reported, never deleted"

    blob.unlink()
    missing = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20)
    assert missing.returncode == ARTIFACT_VERIFY_EXIT and "does not exist" in missing.stderr


@pytest.mark.parametrize("name", sorted(VERSION_PATTERNS))
def test_installs_refuse_malformed_digests_and_destinations(name: str) -> None:
    binary = {"k3s": "dist/k3s", "k0s": "dist/k0s", "microshift": "rpms/microshift.rpm"}[name]
    driver = driver_for(name)
    with pytest.raises(DistributionError, match="not a sha256 hex digest"):
        driver.render_install(NODE, [UploadedArtifact(name, binary, "abc", "/x")])
    with pytest.raises(DistributionError, match="not an absolute path"):
        driver.render_install(NODE, [UploadedArtifact(name, binary, SHA, "relative/x")])


# --- supervisor ----------------------------------------------------------------------------------


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.fixture
def supervised(tmp_path: Path):
    """Write a supervisor for a command into tmp_path; yields a runner; kills leftovers."""
    made: list[Path] = []

    def make(argv: tuple[str, ...], stop_timeout_s: int = 10, restart_delay_s: int = 5):
        ctl = tmp_path / "svc-supervise"
        ctl.write_text(
            render_supervisor(
                "svc",
                argv,
                str(tmp_path / "run/svc.pid"),
                str(tmp_path / "log/svc.log"),
                stop_timeout_s=stop_timeout_s,
                restart_delay_s=restart_delay_s,
            )
        )
        ctl.chmod(0o755)
        made.append(tmp_path / "run/svc.pid")

        def run(action: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(ctl), action], capture_output=True, text=True, timeout=40)

        return run

    yield make
    for pidfile in made:
        if pidfile.exists():
            pgid = int(pidfile.read_text())
            if _group_members(pgid):
                os.killpg(pgid, signal.SIGKILL)


def test_supervised_start_is_idempotent_and_stop_kills_the_whole_group(supervised, tmp_path: Path) -> None:
    run = supervised(("bash", "-c", "sleep 30 & sleep 30"))
    first = run("start")
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "run/svc.pid").read_text())
    assert os.getpgid(pid) == pid == os.getsid(pid), "the supervisor leads its own session and group"

    deadline = time.monotonic() + 5
    while len(_group_members(pid)) < 4 and time.monotonic() < deadline:  # loop, bash -c, two sleeps
        time.sleep(0.05)
    members = _group_members(pid)
    assert len(members) >= 4

    again = run("start")
    assert again.returncode == 0 and f"already running (pid {pid})" in again.stdout
    assert int((tmp_path / "run/svc.pid").read_text()) == pid
    assert run("status").returncode == 0

    stop = run("stop")
    assert stop.returncode == 0 and "stopped" in stop.stdout
    assert _group_members(pid) == []
    assert not (tmp_path / "run/svc.pid").exists()
    assert run("status").returncode == 3
    assert "not running" in run("stop").stdout


def test_supervised_stop_kills_a_group_that_ignores_sigterm_after_the_timeout(supervised, tmp_path: Path) -> None:
    run = supervised(("bash", "-c", "trap '' TERM; sleep 30 & wait"), stop_timeout_s=1)
    assert run("start").returncode == 0
    pid = int((tmp_path / "run/svc.pid").read_text())
    deadline = time.monotonic() + 5
    while len(_group_members(pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    stop = run("stop")
    assert stop.returncode == 0
    assert "killing process group" in stop.stderr
    assert time.monotonic() - started < 10
    assert _group_members(pid) == []


def test_supervisor_restarts_a_command_that_exits(supervised, tmp_path: Path) -> None:
    marker = tmp_path / "starts"
    run = supervised(("bash", "-c", f"echo start >> {marker}; exit 7"), restart_delay_s=1)
    assert run("start").returncode == 0
    deadline = time.monotonic() + 8
    while (not marker.exists() or len(marker.read_text().split()) < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(marker.read_text().split()) >= 2, "the command was not restarted"
    assert "exited with status 7; restarting" in (tmp_path / "log/svc.log").read_text()
    assert run("stop").returncode == 0


# --- kubeconfig --------------------------------------------------------------------------------------

KUBECONFIG = """apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: Q0EK
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: Q0VSVAo=
    client-key-data: S0VZCg==
"""


def test_rewrite_kubeconfig_changes_only_the_server_address() -> None:
    out = rewrite_kubeconfig(KUBECONFIG, "https://10.213.7.21:6443")
    assert yaml.safe_load(out)["clusters"][0]["cluster"]["server"] == "https://10.213.7.21:6443"
    before, after = KUBECONFIG.splitlines(), out.splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [("    server: https://127.0.0.1:6443", "    server: https://10.213.7.21:6443")]


def test_rewrite_kubeconfig_handles_every_cluster_and_refuses_garbage() -> None:
    two = yaml.safe_load(KUBECONFIG)
    two["clusters"].append({"name": "other", "cluster": {"server": "https://localhost:6443"}})
    out = yaml.safe_load(rewrite_kubeconfig(yaml.safe_dump(two), "https://api.site:6443"))
    assert {c["cluster"]["server"] for c in out["clusters"]} == {"https://api.site:6443"}
    assert out["users"] == two["users"]
    with pytest.raises(DistributionError, match="not an https URL"):
        rewrite_kubeconfig(KUBECONFIG, "http://10.0.0.1:6443")
    with pytest.raises(DistributionError, match="no clusters"):
        rewrite_kubeconfig("kind: Config\n", "https://10.0.0.1:6443")


# --- rendering helpers and the registry ----------------------------------------------------------------


def test_heredoc_carries_content_verbatim_even_with_the_delimiter_inside(tmp_path: Path) -> None:
    content = "a line\nEDGEFLEET_EOF\n$HOME `x` '\"\n"
    dest = tmp_path / "f"
    script = 'put_file() { cat >"$1"; chmod "$2" "$1"; }\n' + heredoc_file(str(dest), content, 0o640)
    subprocess.run(["bash", "-c", script], check=True, timeout=10)
    assert dest.read_text() == content
    assert dest.stat().st_mode & 0o777 == 0o640


def test_ere_literal_matches_paths_literally() -> None:
    pattern = ere_literal("/var/lib/rancher.k3s/")
    test = f'[[ "/var/lib/rancher.k3s/data" =~ {pattern} ]] && ! [[ "/var/lib/rancherXk3s/" =~ {pattern} ]]'
    ok = subprocess.run(["bash", "-c", test], timeout=10)
    assert ok.returncode == 0


@pytest.mark.parametrize("name", sorted(VERSION_PATTERNS))
def test_every_distribution_with_a_version_pattern_has_a_driver(name: str) -> None:
    driver = driver_for(name)
    assert driver.name == name
    assert driver.token_env.isupper()


def test_unknown_distribution_is_refused_with_the_choices() -> None:
    with pytest.raises(DistributionError) as err:
        driver_for("rke2")
    assert err.value.field == "distribution.name"
    assert "k0s, k3s, microshift" in err.value.fix


# --- templates ----------------------------------------------------------------------------------------


def test_templates_are_filled_exactly_or_not_at_all() -> None:
    drain = fill("kube-drain.sh", TIMEOUT=90)
    assert "--timeout=90s" in drain and "@@" not in drain
    assert not drain.startswith("# shellcheck shell="), "the header is not part of the text"
    with pytest.raises(ValueError, match=r"no value for \['TIMEOUT'\]"):
        fill("kube-drain.sh")
    with pytest.raises(ValueError, match=r"no placeholder for \['NODE'\]"):
        fill("kube-drain.sh", TIMEOUT=90, NODE="n1")
    with pytest.raises(ValueError, match="takes whole lines"):
        fill("microshift-firewall.sh", RULES="  fw_add port public 6443/tcp")  # without its newline


def test_a_seeded_secret_is_written_once_and_never_replaced(tmp_path: Path) -> None:
    """The node password: seeded on a host that has none (first install, or a wiped host), kept
    on a host that already presented one, and never printed."""
    dest = tmp_path / "node" / "password"
    script = Script("seed", "unit", lib=("files", "secret")).render(f'seed_secret PW {dest}\necho "changed=$CHANGED"\n')

    def seed(value: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script], env={**os.environ, "PW": value}, capture_output=True, text=True, timeout=20
        )

    first = seed("0123abcd")
    assert first.returncode == 0, first.stderr
    assert dest.read_text() == "0123abcd\n" and oct(dest.stat().st_mode & 0o777) == "0o600"
    assert oct(dest.parent.stat().st_mode & 0o777) == "0o700"
    assert "changed=1" in first.stdout and "0123abcd" not in first.stdout + first.stderr
    again = seed("ffffeeee")
    assert again.returncode == 0 and "changed=0" in again.stdout
    assert dest.read_text() == "0123abcd\n", "an existing password is never replaced"
    dest.unlink()
    assert seed("").returncode == 0 and not dest.exists(), "nothing to seed: K3s makes its own"
