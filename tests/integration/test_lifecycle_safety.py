"""Lifecycle safety on the lab: renaming a host, reordering the HA servers and changing the
HA registration address keep the cluster (same etcd members, nodes never NotReady, no
uninstall: K3s processes and data directories intact), and neither the preview nor
scripts/pr-preview shows a destructive step. Agents hold only the agent token, and a join
whose token carries a wrong CA hash is refused.

The tests run in order on one dev stack (module-scoped), on a copy of the repository.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO, Lab
from .test_e2e import Fleet, _server_pids, fresh_fleet, kubectl
from .test_remote import in_host

pytestmark = [pytest.mark.integration, pytest.mark.lab]
MARKER = "/var/lib/rancher/k3s/server/db/edgefleet-lifecycle-marker"


@pytest.fixture(scope="module")
def fleet(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A dev stack on fresh lab hosts: lab-single with agent-1 as a real agent, lab-ha."""
    f = fresh_fleet(tmp_path_factory, "lifecycle", ("lab-single", "lab-ha"))
    inv = f.inventory()
    single = inv["sites"][0]
    single["workloads"] = []
    assert [(h["name"], h.get("role")) for h in single["hosts"]] == [("single-1", None), ("agent-1", "agent")]
    f.write_inventory(inv)
    yield f
    subprocess.run([str(REPO / "lab/lab"), "down"], capture_output=True, timeout=180)


def site(inv: dict, name: str) -> dict:
    return next(s for s in inv["sites"] if s["name"] == name)


def etcd_members() -> list[tuple[str, str]]:
    """(member id, name) of the embedded etcd, through K3s's supervisor API on ha-1."""
    out = in_host(
        None,
        "ha-1",
        "bash",
        "-c",
        't="$(cat /etc/rancher/k3s/token)"; curl -sk -u "server:${t##*:}" https://127.0.0.1:6443/db/info',
    ).stdout
    return sorted((str(m["ID"]), m["name"]) for m in json.loads(out)["members"])


SERVERS = {"lab-single": ["10.213.7.11"], "lab-ha": ["10.213.7.21", "10.213.7.22", "10.213.7.23"]}


def not_ready_nodes(kubeconfig: Path, servers: list[str]) -> list[str]:
    """Nodes not Ready, asking whichever server answers (one may be restarting)."""
    errors = []
    for server in servers:
        proc = kubectl(
            kubeconfig, f"--server=https://{server}:6443", "get", "nodes", "-o", "json", check=False, timeout=10
        )
        if proc.returncode == 0:
            break
        errors.append(proc.stderr.strip()[:200])
    else:
        return [f"no API server answers: {errors}"]
    out = []
    for node in json.loads(proc.stdout)["items"]:
        ready = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}.get("Ready")
        if ready != "True":
            out.append(node["metadata"]["name"])
    return out


class Watch:
    """Samples every site's nodes while an update runs: any NotReady node is recorded."""

    def __init__(self, kubeconfigs: dict[str, Path]):
        self.kubeconfigs, self.seen, self.samples = kubeconfigs, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, kc in self.kubeconfigs.items():
                self.seen += [(name, n) for n in not_ready_nodes(kc, SERVERS[name])]
            self.samples += 1
            time.sleep(1)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def snapshot(hosts: list[str]) -> dict[str, object]:
    """What an uninstall or a restart would change: K3s processes, the data directory marker,
    the machine's claim."""
    return {
        h: (
            sorted(_server_pids(h)),
            in_host(None, h, "cat", MARKER).stdout,
            in_host(None, h, "cat", "/var/lib/edgefleet/owner").stdout,
        )
        for h in hosts
    }


