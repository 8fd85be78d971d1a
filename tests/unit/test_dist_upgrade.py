"""An upgrade is what the host component runs when a host's version changes: drain (on the first
server), the install again with the new release's artifacts (each verified by its sha256 before
anything changes), then node-ready (Ready, and uncordoned because the drain cordoned it). For
every distribution: the resources EdgeHost registers under Pulumi mocks, their order and the
scripts they run, shellcheck-clean; the node operations run under bash against a stand-in
kubectl. test_dist_k3s runs the whole sequence, install included, in a sandbox."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pulumi
import pytest

from components.distributions import NodeSpec, driver_for
from components.host import EdgeHost, EdgeHostArgs, LocalArtifact, NodeSteps, SshTarget
from tests.unit.dist_fixtures import node_with
from tests.unit.test_dist_k3s import FAKE_KUBECTL
from tests.unit.test_dist_scripts import shellcheck
from tests.unit.test_topology import COMMAND, Registered, run

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
FIRST = node_with(site="plant", host="cp-1")
AGENT = dataclasses.replace(
    FIRST, host="wrk-1", address="10.0.0.21", role="agent", first_server=False, server_url="https://10.0.0.11:6443"
)
JOINED_SERVER = dataclasses.replace(
    FIRST, host="cp-2", address="10.0.0.12", first_server=False, server_url="https://10.0.0.11:6443", ha=True
)
# (version, release file) per distribution: the one installed, then the next.
RELEASES = {
    "k3s": [("v1.33.4+k3s1", "k3s-v1.33.4/k3s"), ("v1.34.1+k3s1", "k3s-v1.34.1/k3s")],
    "k0s": [("v1.33.4+k0s.0", "k0s-v1.33.4+k0s.0-amd64"), ("v1.34.1+k0s.0", "k0s-v1.34.1+k0s.0-amd64")],
    "microshift": [("4.19.0", "microshift-4.19.0-1.el9.x86_64.rpm"), ("4.20.0", "microshift-4.20.0-1.el9.x86_64.rpm")],
}
# The node each distribution drains for an upgrade: one that joined the first server (MicroShift
# runs one node, which is its own first server and is never drained through its own API).
JOINED = {"k3s": [AGENT, JOINED_SERVER], "k0s": [AGENT, JOINED_SERVER], "microshift": []}
TIMEOUT = 90


def artifact(dist: str, release: int) -> LocalArtifact:
    path = RELEASES[dist][release][1]
    return LocalArtifact(
        name=dist, path=f"/cache/{path}", sha256=f"{release + 1:x}" * 64, url=f"https://artifacts.example/{path}"
    )


def hosts(dist: str, release: int) -> dict[str, Registered]:
    """The remote commands EdgeHost registers for the site's hosts at ``release``, by name."""
    version = RELEASES[dist][release][0]

    def program() -> None:
        def host(node: NodeSpec, machine: str, first: EdgeHost | None = None) -> EdgeHost:
            target = SshTarget(node.address, 22, "root", pulumi.Output.secret("key"), HOST_KEY)
            return EdgeHost(
                machine,
                EdgeHostArgs(
                    node=node,
                    driver=driver_for(dist),
                    target=target,
                    artifacts=(artifact(dist, release),),
                    environment={},
                    version=version,
                    machine=machine,
                    claim=f"unit/{machine}",
                    joins_via=first,
                    ready_timeout_s=TIMEOUT,
                ),
            )

        first = host(FIRST, "m-first")
        for i, node in enumerate(JOINED[dist]):
            host(node, f"m-joined-{i}", first)

    return {r.real_name: r for r in run(program).registered if r.kind == COMMAND}


# A distribution, and the commands EdgeHost registers before and after its version changes.
Upgrade = tuple[str, dict[str, Registered], dict[str, Registered]]


@pytest.fixture(scope="module", params=sorted(RELEASES))
def upgrade(request: pytest.FixtureRequest) -> Upgrade:
    dist = request.param
    return dist, hosts(dist, 0), hosts(dist, 1)


def machines(dist: str) -> list[tuple[str, NodeSpec]]:
    return [("m-first", FIRST), *((f"m-joined-{i}", node) for i, node in enumerate(JOINED[dist]))]


