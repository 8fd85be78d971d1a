"""Real pods on the lab, through the product: `up` of the dev stack's lab-single (K3s with its
kubelet and containerd on single-1, agent-1 as an agent) runs the inference servers from the
images scripts/build-images made; a declared client namespace gets the model's answer through
the Service, any other namespace is refused by the NetworkPolicies; a drain of a node holding a
replica keeps serving; an upgrade to the next K3s release goes one node at a time and keeps
serving; destroy leaves both hosts clean.

CoreDNS is disabled on the lab (there is no image of it), so clients call the Service by its
ClusterIP. The tests share one stack and run in file order; their figures go to
bench/results/workloads-lab.json only when every test of the module ran and passed.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from images.build import read_index

from .conftest import CACHE, REPO, TOOLCHAIN, VERSIONS, Lab
from .pods import MODEL, assert_answer, assert_refused, client_pod, curl_args, infer_url, request_body
from .test_e2e import K3S, Fleet, fresh_fleet, k3s_procs, kubectl
from .test_remote import in_host

pytestmark = pytest.mark.integration
HOSTS = ("single-1", "agent-1")
CLIENT, STRANGER = "line-control", "vision"  # a declared client of MODEL, and a client of another model only
IMAGES = CACHE / "images/images.json"


def committed_references(root: Path) -> dict[str, set[str]]:
    """The image references the repository pins: the stack's server and monitoring agent images,
    the lab's pause image."""
    config = yaml.safe_load((root / "Pulumi.dev.yaml").read_text())["config"]
    inventory = yaml.safe_load((root / "sites/dev.yaml").read_text())
    flags = [
        flag
        for site in inventory["sites"]
        for key in ("extra_args", "agent_args")
        for flag in site["distribution"].get(key, [])
    ]
    pause = {f.split("=", 1)[1] for f in flags if f.startswith("--pause-image=")}
    return {
        "inference": {config["edgefleet:inferenceImage"]},
        "prometheus": {config["edgefleet:monitoringImage"]},
        "pause": pause,
    }


