"""Read-back on refresh: a host that lost what a resource describes (wiped disk, reimaged
machine, install removed behind the stack's back) reports it gone; a host that has it keeps
the resource as it is; a check without a verdict is an error, never taken for either."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from components import remote
from components.contract import CHECK_ABSENT, CHECK_PRESENT
from components.host import CLAIM_FILE, claimed_check, reads_back

PROPS: dict[str, Any] = {"connection": {"host": "10.0.0.1"}, "label": "site 's' host 'h'", "step": "m-1-install"}


def bash(script: str) -> str:
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_script_that_prints_reads_back_its_output_then_present() -> None:
    out = bash(reads_back("#!/usr/bin/env bash\nset -e\necho line-1\necho 'EDGEFLEET_READ_BACK'\n", "the thing"))
    assert out.splitlines() == ["line-1", "EDGEFLEET_READ_BACK", CHECK_PRESENT]


def test_a_script_that_fails_reads_back_absent_naming_what() -> None:
    out = bash(reads_back("#!/usr/bin/env bash\necho partial\nexit 1\n", "the admin kubeconfig"))
    assert out.splitlines() == [f"{CHECK_ABSENT}the admin kubeconfig cannot be read on {bash('hostname').strip()}"]


@pytest.mark.parametrize(
    ("owner", "verdict"),
    [
        (None, CHECK_ABSENT),  # nobody claims the machine: wiped or reimaged
        ("dev/m-1", "driver-check-ran"),  # ours: the driver's check decides
        ("prod/m-1", CHECK_PRESENT),  # another stack's now: not ours to judge
        ("dev.plant-a/m-1", "driver-check-ran"),  # the site stack that took it over from dev
    ],
)
def test_the_install_check_reads_the_claim_first(tmp_path: Path, owner: str | None, verdict: str) -> None:
    claim_file = tmp_path / "owner"
    if owner is not None:
        claim_file.write_text(owner + "\n")
    script = claimed_check("echo driver-check-ran\n", "dev/m-1", ["dev.plant-a/m-1"]).replace(
        CLAIM_FILE, str(claim_file)
    )
    assert bash(script).splitlines()[-1].startswith(verdict)


def test_verdicts_are_parsed_from_the_last_line_only() -> None:
    assert remote.read_verdict(f"a\nb\n{CHECK_PRESENT}\n", "l", "s") == (True, "a\nb")
    assert remote.read_verdict(f"{CHECK_PRESENT}\n{CHECK_ABSENT}gone\n", "l", "s") == (False, "gone")
    with pytest.raises(remote.RemoteError, match="printed no verdict"):
        remote.read_verdict(f"{CHECK_PRESENT}\ntrailing\n", "l", "s")


@pytest.fixture
def host_says(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the host prints, in order: each read-back returns the next one (none left: the
    host was not contacted)."""
    said: list[str] = []

    def run_script(conn: dict, script: str, env: dict, label: str, **kw: Any) -> tuple[str, str]:
        assert conn == PROPS["connection"] and label == PROPS["label"] and kw["step"].endswith("/read")
        return said.pop(0), ""

    monkeypatch.setattr(remote, "run_script", run_script)
    return said


def test_a_command_without_a_check_is_kept_without_contacting_the_host(host_says: list[str]) -> None:
    result = remote._CommandProvider().read("id-1", {**PROPS, "check": None})
    assert result.id == "id-1"


def test_a_command_whose_host_lost_it_is_gone_and_one_that_has_it_is_kept(host_says: list[str]) -> None:
    props = {**PROPS, "check": "check-script", "stdout": "node-name"}
    host_says.append(f"{CHECK_ABSENT}/usr/local/bin/k3s is not installed on h\n")
    gone = remote._CommandProvider().read("id-1", props)
    assert gone.id is None and gone.outs == {}
    host_says.append(f"{CHECK_PRESENT}\n")
    kept = remote._CommandProvider().read("id-1", props)
    assert kept.id == "id-1" and kept.outs == props


def test_a_value_that_changed_on_the_host_is_made_again(host_says: list[str]) -> None:
    props = {**PROPS, "check": "cat-ca-hash", "check_stdout": True, "stdout": "aaaa\n"}
    host_says.append(f"aaaa\n{CHECK_PRESENT}\n")
    assert remote._CommandProvider().read("id-1", props).id == "id-1"
    host_says.append(f"bbbb\n{CHECK_PRESENT}\n")
    assert remote._CommandProvider().read("id-1", props).id is None, "a rebuilt cluster has a new CA"


def test_an_upload_is_read_back_by_its_digest(host_says: list[str]) -> None:
    props = {**PROPS, "remote_path": "/var/lib/edgefleet/artifacts/k3s", "sha256": "a" * 64}
    host_says.append(f"{CHECK_ABSENT}/var/lib/edgefleet/artifacts/k3s is missing or changed on h\n")
    assert remote._CopyProvider().read("id-2", props).id is None
    host_says.append(f"{CHECK_PRESENT}\n")
    assert remote._CopyProvider().read("id-2", props).id == "id-2"
    # Without a digest (state written before read-back existed) nothing is asked of the host.
    assert remote._CopyProvider().read("id-2", {**props, "sha256": None}).id == "id-2"


def test_the_upload_check_compares_the_digest_on_the_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    artifact = tmp_path / "k3s"
    artifact.write_bytes(b"binary")
    digest = subprocess.run(["sha256sum", str(artifact)], capture_output=True, text=True).stdout.split()[0]
    scripts: list[str] = []

    def run_script(conn: dict, script: str, env: dict, label: str, **kw: Any) -> tuple[str, str]:
        scripts.append(script)
        return bash(script), ""

    monkeypatch.setattr(remote, "run_script", run_script)
    props = {**PROPS, "remote_path": str(artifact), "sha256": digest}
    assert remote._CopyProvider().read("id-3", props).id == "id-3"
    artifact.write_bytes(b"tampered")
    assert remote._CopyProvider().read("id-3", props).id is None
    artifact.unlink()
    assert remote._CopyProvider().read("id-3", props).id is None
