"""End to end on the lab: `pulumi up` of the dev stack (policy pack attached) installs real K3s
on the lab hosts over SSH, deploys the workloads, and keeps the fleet converged through drift,
a wiped host, server loss, a rolling restart, interrupted updates, a tampered artifact and an
agent's removal. Then the same fleet moves to a stack per site and the fleet command takes
over: waves with a site that does not exist, a tampered canary, drift, a SIGKILL, destroy.

The tests share one stack and run in file order: each starts from the fleet the one before it
left (the module-scoped ``fleet`` fixture is that journey). Their timings go to
bench/results/e2e.json only when every test of the module ran and passed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fleet import EXIT, toolchain
from images.build import read_index

from .conftest import CACHE, REPO, TOOLCHAIN, VERSIONS, Pulumi, kill_processes_of, pulumi_env
from .pods import MODEL, PORT, assert_answer, assert_refused, client_pod, curl_args, infer_url, request_body
from .test_remote import in_host

pytestmark = [pytest.mark.integration, pytest.mark.lab]
K3S = TOOLCHAIN / f"k3s-{VERSIONS['K3S_VERSION']}" / "k3s"  # the lab's release (bootstrap also builds the next)
LAB_HOSTS = ["single-1", "agent-1", "ha-1", "ha-2", "ha-3", "gw-1"]
CLIENTS = ("line-control", "vision")  # lab-ha's model: a declared client namespace, and one that is not


def kubectl(kubeconfig: Path, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The K3s build's kubectl (the multicall binary run under the name kubectl)."""
    cmd = ["bash", "-c", f'exec -a kubectl {K3S} --kubeconfig="$0" "$@"', str(kubeconfig), *args]
    proc = subprocess.run(cmd, text=True, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {proc.stderr}")
    return proc


class Fleet:
    def __init__(self, root: Path, backend: Path, tmp: Path):
        self.root, self.tmp = root, tmp
        self.p = Pulumi(cwd=root, backend=backend, env=pulumi_env(backend, passphrase="edgefleet-dev-lab-only"))
        self.figures: dict[str, float] = {}  # timings of this journey (bench/results/e2e.json)

    def stack(self, *args: str, check: bool = True, timeout: float = 1200) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(self.root / "scripts/stack"), "dev", *args],
            cwd=self.root,
            env=self.p.env,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"scripts/stack dev {' '.join(args)} exited {proc.returncode}\n"
                f"{proc.stdout[-8000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def kubeconfig(self, site: str) -> Path:
        path = self.tmp / f"kubeconfig-{site}"
        path.write_text(self.p.run("stack", "output", f"kubeconfig-{site}", "--show-secrets").stdout)
        path.chmod(0o600)
        return path

    def inventory(self) -> dict:
        return yaml.safe_load((self.root / "sites/dev.yaml").read_text())

    def write_inventory(self, data: dict) -> None:
        (self.root / "sites/dev.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def ready(address: str, kubeconfig: Path) -> bool:
    """The API server at ``address`` answers /readyz with ok within 5 s (one that hangs, as a
    stopping server may, is not ready)."""
    try:
        proc = kubectl(
            kubeconfig, f"--server=https://{address}:6443", "get", "--raw", "/readyz", check=False, timeout=5
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def k3s_procs(host: str) -> list[str]:
    """Names of K3s, kwok and container shim processes running in one lab host's network namespace."""
    pids = subprocess.run(["ip", "netns", "pids", f"ef-{host}"], text=True, capture_output=True).stdout.split()
    names = []
    for pid in pids:
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return [n for n in names if n.startswith(("k3s", "kwok", "containerd-shim"))]


def fresh_fleet(tmp_path_factory: pytest.TempPathFactory, name: str, sites: tuple[str, ...] = ()) -> Fleet:
    """The dev stack in a copy of the repository (only ``sites`` of its inventory, when given),
    on fresh lab hosts: whatever an earlier run left behind is gone."""
    for action in ("down", "up"):
        subprocess.run([str(REPO / "lab/lab"), action], check=True, capture_output=True, timeout=180)
    tmp = tmp_path_factory.mktemp(name)
    root = toolchain.project_copy(tmp, skip=("bench",))
    (root / "bench/results").mkdir(parents=True)
    (tmp / "state").mkdir()
    f = Fleet(root, tmp / "state", tmp)
    if sites:
        inv = f.inventory()
        inv["sites"] = [s for s in inv["sites"] if s["name"] in sites]
        f.write_inventory(inv)
    return f


@pytest.fixture(scope="module")
def fleet(lab, tmp_path_factory, request) -> Fleet:
    """The journey every test of this module continues: one dev stack on fresh lab hosts."""
    f = fresh_fleet(tmp_path_factory, "e2e")
    failed_before = request.session.testsfailed
    yield f
    kill_processes_of(f.root)  # what a failed test may have left running (a killed run's engine)
    module_tests = {name for name in vars(request.module) if name.startswith("test_")}
    ran = {i.originalname for i in request.session.items if i.module is request.module}
    if request.session.testsfailed != failed_before or ran != module_tests:
        print("bench/results/e2e.json not written: the journey did not run whole and green")
        return
    figures = dict(f.figures)
    figures["idempotent_ratio"] = round(figures["idempotent_up_s"] / figures["first_up_s"], 3)
    (REPO / "bench/results").mkdir(parents=True, exist_ok=True)
    (REPO / "bench/results/e2e.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def test_first_up_converges_and_each_kubeconfig_reaches_its_api(fleet: Fleet):
    t0 = time.monotonic()
    out = fleet.stack("up", "--yes")
    fleet.figures["first_up_s"] = round(time.monotonic() - t0, 1)
    assert "edgefleet-security" in out.stdout
    outputs = fleet.p.json("stack", "output", "--json")
    for site in ("lab-single", "lab-ha", "lab-gw"):
        assert outputs[f"kubeconfig-{site}"] == "[secret]"
        kc = fleet.kubeconfig(site)
        assert kubectl(kc, "get", "--raw", "/readyz").stdout.strip() == "ok"
    assert "BEGIN" not in fleet.p.run("stack", "export").stdout, "no key material in plain text in the state"


def test_workloads_available_with_network_policies(fleet: Fleet):
    for site, models in (
        ("lab-single", ["predictive-maintenance", "quality-control"]),
        ("lab-ha", ["predictive-maintenance"]),
        ("lab-gw", ["predictive-maintenance"]),
    ):
        kc = fleet.kubeconfig(site)
        for model in models:
            # Under an HPA the Deployment starts at one replica and the HPA raises it to its
            # minimum within its sync period (15 s): Available once that many are ready.
            deadline = time.monotonic() + 90
            while True:
                dep = json.loads(kubectl(kc, "-n", model, "get", "deployment", model, "-o", "json").stdout)
                available = {c["type"]: c["status"] for c in dep["status"].get("conditions", [])}
                if available.get("Available") == "True" or time.monotonic() > deadline:
                    break
                time.sleep(3)
            assert available.get("Available") == "True", (site, model, dep["status"])
            policies = {
                p["metadata"]["name"]
                for p in json.loads(kubectl(kc, "-n", model, "get", "networkpolicy", "-o", "json").stdout)["items"]
            }
            assert {"default-deny", "allow-dns"} <= policies, (site, policies)


# One request to the server on its pod's loopback, from inside the pod (the image has no curl).
ASK_LOCALLY = (
    "import sys, urllib.request; print(urllib.request.urlopen(urllib.request.Request("
    f"'http://127.0.0.1:{PORT}/v2/models/{MODEL}/infer', data=sys.argv[1].encode(), "
    "headers={'Content-Type': 'application/json'}), timeout=5).read().decode())"
)


def test_every_site_serves_its_model_and_its_network_policies_hold(fleet: Fleet):
    """On lab-ha a declared client namespace gets the model's answer through the Service (its two
    replicas on two of the three servers) and another namespace is refused; on lab-gw, whose
    gateway declares no client, the Service has its server as a ready endpoint and the server
    answers inside its pod."""
    kc = fleet.kubeconfig("lab-ha")
    image = read_index(CACHE / "images/images.json")["client"]["reference"]
    items: list[dict] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in CLIENTS]
    items += [client_pod(ns, "ha-3", image) for ns in CLIENTS]
    manifests = fleet.tmp / "ha-clients.json"
    manifests.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kubectl(kc, "apply", "-f", str(manifests))
    try:
        for ns in CLIENTS:
            kubectl(kc, "-n", ns, "wait", "pod/client", "--for=condition=Ready", "--timeout=90s", timeout=100)
        ip = json.loads(kubectl(kc, "-n", MODEL, "get", "service", MODEL, "-o", "json").stdout)["spec"]["clusterIP"]
        client, stranger = CLIENTS
        # A new client's address reaches the policies' ipsets about a second after it starts.
        deadline = time.monotonic() + 20
        while (
            answer := kubectl(kc, "-n", client, "exec", "client", "--", *curl_args(infer_url(ip)), check=False)
        ).returncode:
            assert time.monotonic() < deadline, answer.stdout + answer.stderr
            time.sleep(1)
        assert_answer(answer)
        assert_refused(kubectl(kc, "-n", stranger, "exec", "client", "--", *curl_args(infer_url(ip)), check=False))
    finally:
        # Bare pods would stop the drains of the rolling restart below: gone before it.
        kubectl(kc, "delete", "namespace", *CLIENTS, "--timeout=90s", check=False, timeout=100)
    # The gateway: its Service has the server as a ready endpoint, and the server answers (asked
    # from inside its own pod: the gateway declares no client namespace to ask from).
    gw = fleet.kubeconfig("lab-gw")
    slices = json.loads(
        kubectl(
            gw, "-n", MODEL, "get", "endpointslices", "-l", f"kubernetes.io/service-name={MODEL}", "-o", "json"
        ).stdout
    )["items"]
    assert [e for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")], slices
    assert_answer(
        kubectl(gw, "-n", MODEL, "exec", f"deployment/{MODEL}", "--", "python", "-c", ASK_LOCALLY, request_body())
    )


def test_ha_site_has_three_etcd_members(fleet: Fleet):
    # K3s's supervisor endpoint lists the embedded etcd members (what joining servers read).
    out = in_host(
        None, "ha-1", "bash", "-c", 'curl -sk -u "server:$(cat /etc/rancher/k3s/token)" https://127.0.0.1:6443/db/info'
    ).stdout
    members = json.loads(out)["members"]
    assert len(members) == 3, members
    assert {m["name"].rsplit("-", 1)[0] for m in members} == {"ha-1", "ha-2", "ha-3"}


def test_second_up_changes_nothing(fleet: Fleet):
    t0 = time.monotonic()
    fleet.stack("up", "--yes", "--expect-no-changes")
    fleet.figures["idempotent_up_s"] = round(time.monotonic() - t0, 1)


def test_refresh_shows_drift_and_up_restores_it(fleet: Fleet):
    kc = fleet.kubeconfig("lab-single")
    kubectl(kc, "-n", "quality-control", "delete", "networkpolicy", "default-deny")
    refresh = fleet.p.run("refresh", "--yes", "--non-interactive", "--stack", "dev")
    assert re.search(r"default-deny.*deleted", refresh.stdout), refresh.stdout[-3000:]
    fleet.stack("up", "--yes")
    kubectl(kc, "-n", "quality-control", "get", "networkpolicy", "default-deny")
    fleet.stack("up", "--yes", "--expect-no-changes")


def uninstall_gw1(state: list[dict]) -> str:
    return uninstall_behind_the_back(state, "gw-1")


def uninstall_behind_the_back(state: list[dict], host: str) -> str:
    """Runs ``host``'s K3s uninstall, the script the state (``state``: a stack export's resources)
    holds, on it behind the stack's back (its pods go with it); returns the install's name."""
    install = next(
        r
        for r in state
        if r["urn"].endswith("-install") and f"host '{host}'" in (r.get("outputs") or {}).get("label", "")
    )
    wiped = subprocess.run(
        [str(REPO / "lab/lab"), "exec", host, "bash", "-s"],
        input=install["outputs"]["delete"],
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert wiped.returncode == 0, wiped.stderr
    assert k3s_procs(host) == []
    return install["urn"].rsplit("::", 1)[1]


def test_a_wiped_host_is_drift_and_heal_reinstalls_it_and_recreates_its_objects(fleet: Fleet):
    """gw-1 and agent-1 lose their disks behind the stack's back: K3s and its pods removed by
    its own script, the uploaded artifacts, the claim and the node password gone. A plain `up`
    still sees nothing to do (the state says installed); `scripts/stack dev heal` reads every
    host back, reinstalls gw-1 (its new kubeconfig fetched, lab-gw's objects re-created) and
    agent-1, which rejoins lab-single under its name (lab-single's server still holds agent-1's
    node and its password hash: the node password is the one the stack derives, not a random
    one), in one run; the other sites are untouched."""
    state = fleet.p.json("stack", "export")["deployment"]["resources"]
    gw_install = uninstall_gw1(state)
    agent_install = uninstall_behind_the_back(state, "agent-1")
    for host in ("gw-1", "agent-1"):
        assert in_host(None, host, "rm", "-rf", "/var/lib/edgefleet").returncode == 0
    assert in_host(None, "agent-1", "test", "-e", "/etc/rancher/node/password").returncode == 1
    kc = fleet.kubeconfig("lab-gw")
    assert not ready("10.213.7.31", kc)
    single = fleet.kubeconfig("lab-single")
    assert "agent-1.node-password.k3s" in kubectl(single, "-n", "kube-system", "get", "secret", "-o", "name").stdout
    others = {s: fleet.kubeconfig(s).read_text() for s in ("lab-single", "lab-ha")}

    t0 = time.monotonic()
    healed = fleet.stack("heal", "--yes")
    fleet.figures["heal_wiped_host_s"] = round(time.monotonic() - t0, 1)
    assert f"heal: gone from its host: {gw_install}" in healed.stdout, healed.stdout[-3000:]
    assert f"heal: gone from its host: {agent_install}" in healed.stdout, healed.stdout[-3000:]
    assert "heal: site fleet-lab-gw lost an install" in healed.stdout
    gone = set(re.findall(r"heal: gone from its host: (\S+)", healed.stdout))
    assert all(
        name.startswith((gw_install.rsplit("-", 1)[0], agent_install.rsplit("-", 1)[0])) or "lab-gw" in name
        for name in gone
    ), gone
    node = json.loads(kubectl(single, "get", "node", "agent-1", "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True", node["status"]
    assert not node["spec"].get("unschedulable"), "the rejoined agent takes pods again"
    kc = fleet.kubeconfig("lab-gw")
    assert kubectl(kc, "get", "--raw", "/readyz").stdout.strip() == "ok"
    deadline = time.monotonic() + 120
    while True:
        dep = json.loads(
            kubectl(
                kc, "-n", "predictive-maintenance", "get", "deployment", "predictive-maintenance", "-o", "json"
            ).stdout
        )
        if {c["type"]: c["status"] for c in dep["status"].get("conditions", [])}.get("Available") == "True":
            break
        assert time.monotonic() < deadline, dep["status"]
        time.sleep(3)
    policies = kubectl(kc, "-n", "predictive-maintenance", "get", "networkpolicy", "-o", "name").stdout
    assert "networkpolicy.networking.k8s.io/default-deny" in policies
    assert {s: fleet.kubeconfig(s).read_text() for s in others} == others, "the other sites' clusters are the same"
    assert "BEGIN" not in fleet.p.run("stack", "export").stdout, "read-back keeps every secret encrypted"
    fleet.stack("up", "--yes", "--expect-no-changes")


def _server_pids(host: str) -> list[int]:
    """k3s and its supervisor in one lab host (all hosts share the PID namespace)."""
    pids = subprocess.run(["ip", "netns", "pids", f"ef-{host}"], text=True, capture_output=True).stdout.split()
    out = []
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.startswith("/usr/local/bin/k3s") or "k3s-supervise" in cmd:
            out.append(int(pid))
    return out


def test_ha_keeps_serving_when_a_server_dies_and_up_names_it(fleet: Fleet, lab):
    kc = fleet.kubeconfig("lab-ha")
    for pid in _server_pids("ha-3"):
        os.kill(pid, signal.SIGKILL)
    time.sleep(3)
    assert not ready(lab.address("ha-3"), kc)
    assert ready(lab.address("ha-1"), kc) and ready(lab.address("ha-2"), kc)
    kubectl(kc, "-n", "predictive-maintenance", "get", "deployment", "predictive-maintenance")
    t0 = time.monotonic()
    out = fleet.stack("up", "--yes", "--expect-no-changes")
    assert time.monotonic() - t0 < 120
    assert "site 'lab-ha' host 'ha-3'" in out.stdout and "not answering" in out.stdout, out.stdout[-3000:]
    # The operator restarts it; etcd catches up.
    in_host(None, "ha-3", "/usr/local/lib/edgefleet/k3s-supervise", "start")
    deadline = time.monotonic() + 120
    while not ready(lab.address("ha-3"), kc) and time.monotonic() < deadline:
        time.sleep(2)
    assert ready(lab.address("ha-3"), kc)


def test_rolling_restart_goes_one_server_at_a_time(fleet: Fleet, lab):
    kc = fleet.kubeconfig("lab-ha")
    inv = fleet.inventory()
    next(s for s in inv["sites"] if s["name"] == "lab-ha")["distribution"]["extra_args"].append(
        "--kube-apiserver-arg=event-ttl=2h"
    )
    fleet.write_inventory(inv)
    addresses = [lab.address(h) for h in ("ha-1", "ha-2", "ha-3")]
    before = {h: set(_server_pids(h)) for h in ("ha-1", "ha-2", "ha-3")}
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append(sum(ready(a, kc) for a in addresses))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    fleet.stack("up", "--yes")
    fleet.figures["ha_rolling_restart_s"] = round(time.monotonic() - t0, 1)
    stop.set()
    watcher.join()
    assert samples and min(samples) >= 2, f"never more than one server down at a time: {samples}"
    assert all(ready(a, kc) for a in addresses)
    for h in ("ha-1", "ha-2", "ha-3"):
        # K3s hides its own command line; the service definition carries the flag, and the
        # server process is a new one.
        unit = in_host(None, h, "cat", "/usr/local/lib/edgefleet/k3s-supervise").stdout
        assert "--kube-apiserver-arg=event-ttl=2h" in unit, h
        assert not set(_server_pids(h)) & before[h], f"{h} was restarted"
    fleet.stack("up", "--yes", "--expect-no-changes")


def test_unreachable_host_fails_the_update_naming_it(fleet: Fleet, lab):
    subprocess.run([str(REPO / "lab/lab"), "stop", "gw-1"], check=True, capture_output=True, timeout=60)
    inv = fleet.inventory()
    next(s for s in inv["sites"] if s["name"] == "lab-gw")["distribution"]["extra_args"].append(
        "--kube-apiserver-arg=event-ttl=3h"
    )
    fleet.write_inventory(inv)
    t0 = time.monotonic()
    failed = fleet.stack("up", "--yes", check=False)
    fleet.figures["unreachable_host_failure_s"] = round(time.monotonic() - t0, 1)
    assert failed.returncode != 0
    assert "site 'lab-gw' host 'gw-1'" in failed.stdout and "cannot reach 10.213.7.31:22" in failed.stdout, (
        failed.stdout[-3000:]
    )
    subprocess.run([str(REPO / "lab/lab"), "up"], check=True, capture_output=True, timeout=120)
    fleet.stack("up", "--yes")
    fleet.stack("up", "--yes", "--expect-no-changes")


@pytest.mark.parametrize(("kill_after_s", "server_left_down"), [(8, False), (None, True)])
def test_interrupted_update_recovers_with_the_documented_script(
    fleet: Fleet, kill_after_s: int | None, server_left_down: bool
):
    inv = fleet.inventory()
    single = next(s for s in inv["sites"] if s["name"] == "lab-single")
    single["distribution"]["extra_args"] = [
        a for a in single["distribution"]["extra_args"] if "event-ttl=" not in a
    ] + [f"--kube-apiserver-arg=event-ttl={kill_after_s or 40}m"]
    fleet.write_inventory(inv)
    proc = subprocess.Popen(
        [str(fleet.root / "scripts/stack"), "dev", "up", "--yes"],
        cwd=fleet.root,
        env=fleet.p.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    if kill_after_s is not None:
        time.sleep(kill_after_s)
    else:
        # Killed the moment lab-single's install has stopped its server to restart it.
        kc = fleet.kubeconfig("lab-single")
        deadline = time.monotonic() + 300
        while ready("10.213.7.11", kc):
            assert time.monotonic() < deadline and proc.poll() is None, "single-1's install never restarted its server"
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    # The engine's plugins (language host, policy pack, dynamic provider) run in process groups
    # of their own and outlive a killed CLI, as after a crash: gone with it here, so that they
    # do not linger on this machine for the rest of the run.
    kill_processes_of(fleet.root)
    if server_left_down:
        # A kill between the install's stop and start of the server (as the link dropping at
        # that moment does) leaves the site's API down: the refresh cannot read its objects.
        assert in_host(None, "single-1", "/usr/local/lib/edgefleet/k3s-supervise", "stop").returncode == 0
        assert not ready("10.213.7.11", fleet.kubeconfig("lab-single"))
    rec = subprocess.run(
        [str(fleet.root / "scripts/recover"), "dev"],
        cwd=fleet.root,
        env=fleet.p.env,
        text=True,
        capture_output=True,
        timeout=1200,
    )
    assert rec.returncode == 0, rec.stdout[-4000:] + rec.stderr[-2000:]
    if server_left_down:
        assert "Kubernetes API is down" in rec.stdout, rec.stdout[-3000:]
    fleet.stack("up", "--yes", "--expect-no-changes")
    assert ready("10.213.7.11", fleet.kubeconfig("lab-single"))


def test_tampered_artifact_is_refused_before_install(fleet: Fleet, lab, tmp_path: Path):
    tampered = tmp_path / "k3s"
    shutil.copyfile(K3S, tampered)
    with tampered.open("ab") as f:
        f.write(b"\0")
    inv = fleet.inventory()
    site = json.loads(json.dumps(next(s for s in inv["sites"] if s["name"] == "lab-single")))
    site.update(name="lab-tamper", workloads=[], simulated_nodes=None)
    site["artifacts"] = [{**site["artifacts"][0], "source": str(tampered)}]
    site["hosts"] = [
        {
            "name": "spare-1",
            "address": lab.address("spare-1"),
            "ssh": {"host_key_file": "${EDGEFLEET_CACHE}/lab/hostkeys/spare-1.pub"},
        }
    ]
    site["distribution"]["disable_agent"] = False
    inv["sites"].append(site)
    fleet.write_inventory(inv)
    out = fleet.stack("up", "--yes", check=False)
    assert out.returncode != 0
    got = hashlib.sha256(tampered.read_bytes()).hexdigest()
    assert "refusing artifact k3s" in out.stdout and f"has sha256 {got}, expected" in out.stdout, out.stdout[-3000:]
    assert "[spare-1]" in out.stdout, out.stdout[-3000:]
    assert in_host(None, "spare-1", "test", "-e", "/usr/local/bin/k3s").returncode == 1, "nothing was installed"
    assert in_host(None, "spare-1", "test", "-e", "/etc/rancher/k3s/config.yaml").returncode == 1
    inv["sites"].pop()
    fleet.write_inventory(inv)
    fleet.stack("up", "--yes")


def _node(kc: Path, name: str) -> dict | None:
    proc = kubectl(kc, "get", "node", name, "-o", "json", check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    return json.loads(proc.stdout)


def test_agent_leaves_cleanly_when_removed_and_joins_when_added(fleet: Fleet, lab):
    """Offboarding and onboarding of lab-single's agent (a real K3s agent, kubelet and
    containerd): removed from the inventory, it is drained, its node deleted and K3s
    uninstalled; added back, it joins and runs pods again."""
    machine_root = sorted(os.listdir("/"))  # a kubelet on a lab host shares this machine's disk
    inv = fleet.inventory()
    site = next(s for s in inv["sites"] if s["name"] == "lab-single")
    agent = next(h for h in site["hosts"] if h["name"] == "agent-1")
    assert agent["role"] == "agent", "sites/dev.yaml runs agent-1 as lab-single's agent"
    kc = fleet.kubeconfig("lab-single")
    # A workload pinned to the agent, on the lab's own pause image (nothing is pulled).
    pause = next(a.split("=", 1)[1] for a in site["distribution"]["agent_args"] if a.startswith("--pause-image="))
    kubectl(kc, "create", "namespace", "onboarding")
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "pinned", "namespace": "onboarding"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "pinned"}},
            "template": {
                "metadata": {"labels": {"app": "pinned"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": "agent-1"},
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "app",
                            "image": pause,
                            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                        }
                    ],
                },
            },
        },
    }
    manifest_file = fleet.tmp / "pinned.json"
    manifest_file.write_text(json.dumps(manifest))
    kubectl(kc, "apply", "-f", str(manifest_file))
    kubectl(kc, "-n", "onboarding", "rollout", "status", "deployment/pinned", "--timeout=120s", timeout=150)

    site["hosts"].remove(agent)
    fleet.write_inventory(inv)
    t0 = time.monotonic()
    fleet.stack("up", "--yes")
    fleet.figures["agent_removal_s"] = round(time.monotonic() - t0, 1)
    assert _node(kc, "agent-1") is None, "node deleted"
    # Drained first: the pinned pod left through the eviction API (the server's audit log).
    audit = in_host(None, "single-1", "cat", "/var/lib/rancher/k3s/server/logs/audit.log").stdout
    evictions = [
        e
        for e in map(json.loads, audit.splitlines())
        if e.get("objectRef", {}).get("subresource") == "eviction"
        and e["objectRef"].get("namespace") == "onboarding"
        and e["verb"] == "create"
    ]
    assert evictions, "agent-1 was drained before its node was deleted"
    pods = json.loads(kubectl(kc, "-n", "onboarding", "get", "pods", "-o", "json").stdout)["items"]
    assert pods and all(p["status"]["phase"] == "Pending" for p in pods), "the pinned pod was evicted and waits"
    assert k3s_procs("agent-1") == []
    for path in ("/usr/local/bin/k3s", "/etc/rancher/k3s", "/var/lib/rancher/k3s", "/var/lib/kubelet"):
        assert in_host(None, "agent-1", "test", "-e", path).returncode == 1, path

    site["hosts"].append(agent)
    fleet.write_inventory(inv)
    t0 = time.monotonic()
    out = fleet.stack("up", "--yes")
    fleet.figures["agent_join_s"] = round(time.monotonic() - t0, 1)
    # Lab hosts share this machine's kernel: lab-single's kubelets leave its settings alone.
    assert "edge-protect-kernel-defaults" in out.stdout and "advisory" in out.stdout, out.stdout[-3000:]
    node = _node(kc, "agent-1")
    assert node is not None, "agent-1 registered"
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conditions["Ready"] == "True", node["status"]["conditions"]
    assert node["metadata"]["labels"]["edgefleet.io/site"] == "lab-single"
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {}), "a real kubelet, not a kwok node"
    assert node["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.35"), node["status"]["nodeInfo"]
    assert [p for p in k3s_procs("agent-1") if p.startswith("k3s")], "K3s agent runs on agent-1"
    # The pinned workload is started by the new kubelet.
    kubectl(kc, "-n", "onboarding", "rollout", "status", "deployment/pinned", "--timeout=120s", timeout=150)
    kubectl(kc, "delete", "namespace", "onboarding", "--wait=false")
    fleet.stack("up", "--yes", "--expect-no-changes")
    assert sorted(os.listdir("/")) == machine_root, "nothing outside the lab host was touched"


# --- The same fleet as a stack per site, driven by the fleet command ------------------------------
# From here on the journey continues on site stacks: the whole-fleet stack moves to them by state
# alone, then `python -m fleet` rolls out in waves with a site that does not exist, stops at a
# tampered canary, names drift, survives a SIGKILL and destroys. (A whole-fleet stack's destroy
# is tested by test_workloads_lab.py.)

ROLLOUT = {
    "max_concurrency": 2,
    "max_failures": 1,
    "preflight_timeout": 5,
    "min_success_time": 10,
    "progress_deadline": "20m",
}
SITES = ("lab-single", "lab-ha", "lab-gw")
GHOST_ADDRESS = "10.213.7.99"  # in the lab's own subnet, where no lab host answers


def fleet_cmd(
    fleet: Fleet, *args: str, check: int | None = 0, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`python -m fleet ARGS --stack dev` on this journey's project copy and backend."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fleet",
            *args,
            "--stack",
            "dev",
            "--project-dir",
            str(fleet.root),
            "--log-dir",
            str(fleet.tmp / "fleet-logs"),
        ],
        cwd=fleet.root,
        env={**fleet.p.env, "PYTHONPATH": str(fleet.root), "CI": "true"},
        text=True,
        capture_output=True,
        timeout=timeout,
    )
    if check is not None and proc.returncode != check:
        raise AssertionError(
            f"python -m fleet {' '.join(args)} exited {proc.returncode}, expected {check}\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def fleet_results(fleet: Fleet, *args: str, check: int | None = 0) -> tuple[dict[str, dict], str]:
    """Per-site results of one fleet command (its --result-file) and its output."""
    out = fleet.tmp / "fleet-result.json"
    out.unlink(missing_ok=True)
    proc = fleet_cmd(fleet, *args, "--result-file", str(out), check=check)
    data = json.loads(out.read_text())
    return {r["site"]: r for r in data.get("results", data.get("sites", []))}, proc.stdout


def fleet_status(fleet: Fleet) -> dict:
    return json.loads(fleet_cmd(fleet, "status", "--format", "json").stdout)


def site_export(fleet: Fleet, stack: str, *, secrets: bool = False) -> list[dict]:
    args = ["stack", "export", "--stack", stack] + (["--show-secrets"] if secrets else [])
    return fleet.p.json(*args)["deployment"]["resources"]


def site_kubeconfig(fleet: Fleet, site: str) -> Path:
    path = fleet.tmp / f"kubeconfig-{site}"
    out = fleet.p.run("stack", "output", f"kubeconfig-{site}", "--show-secrets", "--stack", f"dev.{site}").stdout
    path.write_text(out)
    path.chmod(0o600)
    return path


def ssh_logins() -> dict[str, int]:
    """Sessions each lab host's sshd accepted so far (its own log): what ran commands there."""
    logs = CACHE / "lab/hosts"
    return {h: (logs / h / "log/sshd.log").read_text().count("Accepted publickey") for h in LAB_HOSTS}


def history_length(fleet: Fleet, stack: str) -> int:
    return len(fleet.p.json("stack", "history", "--json", "--stack", stack))


def test_fleet_migrate_moves_every_site_to_its_own_stack_by_state_alone(fleet: Fleet):
    inv = fleet.inventory()
    inv["rollout"] = ROLLOUT
    fleet.write_inventory(inv)
    logins = ssh_logins()
    before = {
        r["urn"].rsplit("::", 1)[1]: r.get("outputs")
        for r in site_export(fleet, "dev", secrets=True)
        if r["type"] == "pulumi-python:dynamic:Resource"
    }
    assert before
    t0 = time.monotonic()
    out = fleet_cmd(fleet, "migrate", "--yes").stdout
    fleet.figures["fleet_migrate_s"] = round(time.monotonic() - t0, 1)
    for site in SITES:
        assert f"migrate: {site}: moved" in out, out
    after: dict[str, object] = {}
    for site in SITES:
        after.update(
            {
                r["urn"].rsplit("::", 1)[1]: r.get("outputs")
                for r in site_export(fleet, f"dev.{site}", secrets=True)
                if r["type"] == "pulumi-python:dynamic:Resource"
            }
        )
    assert after == before, "every remote resource moved as it was (secrets compared in plaintext)"
    preview, _ = fleet_results(fleet, "preview")
    assert {s: r["detail"]["changes"] for s, r in preview.items()} == dict.fromkeys(SITES, 0), preview
    whole = fleet.stack("preview", check=False)
    assert whole.returncode != 0 and "siteStacks" in whole.stdout + whole.stderr, whole.stdout[-3000:]
    assert ssh_logins() == logins, "no host was contacted"


def test_fleet_rollout_goes_canary_first_and_a_missing_site_is_offline_fast(fleet: Fleet):
    inv = fleet.inventory()
    ghost = json.loads(json.dumps(next(s for s in inv["sites"] if s["name"] == "lab-ha")))
    ghost.update(name="lab-ghost", topology="single-node", wave=1, workloads=[], simulated_nodes=None)
    ghost["artifacts"] = ghost["artifacts"][:1]
    ghost["hosts"] = [
        {
            "name": "ghost-1",
            "address": GHOST_ADDRESS,
            "ssh": {"host_key_file": "${EDGEFLEET_CACHE}/lab/hostkeys/spare-1.pub"},
        }
    ]
    inv["sites"].append(ghost)
    fleet.write_inventory(inv)
    plan = json.loads(fleet_cmd(fleet, "plan", "--format", "json").stdout)
    assert [[s["site"] for s in w["sites"]] for w in plan["waves"]] == [
        ["lab-single"],
        ["lab-ha", "lab-ghost"],
        ["lab-gw"],
    ]
    logins = ssh_logins()
    t0 = time.monotonic()
    results, out = fleet_results(fleet, "up", check=EXIT["tolerated"])  # one site offline: within budget
    fleet.figures["fleet_up_unchanged_s"] = round(time.monotonic() - t0, 1)
    assert list(results) == ["lab-single", "lab-ha", "lab-ghost", "lab-gw"] or list(results) == [
        "lab-single",
        "lab-ghost",
        "lab-ha",
        "lab-gw",
    ], "waves in order, the canary first"
    assert {s: r["status"] for s, r in results.items()} == {
        "lab-single": "unchanged",
        "lab-ha": "unchanged",
        "lab-ghost": "offline",
        "lab-gw": "unchanged",
    }, out
    ghost_result = results["lab-ghost"]
    fleet.figures["fleet_offline_site_s"] = ghost_result["duration_s"]
    assert ghost_result["duration_s"] <= ROLLOUT["preflight_timeout"] + 2, ghost_result
    assert f"ghost-1 ({GHOST_ADDRESS})" in ghost_result["reason"], ghost_result
    assert ssh_logins() == logins, "the first up of each migrated site stack changed nothing on any host"
    status = fleet_status(fleet)
    sites = {s["site"]: s for s in status["sites"]}
    assert sites["lab-ghost"]["state"] == "offline" and sites["lab-ghost"]["last_seen"] is None
    assert {sites[s]["state"] for s in SITES} == {"available"}, {s: sites[s] for s in SITES}
    assert all(sites[s]["health"] == [] for s in SITES)
    assert status["summary"] == {
        "total": 4,
        "applied": 3,
        "available": 3,
        "progressing": 0,
        "degraded": 0,
        "offline": 1,
        "skipped": 0,
    }
    again, _ = fleet_results(fleet, "up", check=EXIT["tolerated"])
    assert all(again[s]["status"] == "unchanged" and again[s]["detail"].get("already") for s in SITES), again


def test_fleet_a_tampered_canary_stops_the_rollout_before_later_waves(fleet: Fleet, lab, tmp_path: Path):
    tampered = tmp_path / "k3s"
    shutil.copyfile(K3S, tampered)
    with tampered.open("ab") as f:
        f.write(b"\0")
    inv = fleet.inventory()
    canary = json.loads(json.dumps(next(s for s in inv["sites"] if s["name"] == "lab-single")))
    canary.update(name="lab-tamper", workloads=[], wave=0)
    canary["artifacts"] = [{**canary["artifacts"][0], "source": str(tampered)}]
    canary["hosts"] = [
        {
            "name": "spare-1",
            "address": lab.address("spare-1"),
            "ssh": {"host_key_file": "${EDGEFLEET_CACHE}/lab/hostkeys/spare-1.pub"},
        }
    ]
    inv["sites"].append(canary)
    fleet.write_inventory(inv)
    later = {s: history_length(fleet, f"dev.{s}") for s in ("lab-ha", "lab-gw")}
    results, out = fleet_results(fleet, "up", check=EXIT["stopped"])
    assert results["lab-tamper"]["status"] == "failed", results["lab-tamper"]
    got = hashlib.sha256(tampered.read_bytes()).hexdigest()
    log = (fleet.tmp / "fleet-logs/dev.lab-tamper.log").read_text()
    assert "refusing artifact k3s" in log and f"has sha256 {got}, expected" in log, log[-3000:]
    assert "rollout STOPPED" in out and "lab-tamper (wave 0)" in out, out
    assert {results[s]["status"] for s in ("lab-ha", "lab-ghost", "lab-gw")} == {"not-started"}, results
    assert {s: history_length(fleet, f"dev.{s}") for s in later} == later, "no later wave was touched"
    assert in_host(None, "spare-1", "test", "-e", "/usr/local/bin/k3s").returncode == 1, "nothing was installed"
    status = {s["site"]: s for s in fleet_status(fleet)["sites"]}
    assert status["lab-tamper"]["state"] == "degraded" and status["lab-tamper"]["last_result"] == "failed"
    fleet_cmd(fleet, "destroy", "--site", "lab-tamper", "--yes")
    fleet.p.run("stack", "rm", "dev.lab-tamper", "--yes")
    inv["sites"].pop()
    fleet.write_inventory(inv)


def test_fleet_drift_names_the_changed_sites_and_a_killed_rollout_resumes_and_heals_them(fleet: Fleet):
    """lab-ha loses a NetworkPolicy and gw-1 its K3s behind Pulumi's back: drift names exactly
    those two sites; `fleet up --refresh` is SIGKILLed while it reinstalls gw-1; the rerun
    recovers the interrupted stack and converges; drift is then clean."""
    kubectl(site_kubeconfig(fleet, "lab-ha"), "-n", "predictive-maintenance", "delete", "networkpolicy", "default-deny")
    install = uninstall_gw1(site_export(fleet, "dev.lab-gw"))
    status = {s["site"]: s for s in fleet_status(fleet)["sites"]}
    assert status["lab-gw"]["state"] == "degraded" and status["lab-gw"]["health"], status["lab-gw"]
    assert status["lab-gw"]["connectivity"] == "online", "the host answers: degraded, not offline"

    drift = json.loads(fleet_cmd(fleet, "drift", "--format", "json", check=EXIT["drift"]).stdout)
    by_site = {s["site"]: s for s in drift["sites"]}
    assert {s for s, v in by_site.items() if v["status"] == "drifted"} == {"lab-ha", "lab-gw"}, drift
    assert any("default-deny" in r for r in by_site["lab-ha"]["resources"]), by_site["lab-ha"]
    assert install in by_site["lab-gw"]["resources"], by_site["lab-gw"]
    assert "install gone" in by_site["lab-gw"]["reason"]
    assert by_site["lab-single"]["status"] == "in-sync" and by_site["lab-ghost"]["status"] == "absent"

    logs = fleet.tmp / "fleet-logs"
    gw_log = logs / "dev.lab-gw.log"
    start = gw_log.stat().st_size
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet",
            "up",
            "--refresh",
            "--stack",
            "dev",
            "--project-dir",
            str(fleet.root),
            "--log-dir",
            str(logs),
        ],
        cwd=fleet.root,
        env={**fleet.p.env, "PYTHONPATH": str(fleet.root), "CI": "true"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 900
    while "Updating (dev.lab-gw)" not in gw_log.read_text()[start:]:
        assert first.poll() is None and time.monotonic() < deadline, "lab-gw's update never started"
        time.sleep(1)
    time.sleep(8)  # into the reinstall
    first.kill()
    first.wait(timeout=30)
    deadline = time.monotonic() + 30
    # The workers follow their fleet command (PR_SET_PDEATHSIG), with their engines and plugins.
    while left := subprocess.run(["pgrep", "-f", str(fleet.root)], text=True, capture_output=True).stdout.split():
        assert time.monotonic() < deadline, f"processes of the killed rollout are still running: {left}"
        time.sleep(1)
    t0 = time.monotonic()
    rerun, out = fleet_results(fleet, "up", "--refresh", check=EXIT["tolerated"])
    fleet.figures["fleet_resume_heal_s"] = round(time.monotonic() - t0, 1)
    assert rerun["lab-ghost"]["status"] == "offline"
    assert rerun["lab-single"]["status"] == "unchanged", rerun["lab-single"]
    assert rerun["lab-ha"]["status"] in ("unchanged", "succeeded"), rerun["lab-ha"]  # healed before the kill
    assert rerun["lab-gw"]["status"] == "succeeded", (rerun["lab-gw"], out)
    notes = " ".join(rerun["lab-gw"]["detail"].get("notes", []))
    assert "removed the lock a dead run left" in notes, notes
    kubectl(site_kubeconfig(fleet, "lab-ha"), "-n", "predictive-maintenance", "get", "networkpolicy", "default-deny")
    assert ready("10.213.7.31", site_kubeconfig(fleet, "lab-gw"))
    drift = json.loads(fleet_cmd(fleet, "drift", "--format", "json").stdout)
    assert {s["site"]: s["status"] for s in drift["sites"]} == {
        "lab-single": "in-sync",
        "lab-ha": "in-sync",
        "lab-ghost": "absent",
        "lab-gw": "in-sync",
    }, drift
    status = {s["site"]: s for s in fleet_status(fleet)["sites"]}
    assert {status[s]["state"] for s in SITES} == {"available"}, {s: status[s] for s in SITES}
    assert "BEGIN" not in fleet.p.run("stack", "export", "--stack", "dev.lab-gw").stdout, "secrets stay encrypted"


def test_fleet_destroy_leaves_the_hosts_clean(fleet: Fleet):
    inv = fleet.inventory()
    inv["sites"] = [s for s in inv["sites"] if s["name"] != "lab-ghost"]
    fleet.write_inventory(inv)
    t0 = time.monotonic()
    results, _ = fleet_results(fleet, "destroy", "--yes")
    fleet.figures["fleet_destroy_s"] = round(time.monotonic() - t0, 1)
    assert {s: r["status"] for s, r in results.items()} == dict.fromkeys(SITES, "succeeded"), results
    for host in LAB_HOSTS:
        assert k3s_procs(host) == [], host
        for path in ("/usr/local/bin/k3s", "/etc/rancher/k3s", "/var/lib/rancher/k3s", "/usr/local/bin/kwok"):
            assert in_host(None, host, "test", "-e", path).returncode == 1, (host, path)


def test_lab_down_leaves_nothing():
    subprocess.run([str(REPO / "lab/lab"), "down"], check=True, capture_output=True, timeout=180)
    assert not [
        n
        for n in subprocess.run(["ip", "netns", "list"], text=True, capture_output=True).stdout.split()
        if n.startswith("ef-")
    ]
    assert "efbr0" not in subprocess.run(["ip", "link"], text=True, capture_output=True).stdout
    mounts = Path("/proc/mounts").read_text()
    assert str(CACHE / "lab/hosts") not in mounts
    for pattern in (str(CACHE / "lab/hosts"), "edgefleet-runtime"):
        procs = subprocess.run(["pgrep", "-f", pattern], text=True, capture_output=True).stdout
        assert procs.strip() == "", pattern