def test_committed_image_references_are_what_build_images_makes() -> None:
    """The digests pinned in Pulumi.dev.yaml and sites/dev.yaml are the builds of this tree."""
    proc = subprocess.run(
        [str(REPO / "scripts/build-images"), "inference", "pause", "client", "prometheus"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    built = read_index(IMAGES)
    for name, pinned in committed_references(REPO).items():
        assert pinned == {built[name]["reference"]}, (
            f"{name}: the repository pins {sorted(pinned)}, scripts/build-images makes {built[name]['reference']} "
            "(fix: write that reference into Pulumi.dev.yaml / sites/dev.yaml)"
        )


# --- on the lab ---------------------------------------------------------------------------------


def _kc(fleet: Fleet) -> Path:
    return fleet.tmp / "kubeconfig-lab-single"


def _get(fleet: Fleet, *args: str) -> dict:
    return json.loads(kubectl(_kc(fleet), "get", *args, "-o", "json").stdout)


def _pods(fleet: Fleet, namespace: str) -> list[dict]:
    return _get(fleet, "-n", namespace, "pods")["items"]


def _ready(pod: dict) -> bool:
    conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
    return pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True"


def wait_ready(
    fleet: Fleet, namespace: str, count: int, timeout_s: float, nodes: tuple[str, ...] = HOSTS
) -> list[dict]:
    """At least ``count`` Running and Ready pods of ``namespace`` on ``nodes``."""
    deadline = time.monotonic() + timeout_s
    while True:
        pods = [p for p in _pods(fleet, namespace) if _ready(p) and p["spec"].get("nodeName") in nodes]
        if len(pods) >= count:
            return pods
        assert time.monotonic() < deadline, f"{namespace}: {len(pods)} of {count} pods Ready on {nodes}"
        time.sleep(2)


def _seconds(timestamp: str) -> float:
    return datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def host_pss_mib(host: str) -> float:
    """Proportional set size of every process in the lab host's cgroup (K3s, containerd, shims, pods)."""
    pids: set[str] = set()
    for procs in Path("/sys/fs/cgroup").glob(f"*/edgefleet/{host}/**/cgroup.procs"):
        pids.update(procs.read_text().split())
    total_kb = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total_kb += next(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:"))
    return round(total_kb / 1024, 1)


@pytest.fixture(scope="module")
def fleet(lab: Lab, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """The dev stack's lab-single alone, on fresh lab hosts."""
    built = read_index(IMAGES)
    for name, pinned in committed_references(REPO).items():
        if pinned != {built.get(name, {}).get("reference")}:
            pytest.fail(
                f"{IMAGES}: {name} is not the image the repository pins ({sorted(pinned)}) "
                "(fix: scripts/build-images, then pin its references as test_committed_image_references_… says)"
            )
    f = fresh_fleet(tmp_path_factory, "workloads", ("lab-single",))
    failed_before = request.session.testsfailed
    started = time.monotonic()
    yield f
    f.figures["module_s"] = round(time.monotonic() - started, 1)
    print(f"figures: {json.dumps(f.figures, sort_keys=True)}")
    lab_tests = {n for n, v in vars(request.module).items() if n.startswith("test_") and hasattr(v, "pytestmark")}
    ran = {i.originalname for i in request.session.items if i.module is request.module}
    if request.session.testsfailed == failed_before and lab_tests <= ran:
        (REPO / "bench/results").mkdir(parents=True, exist_ok=True)
        (REPO / "bench/results/workloads-lab.json").write_text(json.dumps(f.figures, indent=2, sort_keys=True) + "\n")


@pytest.mark.lab
def test_up_serves_the_models_from_real_pods_on_two_nodes(fleet: Fleet) -> None:
    t0 = time.monotonic()
    fleet.stack("up", "--yes")
    fleet.figures["first_up_s"] = round(time.monotonic() - t0, 1)
    _kc(fleet).write_text(fleet.p.run("stack", "output", "kubeconfig-lab-single", "--show-secrets").stdout)
    _kc(fleet).chmod(0o600)
    nodes = _get(fleet, "nodes")["items"]
    assert sorted(n["metadata"]["name"] for n in nodes) == sorted(HOSTS)
    for node in nodes:
        assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {}), "a real kubelet"
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
        assert {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"] == "True"
    # Under the HPA the Deployment starts at one replica and is raised to its minimum (2).
    pods = wait_ready(fleet, MODEL, 2, 180)
    (image,) = committed_references(fleet.root)["inference"]
    for pod in pods:
        assert all(s["ready"] and "running" in s["state"] for s in pod["status"]["containerStatuses"])
        assert pod["spec"]["containers"][0]["image"] == image
    ready_s = [
        _seconds(next(c for c in p["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"])
        - _seconds(p["metadata"]["creationTimestamp"])
        for p in pods
    ]
    fleet.figures["pod_created_to_ready_s"] = max(ready_s)
    wait_ready(fleet, "quality-control", 1, 120)
    for host in HOSTS:
        fleet.figures[f"pss_mib_{host}"] = host_pss_mib(host)


@pytest.fixture(scope="module")
def traffic(fleet: Fleet) -> dict[str, str]:
    """Client pods in a declared client namespace and in another one, on the node the drain
    spares; returns the drained node, the spared one and the Service's address."""
    nodes = {p["spec"]["nodeName"] for p in _pods(fleet, MODEL) if _ready(p)}
    drained = "agent-1" if "agent-1" in nodes else "single-1"
    spared = next(h for h in HOSTS if h != drained)
    image = read_index(IMAGES)["client"]["reference"]
    manifests = fleet.tmp / "clients.json"
    items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}} for ns in (CLIENT, STRANGER)]
    items += [client_pod(ns, spared, image) for ns in (CLIENT, STRANGER)]
    manifests.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    kubectl(_kc(fleet), "apply", "-f", str(manifests))
    for ns in (CLIENT, STRANGER):
        kubectl(_kc(fleet), "-n", ns, "wait", "pod/client", "--for=condition=Ready", "--timeout=90s", timeout=100)
    ip = _get(fleet, "-n", MODEL, "service", MODEL)["spec"]["clusterIP"]
    return {"drained": drained, "spared": spared, "url": infer_url(ip)}


def infer(fleet: Fleet, namespace: str, url: str) -> subprocess.CompletedProcess[str]:
    return kubectl(_kc(fleet), "-n", namespace, "exec", "client", "--", *curl_args(url), check=False, timeout=30)


@pytest.mark.lab
def test_a_declared_client_gets_the_models_answer_through_the_service(fleet: Fleet, traffic: dict[str, str]) -> None:
    assert_answer(infer(fleet, CLIENT, traffic["url"]))


@pytest.mark.lab
def test_a_namespace_that_is_not_a_client_is_refused(fleet: Fleet, traffic: dict[str, str]) -> None:
    assert_refused(infer(fleet, STRANGER, traffic["url"]))


# Requests until /tmp/stop exists (at most 180 s); prints the counts.
LOOP = """ok=0; failed=0; end=$(( $(date +%s) + 180 ))
while [ ! -e /tmp/stop ] && [ "$(date +%s)" -lt "$end" ]; do
  if curl -sf -o /dev/null -m 2 -H 'Content-Type: application/json' --data-binary "$2" "$1"; then
    ok=$((ok + 1)); else failed=$((failed + 1)); fi
done
echo "ok=$ok failed=$failed"
"""


@pytest.mark.lab
def test_a_drain_keeps_serving_with_two_replicas(fleet: Fleet, traffic: dict[str, str]) -> None:
    kc = _kc(fleet)
    command = ["-n", CLIENT, "exec", "client", "--", "sh", "-c", LOOP, "loop", traffic["url"], request_body()]
    loop = subprocess.Popen(
        ["bash", "-c", 'exec -a kubectl "$0" --kubeconfig="$1" "${@:2}"', str(K3S), str(kc), *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)  # requests flow before the drain starts
        t0 = time.monotonic()
        kubectl(
            kc,
            "drain",
            traffic["drained"],
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=150s",
            timeout=170,
        )
        fleet.figures["drain_s"] = round(time.monotonic() - t0, 1)
        # Requests keep flowing until the evicted replicas run again on the spared node.
        wait_ready(fleet, MODEL, 2, 120, nodes=(traffic["spared"],))
        fleet.figures["drain_to_two_replicas_s"] = round(time.monotonic() - t0, 1)
        time.sleep(2)
    finally:
        kubectl(kc, "-n", CLIENT, "exec", "client", "--", "sh", "-c", ": >/tmp/stop", check=False)
        try:
            out, err = loop.communicate(timeout=30)
        finally:
            loop.kill()
    counts = dict(item.split("=") for item in out.split())
    fleet.figures["drain_requests_ok"], fleet.figures["drain_requests_failed"] = (
        int(counts["ok"]),
        int(counts["failed"]),
    )
    assert int(counts["ok"]) > 20 and int(counts["failed"]) == 0, out + err
    kubectl(kc, "uncordon", traffic["drained"])


# Runs by itself in a pod on every node (a DaemonSet: a drain leaves it in place, and it needs
# no API while the server restarts): requests through the Service until /tmp/stop exists or
# 600 s passed, its counts always current in /tmp/counts (failures' times in /tmp/failed-at); then
# it idles until deleted.
SELF_LOOP = """ok=0; failed=0; start=$(date +%s); end=$(( start + 600 ))
# A new pod's address reaches the NetworkPolicies (kube-router's ipsets) a moment after it
# starts: counting begins with the first answer, and how long that took is kept.
until curl -sf -o /dev/null -m 2 -H 'Content-Type: application/json' --data-binary "$BODY" "$URL"; do
  [ "$(date +%s)" -lt "$end" ] || break
  sleep 0.2
done
echo $(( $(date +%s) - start )) >/tmp/first-answer-s
while [ ! -e /tmp/stop ] && [ "$(date +%s)" -lt "$end" ]; do
  if curl -sf -o /dev/null -m 2 -H 'Content-Type: application/json' --data-binary "$BODY" "$URL"; then
    ok=$((ok + 1)); else failed=$((failed + 1)); date +%s >>/tmp/failed-at; fi
  echo "ok=$ok failed=$failed" >/tmp/counts
  sleep 0.05
done
exec sleep 900
"""


# The two clients send about 30 requests a second: an upgrade that interrupted the Service for a
# second would lose dozens.
MAX_UPGRADE_FAILURES = 3


def _loop_daemonset(image: str, url: str) -> dict:
    pod = client_pod(CLIENT, "", image)["spec"]
    del pod["nodeSelector"]
    container = pod["containers"][0]
    container["args"] = ["-c", SELF_LOOP]
    container["env"] = [{"name": "URL", "value": url}, {"name": "BODY", "value": request_body()}]
    labels = {"app": "upgrade-client"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "upgrade-client", "namespace": CLIENT},
        "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": pod}},
    }