def preview_is_safe(fleet: Fleet) -> str:
    """The preview as JSON and as scripts/pr-preview renders it: no destructive step."""
    proc = fleet.p.run("preview", "--json", "--non-interactive", "--stack", "dev", timeout=600)
    steps = json.loads(proc.stdout).get("steps") or []
    # Only a renamed host's component (it owns nothing on the host) may go away.
    deleting = [
        (s["urn"].split("::")[2].rsplit("$", 1)[-1], s["urn"].rsplit("::", 1)[-1])
        for s in steps
        if s.get("op") in ("delete", "replace", "delete-replaced", "create-replacement")
    ]
    assert [d for d in deleting if d[0] != "edge:host:EdgeHost"] == [], deleting
    comment = subprocess.run(
        [str(REPO / ".venv/bin/python"), str(REPO / "scripts/pr-preview"), "--stack", "dev"],
        input=proc.stdout,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert comment.splitlines()[1] == "### ✅ Pulumi preview of stack `dev`", comment
    assert "Destructive" not in comment, comment
    return comment


def test_first_up_installs_and_marks_the_data_directories(fleet: Fleet) -> None:
    fleet.stack("up", "--yes")
    for host in ("single-1", "ha-1", "ha-2", "ha-3"):
        in_host(None, host, "bash", "-c", f"echo {host} >{MARKER}")
    assert len(etcd_members()) == 3
    deadline = time.monotonic() + 90  # kwok's nodes turn Ready within its first heartbeats
    while (
        waiting := [n for name in SERVERS for n in not_ready_nodes(fleet.kubeconfig(name), SERVERS[name])]
    ) and time.monotonic() < deadline:
        time.sleep(3)
    assert waiting == []


def test_a_stack_named_the_earlier_way_is_adopted_without_a_destructive_step(fleet: Fleet) -> None:
    """Sites were once named by the site alone (``lab-ha``), their children after them
    (``lab-ha-k8s``, ``lab-ha-ha-1``); they are now named under the fleet (``fleet-lab-ha…``).
    A stack written the earlier way previews and updates with no create, delete or replace:
    the site's alias carries every child named after it."""
    state = fleet.p.run("stack", "export", "--stack", "dev").stdout
    assert "::fleet-lab-ha-k8s" in state
    earlier = state.replace("::fleet-lab-", "::lab-")
    (fleet.tmp / "earlier.json").write_text(earlier)
    before = snapshot(["single-1", "ha-1", "ha-2", "ha-3"])
    fleet.p.run("stack", "import", "--stack", "dev", "--file", str(fleet.tmp / "earlier.json"))
    preview_is_safe(fleet)
    proc = fleet.p.run("preview", "--json", "--non-interactive", "--stack", "dev", timeout=600)
    changed = [
        s["urn"].rsplit("::", 1)[-1]
        for s in json.loads(proc.stdout).get("steps") or []
        if s.get("op") in ("create", "delete", "replace", "create-replacement", "delete-replaced", "update")
    ]
    assert changed == [], changed
    fleet.stack("up", "--yes")
    assert "::fleet-lab-ha-k8s" in fleet.p.run("stack", "export", "--stack", "dev").stdout
    assert snapshot(["single-1", "ha-1", "ha-2", "ha-3"]) == before


def test_agents_hold_only_the_agent_token_in_its_secure_form(fleet: Fleet) -> None:
    server_token = in_host(None, "single-1", "cat", "/etc/rancher/k3s/token").stdout.strip()
    assert server_token and "::" not in server_token
    found = in_host(
        None,
        "agent-1",
        "grep",
        "-rlF",
        server_token,
        "/etc",
        "/var/lib/rancher",
        "/var/lib/edgefleet",
        "/usr/local/lib/edgefleet",
        "/run",
    )
    assert found.returncode == 1 and found.stdout == "", f"the server token is on the agent: {found.stdout}"
    agent_token = in_host(None, "agent-1", "cat", "/etc/rancher/k3s/token").stdout.strip()
    ca = in_host(None, "single-1", "cat", "/var/lib/rancher/k3s/server/tls/server-ca.crt").stdout
    assert agent_token.startswith(f"K10{hashlib.sha256(ca.encode()).hexdigest()}::node:")
    assert in_host(None, "single-1", "test", "-s", "/etc/rancher/k3s/agent-token").returncode == 0


def test_a_join_with_a_wrong_ca_hash_is_refused(fleet: Fleet) -> None:
    # A second agent process on agent-1, with a configuration, data directory and load
    # balancer port of its own: it must refuse the server before sending any credentials.
    config = (
        "server: https://10.213.7.11:6443\n"
        f"token: K10{'0' * 64}::node:not-the-password\n"
        "data-dir: /tmp/wrong-ca\nnode-name: intruder\nnode-ip: 10.213.7.41\nlb-server-port: 16444\n"
    )
    proc = in_host(
        None,
        "agent-1",
        "bash",
        "-c",
        f"printf '%s' '{config}' >/tmp/wrong-ca.yaml && timeout 20 /usr/local/bin/k3s agent -c /tmp/wrong-ca.yaml",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "token CA hash does not match the Cluster CA certificate hash" in output, output[-3000:]
    assert "intruder" not in kubectl(fleet.kubeconfig("lab-single"), "get", "nodes", "-o", "name").stdout


def _update_keeps_everything(fleet: Fleet, hosts: list[str], *, restarts: bool = False) -> None:
    preview_is_safe(fleet)
    members, before = etcd_members(), snapshot(hosts)
    kubeconfigs = {name: fleet.kubeconfig(name) for name in SERVERS}
    with Watch(kubeconfigs) as watch:
        fleet.stack("up", "--yes")
    assert watch.samples > 3 and watch.seen == [], f"nodes NotReady during the update: {watch.seen}"
    assert etcd_members() == members
    after = snapshot(hosts)
    for host in hosts:
        pids, marker, claim = after[host]
        assert marker.strip() == host and claim.strip(), (host, after[host])
        assert claim == before[host][2], "the machine is still claimed by the same resource"
        if not restarts:
            assert pids == before[host][0], f"{host} was restarted"
    fleet.stack("up", "--yes", "--expect-no-changes")


def test_renaming_a_host_keeps_it(fleet: Fleet) -> None:
    inv = fleet.inventory()
    single = site(inv, "lab-single")
    single["hosts"][0]["name"] = "single-1b"
    fleet.write_inventory(inv)
    _update_keeps_everything(fleet, ["single-1", "ha-1", "ha-2", "ha-3"])
    names = kubectl(fleet.kubeconfig("lab-single"), "get", "nodes", "-o", "name").stdout.split()
    assert "node/agent-1" in names and not [n for n in names if "single-1b" in n]


def test_reordering_the_ha_servers_keeps_the_cluster(fleet: Fleet) -> None:
    inv = fleet.inventory()
    ha = site(inv, "lab-ha")
    ha["hosts"] = [ha["hosts"][1], ha["hosts"][0], ha["hosts"][2]]
    fleet.write_inventory(inv)
    _update_keeps_everything(fleet, ["ha-1", "ha-2", "ha-3"])


def test_a_new_registration_address_keeps_the_cluster(fleet: Fleet) -> None:
    inv = fleet.inventory()
    site(inv, "lab-ha")["registration_address"] = "10.213.7.23"
    fleet.write_inventory(inv)
    # The servers' certificates gain the address: a rolling restart, nothing removed.
    _update_keeps_everything(fleet, ["ha-1", "ha-2", "ha-3"], restarts=True)
    kc = fleet.kubeconfig("lab-ha")
    assert "https://10.213.7.23:6443" in kc.read_text()
    assert kubectl(kc, "get", "--raw", "/readyz").stdout.strip() == "ok"