def test_a_new_version_reruns_drain_install_and_node_in_that_order(upgrade: Upgrade) -> None:
    dist, before, after = upgrade
    for machine, _ in machines(dist):
        drain, install, node = (after[f"{machine}-{step}"] for step in ("drain", "install", "node"))
        # One trigger for all three: what re-runs one re-runs the others.
        assert drain.inputs["triggers"] == install.inputs["triggers"] == node.inputs["triggers"]
        assert install.inputs["triggers"][0] == RELEASES[dist][1][0]
        assert install.inputs["triggers"] != before[f"{machine}-install"].inputs["triggers"]
        assert f"{machine}-drain" in install.depends_on and node.depends_on == {f"{machine}-install"}


def test_the_first_server_is_drained_through_its_own_api_or_upgraded_in_place(upgrade: Upgrade) -> None:
    _, _, after = upgrade
    drain = after["m-first-drain"]
    assert drain.plain("connection")["host"] == FIRST.address
    script = drain.inputs["update"]
    assert f"NODE={FIRST.host}\n" in script and 'drain "$NODE"' in script
    assert "does not answer: $NODE is upgraded in place, without a drain" in script
    assert after["m-first-node"].inputs.get("delete") is None, "removing the first server removes the site"


def test_a_joined_node_is_cordoned_and_drained_through_the_first_server(upgrade: Upgrade) -> None:
    dist, _, after = upgrade
    for machine, node in machines(dist)[1:]:
        drain = after[f"{machine}-drain"]
        assert drain.plain("connection")["host"] == FIRST.address
        script = drain.inputs["update"]
        assert f"NODE={node.host}\n" in script
        annotate = script.index('annotate node "$NODE" --overwrite edgefleet.io/cordoned-by=edgefleet')
        assert annotate < script.index('cordon "$NODE"') < script.index('drain "$NODE"')
        assert f"--ignore-daemonsets --delete-emptydir-data --timeout={TIMEOUT}s" in script


def test_the_install_verifies_the_new_release_before_it_changes_anything(upgrade: Upgrade) -> None:
    dist, before, after = upgrade
    new, old = artifact(dist, 1), artifact(dist, 0)
    for machine, _ in machines(dist):
        script = after[f"{machine}-install"].plain("update")
        verify = f"verify_artifact {dist} {new.remote_path()} {new.sha256}\n"
        assert verify in script and old.sha256 not in script
        body = script.split("require_root\n", 1)[1]
        first_change = min(body.index(s) for s in ("install_copy ", "put_file ", "RPMS=(") if s in body)
        assert body.index(verify) < first_change
        if dist != "microshift":
            assert f"install_copy {new.remote_path()} /usr/local/bin/{dist} 0755 {new.sha256}\n" in script
        else:
            assert f"RPMS=({new.remote_path()})" in script
        assert script.rindex("svc_apply\n") > script.index(verify)
        assert before[f"{machine}-install"].plain("update") != script


def test_the_node_is_uncordoned_once_ready(upgrade: Upgrade) -> None:
    dist, _, after = upgrade
    for machine, node in machines(dist):
        script = after[f"{machine}-node"].inputs["update"]
        if not driver_for(dist).has_node(node):
            continue
        wait = script.index(f'wait_for {TIMEOUT} "node $NODE" node_ready')
        assert wait < script.index('uncordon "$NODE"') < script.index("edgefleet.io/cordoned-by- >/dev/null")


def test_the_upgrade_scripts_are_shellcheck_clean(upgrade: Upgrade, tmp_path: Path) -> None:
    dist, _, after = upgrade
    files = {}
    for machine, _ in machines(dist):
        for step in ("drain", "install", "node"):
            text = after[f"{machine}-{step}"].plain("update")
            if text.startswith("#!"):
                path = tmp_path / f"{machine}-{step}.sh"
                path.write_text(text)
                files[str(path)] = f"{machine}-{step}"
    assert len(files) == 3 * len(machines(dist))
    assert shellcheck(files, "--shell=bash") == {}


# --- the node operations under bash -----------------------------------------------------------------

# How each distribution's server calls kubectl, and the file that marks the distribution installed.
KUBECTL = {
    "k3s": ("/usr/local/bin/k3s", "--kubeconfig=*"),
    "k0s": ("/usr/local/bin/k0s", "kubectl"),
    "microshift": ("oc", "--kubeconfig=*"),
}
INSTALLED = {"k3s": "/usr/local/bin/k3s", "k0s": "/usr/local/bin/k0s", "microshift": "/usr/bin/microshift"}