def _watch_nodes(kc: Path, stop: threading.Event, seen: dict[str, list[float]]) -> None:
    """Every second: when (epoch seconds) each node was cordoned or not Ready, and when the API
    did not answer."""
    while not stop.wait(1):
        now = time.time()
        proc = kubectl(kc, "get", "nodes", "-o", "json", "--request-timeout=2s", check=False, timeout=10)
        if proc.returncode != 0:
            seen.setdefault("api", []).append(now)
            continue
        for node in json.loads(proc.stdout)["items"]:
            ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}.get("Ready")
            if node["spec"].get("unschedulable") or ready != "True":
                seen.setdefault(node["metadata"]["name"], []).append(now)


@pytest.mark.lab
def test_an_upgrade_goes_one_node_at_a_time_and_keeps_serving(fleet: Fleet, traffic: dict[str, str]) -> None:
    """The production path: a new K3s release named in the inventory (version and artifact),
    one `up`. The server restarts in place (its pods keep running), the agent is cordoned and
    drained (real evictions under the PodDisruptionBudget), upgraded, Ready, uncordoned;
    clients on both nodes send requests through the Service the whole time."""
    kc = _kc(fleet)
    old, new = VERSIONS["K3S_VERSION"], VERSIONS["K3S_NEXT_VERSION"]
    assert (TOOLCHAIN / f"k3s-{new}/k3s").is_file(), "scripts/bootstrap k3s builds the next release"
    manifest = fleet.tmp / "upgrade-client.json"
    manifest.write_text(json.dumps(_loop_daemonset(read_index(IMAGES)["client"]["reference"], traffic["url"])))
    kubectl(kc, "apply", "-f", str(manifest))
    kubectl(kc, "-n", CLIENT, "rollout", "status", "daemonset/upgrade-client", "--timeout=90s", timeout=100)
    # The earlier tests' bare client pods would stop the drains (no controller to recreate them).
    for ns in (CLIENT, STRANGER):
        kubectl(kc, "-n", ns, "delete", "pod", "client", "--wait=true", timeout=90)
    client_node = {
        p["metadata"]["name"]: p["spec"]["nodeName"] for p in _pods(fleet, CLIENT) if p["metadata"]["name"] != "client"
    }
    clients = sorted(client_node)
    assert sorted(client_node.values()) == sorted(HOSTS), client_node
    first_answer = {}
    for pod in clients:  # every client gets answers before the upgrade starts
        for _ in range(60):
            proc = kubectl(kc, "-n", CLIENT, "exec", pod, "--", "cat", "/tmp/first-answer-s", check=False)
            if proc.returncode == 0 and proc.stdout.strip():
                first_answer[pod] = int(proc.stdout)
                break
            time.sleep(1)
        assert pod in first_answer, f"{pod} got no answer through the Service within 60 s"
    fleet.figures["new_client_first_answer_s"] = max(first_answer.values())

    inv = fleet.inventory()
    site = next(s for s in inv["sites"] if s["name"] == "lab-single")
    site["distribution"]["version"] = new
    for art in site["artifacts"]:
        if art["name"] == "k3s":
            art["source"], art["sha256_from"] = (
                a.replace(f"k3s-{old}", f"k3s-{new}") for a in (art["source"], art["sha256_from"])
            )
    fleet.write_inventory(inv)
    stop, seen = threading.Event(), {}
    watcher = threading.Thread(target=_watch_nodes, args=(kc, stop, seen), daemon=True)
    time.sleep(3)  # requests flow before the upgrade starts
    watcher.start()
    t0, started = time.monotonic(), time.time()
    try:
        upgraded = fleet.stack("up", "--yes")
        fleet.figures["upgrade_s"] = round(time.monotonic() - t0, 1)
        wait_ready(fleet, MODEL, 2, 120)
        time.sleep(3)
    finally:
        stop.set()
        watcher.join(timeout=15)
        counts = {}
        for pod in clients:
            proc = kubectl(
                kc,
                "-n",
                CLIENT,
                "exec",
                pod,
                "--",
                "sh",
                "-c",
                ": >/tmp/stop; sleep 3; cat /tmp/counts; cat /tmp/failed-at 2>/dev/null || true",
                check=False,
            )
            lines = proc.stdout.split() if proc.returncode == 0 else []
            counts[pod] = dict(item.split("=") for item in lines if "=" in item)
            counts[pod]["failed_at_s"] = [round(int(t) - started) for t in lines if t.isdigit()]
        kubectl(kc, "-n", CLIENT, "delete", "daemonset", "upgrade-client", "--wait=false", check=False)
    for name, times in seen.items():
        fleet.figures[f"upgrade_out_of_service_s_{name}"] = round(max(times) - min(times) + 1, 1)
    ok = sum(int(c.get("ok", 0)) for c in counts.values())
    failed = sum(int(c.get("failed", 0)) for c in counts.values())
    fleet.figures["upgrade_requests_ok"], fleet.figures["upgrade_requests_failed"] = ok, failed
    phases = {name: (round(min(t) - started), round(max(t) - started)) for name, t in seen.items()}

    # The Service keeps serving. Measured runs lost 0 or 1 request of about 2,600, always at the
    # second the restarted server came back into service and on a client of either node (a
    # transient of the cluster network as its only server returns, not an eviction): at most
    # MAX_UPGRADE_FAILURES, every one counted in the figures with its time.
    fleet.figures["upgrade_requests_failed_at_s"] = sorted(t for c in counts.values() for t in c.get("failed_at_s", []))
    assert all("ok" in c for c in counts.values()) and ok > 100 and failed <= MAX_UPGRADE_FAILURES, (
        f"requests per client {client_node} (failures at seconds into the upgrade): {counts}; "
        f"out of service (seconds into the upgrade): {phases}\n{upgraded.stdout[-3000:]}"
    )
    assert "agent-1" in seen, "the agent was cordoned for its upgrade"
    nodes = _get(fleet, "nodes")["items"]
    assert {n["metadata"]["name"]: n["status"]["nodeInfo"]["kubeletVersion"] for n in nodes} == dict.fromkeys(
        HOSTS, new
    )
    assert not any(n["spec"].get("unschedulable") for n in nodes), "every node uncordoned"
    fleet.stack("up", "--yes", "--expect-no-changes")


@pytest.mark.lab
def test_destroy_leaves_both_hosts_clean(fleet: Fleet) -> None:
    t0 = time.monotonic()
    fleet.stack("destroy", "--yes")
    fleet.figures["destroy_s"] = round(time.monotonic() - t0, 1)
    for host in HOSTS:
        assert k3s_procs(host) == [], host
        for path in ("/usr/local/bin/k3s", "/etc/rancher/k3s", "/var/lib/rancher/k3s", "/var/lib/kubelet", "/run/k3s"):
            assert in_host(None, host, "test", "-e", path).returncode == 1, (host, path)
        left = in_host(None, host, "bash", "-c", "ip -o link show; iptables-save; ipset list -n").stdout
        for trace in ("cni0", "flannel", "KUBE-", "CNI-"):
            assert trace not in left, (host, trace, left)
        procs = {
            Path(f"/proc/{pid}/comm").read_text().strip()
            for procs in Path("/sys/fs/cgroup").glob(f"*/edgefleet/{host}/**/cgroup.procs")
            for pid in procs.read_text().split()
            if Path(f"/proc/{pid}").exists()
        }
        assert procs <= {"sshd", "sshd-session"}, (host, procs)