@pytest.mark.parametrize("dist", sorted(RELEASES))
def test_drain_then_ready_leave_the_node_schedulable_again(dist: str, tmp_path: Path) -> None:
    node = (JOINED[dist] or [FIRST])[0]
    steps = NodeSteps(driver_for(dist), node, [], joined=True, timeout_s=10)
    fake = tmp_path / "bin" / Path(KUBECTL[dist][0]).name
    fake.parent.mkdir()
    # The stand-in answers as kubectl once the distribution's own arguments are stripped.
    fake.write_text(
        f'#!/usr/bin/env bash\n{FAKE_KUBECTL}[[ "${{1:-}}" == {KUBECTL[dist][1]} ]] && shift\nfake_kubectl "$@"\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "FAKE_KUBE": str(tmp_path / "kube"), "HOME": str(tmp_path)}

    def run_step(script: str) -> subprocess.CompletedProcess[str]:
        script = script.replace(INSTALLED[dist], str(fake))
        if KUBECTL[dist][0].startswith("/"):  # otherwise found on PATH
            script = script.replace(KUBECTL[dist][0], str(fake))
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)

    drained = run_step(steps.drain())
    assert drained.returncode == 0, drained.stderr
    assert (tmp_path / "kube/unschedulable").read_text() == "true\n"
    assert (tmp_path / "kube/cordoned-by").read_text() == "edgefleet\n"
    ready = run_step(steps.ready(node.host))
    assert ready.returncode == 0, ready.stderr
    assert f"node {node.host} is Ready and uncordoned" in ready.stderr
    assert not (tmp_path / "kube/unschedulable").exists() and not (tmp_path / "kube/cordoned-by").exists()
    calls = [c.split()[0] for c in (tmp_path / "kube/calls").read_text().splitlines() if not c.startswith("get")]
    assert calls == ["annotate", "cordon", "drain", "uncordon", "annotate"]


@pytest.mark.parametrize(
    ("situation", "joined", "says"),
    [
        ("alone", True, "no other node can take the pods of n1: it is upgraded in place, without a drain"),
        ("api-down", False, "does not answer: n1 is upgraded in place, without a drain"),
    ],
)
def test_a_drain_that_could_only_strand_pods_or_cannot_reach_its_api_upgrades_in_place(
    tmp_path: Path, situation: str, joined: bool, says: str
) -> None:
    """A node with nowhere to move its pods keeps them through the restart; a first server
    whose own API is down is upgraded anyway (the upgrade may be what brings it back)."""
    steps = NodeSteps(driver_for("k0s"), dataclasses.replace(AGENT, host="n1"), [], joined=joined, timeout_s=4)
    fake = tmp_path / "k0s"
    fake.write_text(f'#!/usr/bin/env bash\n{FAKE_KUBECTL}shift\nfake_kubectl "$@"\n')
    fake.chmod(0o755)
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube" / situation).touch()
    done = subprocess.run(
        ["bash", "-c", steps.drain().replace("/usr/local/bin/k0s", str(fake))],
        capture_output=True,
        text=True,
        env={**os.environ, "FAKE_KUBE": str(tmp_path / "kube")},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert says in done.stderr
    calls = (tmp_path / "kube/calls").read_text()
    assert "cordon" not in calls and "drain" not in calls


def test_a_node_an_operator_cordoned_stays_cordoned(tmp_path: Path) -> None:
    steps = NodeSteps(driver_for("k0s"), AGENT, [], joined=True, timeout_s=10)
    fake = tmp_path / "k0s"
    fake.write_text(f'#!/usr/bin/env bash\n{FAKE_KUBECTL}shift\nfake_kubectl "$@"\n')
    fake.chmod(0o755)
    (tmp_path / "kube").mkdir()
    (tmp_path / "kube/unschedulable").write_text("true\n")
    env = {**os.environ, "FAKE_KUBE": str(tmp_path / "kube")}
    for script in (steps.drain(), steps.ready(AGENT.host)):
        done = subprocess.run(
            ["bash", "-c", script.replace("/usr/local/bin/k0s", str(fake))],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "kube/unschedulable").exists(), "the upgrade uncordons only what it cordoned"
    assert "uncordon" not in (tmp_path / "kube/calls").read_text()
