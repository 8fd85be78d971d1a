"""The cost of the cluster path: inference through a Service (pod -> Service -> pod, kube-proxy,
flannel, the NetworkPolicies enforced) against the same server on loopback, in one run.

Run after ``make up`` (the dev stack on the lab, lab-single serving predictive-maintenance):

    .venv/bin/python bench/cluster_path_bench.py [--rounds 3] [--requests 2000] [--seconds 10]

One load generator (Python's http.client, one keep-alive connection per client) measures both
paths: p50/p99 of ``--requests`` sequential requests (c=1), then requests per second with 8
clients for ``--seconds`` (c=8). On the cluster path it runs in a pod of ``line-control`` (a
declared client namespace of the model) from the inference image, so the client is the same
Python as the server; on loopback it runs here against ``python -m inference`` serving the same
model file. Rounds alternate the two paths; each figure is the median of its rounds and each
ratio (cluster / loopback) is taken within a round. The server pods keep their resource limits
(part of what the cluster path costs); the load generator is the same on both sides, so its own
cost (a few tenths of a millisecond per request) cancels out of the ratios, not of the figures.

Writes bench/results/cluster-path.json and bench/results/cluster-path.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.contract import cache_dir
from fleet.toolchain import versions
from images.build import read_index

MODEL, VERSION, CLIENT_NS, SITE = "predictive-maintenance", "1", "line-control", "lab-single"
BODY = json.dumps(
    {
        "inputs": [
            {
                "name": "features",
                "shape": [1, 8],
                "datatype": "FP32",
                "data": [7.9, 8.4, 6.1, 5.2, 3.1, 78.0, 14.2, 1450.0],
            }
        ]
    }
)
PATH = f"/v2/models/{MODEL}/infer"
OUT = REPO / "bench/results"

# The load generator: argv = host port path body requests seconds; prints one JSON line.
LOADGEN = r"""
import http.client, json, sys, threading, time
host, port, path, body = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4].encode()
n, seconds = int(sys.argv[5]), float(sys.argv[6])
headers = {"Content-Type": "application/json"}
def connect():
    return http.client.HTTPConnection(host, port, timeout=5)
def once(c):
    c.request("POST", path, body, headers)
    r = c.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
# A new pod's address reaches the NetworkPolicies' ipsets about a second after it starts:
# until then its connections are refused (waited for, at most 20 s; not measured).
deadline = time.perf_counter() + 20
while True:
    c = connect()
    try:
        once(c)
        break
    except ConnectionRefusedError:
        if time.perf_counter() > deadline:
            raise
        time.sleep(0.2)
for _ in range(100):
    once(c)
lat = []
for _ in range(n):
    t = time.perf_counter()
    once(c)
    lat.append((time.perf_counter() - t) * 1000)
lat.sort()
counts, errors = [0] * 8, [0]
stop = time.perf_counter() + seconds
def client(i):
    c = connect()
    while time.perf_counter() < stop:
        try:
            once(c)
            counts[i] += 1
        except Exception:
            errors[0] += 1
            c = connect()
threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"c1_p50_ms": lat[len(lat) // 2], "c1_p99_ms": lat[max(0, int(len(lat) * 0.99) - 1)],
                  "c8_rps": sum(counts) / seconds, "c8_errors": errors[0]}))
"""


def k3s() -> Path:
    return cache_dir() / "toolchain" / f"k3s-{versions()['K3S_VERSION']}" / "k3s"


def kubectl(kc: Path, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-c", f'exec -a kubectl {k3s()} --kubeconfig="$0" "$@"', str(kc), *args],
        text=True,
        capture_output=True,
        timeout=timeout,
        input=stdin,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def site_kubeconfig(work: Path) -> Path:
    proc = subprocess.run(
        [str(REPO / "scripts/stack"), "dev", "stack", "output", f"kubeconfig-{SITE}", "--show-secrets"],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0 or "apiVersion" not in proc.stdout:
        raise SystemExit(f"the dev stack has no kubeconfig for {SITE} (fix: make up first)\n{proc.stderr.strip()}")
    path = work / "kubeconfig"
    path.write_text(proc.stdout)
    path.chmod(0o600)
    return path


def client_pod(image: str, ip: str, requests: int, seconds: float) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cluster-path-bench", "namespace": CLIENT_NS},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "load",
                    "image": image,
                    "command": ["python", "-c", LOADGEN, ip, "8080", PATH, BODY, str(requests), str(seconds)],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                }
            ],
        },
    }


def through_service(kc: Path, image: str, ip: str, requests: int, seconds: float) -> dict:
    kubectl(kc, "-n", CLIENT_NS, "delete", "pod", "cluster-path-bench", "--ignore-not-found", "--wait=true")
    kubectl(kc, "apply", "-f", "-", stdin=json.dumps(client_pod(image, ip, requests, seconds)))
    deadline = time.monotonic() + 120 + seconds + requests / 50
    while True:
        phase = kubectl(kc, "-n", CLIENT_NS, "get", "pod", "cluster-path-bench", "-o", "jsonpath={.status.phase}")
        if phase in ("Succeeded", "Failed"):
            break
        if time.monotonic() > deadline:
            raise SystemExit("the load generator pod did not finish in time")
        time.sleep(2)
    logs = kubectl(kc, "-n", CLIENT_NS, "logs", "cluster-path-bench")
    kubectl(kc, "-n", CLIENT_NS, "delete", "pod", "cluster-path-bench", "--wait=false")
    if phase != "Succeeded":
        raise SystemExit(f"the load generator failed in the cluster:\n{logs[-2000:]}")
    return json.loads(logs.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def on_loopback(work: Path, requests: int, seconds: float, port: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", LOADGEN, "127.0.0.1", str(port), PATH, BODY, str(requests), str(seconds)],
        text=True,
        capture_output=True,
        timeout=120 + seconds + requests / 50,
    )
    if proc.returncode != 0:
        raise SystemExit(f"the load generator failed on loopback:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def local_server(work: Path) -> tuple[subprocess.Popen, int]:
    repo = work / "models" / MODEL / VERSION
    repo.mkdir(parents=True)
    shutil.copy(REPO / "models" / MODEL / VERSION / "model.onnx", repo / "model.onnx")
    port = free_port()
    cmd = [sys.executable, "-m", "inference", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--model-repository", str(work / "models"), "--cache-dir", str(work / "cache")]
    cmd += ["--metrics-dir", str(work / "metrics")]
    server = subprocess.Popen(
        cmd, cwd=REPO, stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return server, port
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"the local inference server did not start (log: {work / 'server.log'})")
        time.sleep(0.5)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    for ax, key, title in zip(
        axes, ("c1_p50_ms", "c1_p99_ms", "c8_rps"), ("p50 at c=1 (ms)", "p99 at c=1 (ms)", "req/s at c=8"), strict=True
    ):
        values = [report["loopback"][key], report["service"][key]]
        ax.bar(["loopback", "through the Service"], values, color=["#4c72b0", "#dd8452"])
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.2f}" if v < 100 else f"{v:.0f}", ha="center", va="bottom")
    fig.suptitle(f"{MODEL} v{VERSION}: pod -> Service -> pod vs loopback (medians of {report['rounds']} rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    image = read_index(cache_dir() / "images/images.json")["inference"]["reference"]
    with tempfile.TemporaryDirectory(prefix="cluster-path-") as tmp:
        work = Path(tmp)
        kc = site_kubeconfig(work)
        ip = kubectl(kc, "-n", MODEL, "get", "service", MODEL, "-o", "jsonpath={.spec.clusterIP}").strip()
        created_ns = not kubectl(kc, "get", "namespace", CLIENT_NS, "--ignore-not-found", "-o", "name").strip()
        if created_ns:
            kubectl(kc, "create", "namespace", CLIENT_NS)
        server, port = local_server(work)
        rounds: list[dict] = []
        try:
            for i in range(args.rounds):
                loop = on_loopback(work, args.requests, args.seconds, port)
                svc = through_service(kc, image, ip, args.requests, args.seconds)
                rounds.append({"loopback": loop, "service": svc})
                print(f"round {i + 1}: loopback {loop} | service {svc}", flush=True)
        finally:
            server.terminate()
            server.wait(30)
            if created_ns:
                kubectl(kc, "delete", "namespace", CLIENT_NS, "--wait=false", check=False)
    keys = ("c1_p50_ms", "c1_p99_ms", "c8_rps")
    report: dict = {
        "model": f"{MODEL}/{VERSION}",
        "site": SITE,
        "rounds": args.rounds,
        "requests_c1": args.requests,
        "seconds_c8": args.seconds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "loopback": {k: round(statistics.median(r["loopback"][k] for r in rounds), 3) for k in keys},
        "service": {k: round(statistics.median(r["service"][k] for r in rounds), 3) for k in keys},
        "ratio_service_to_loopback": {
            k: round(statistics.median(r["service"][k] / r["loopback"][k] for r in rounds), 3) for k in keys
        },
        "errors_c8": sum(r["service"]["c8_errors"] + r["loopback"]["c8_errors"] for r in rounds),
        "per_round": rounds,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cluster-path.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.out / "cluster-path.png")
    print(json.dumps({k: report[k] for k in ("loopback", "service", "ratio_service_to_loopback")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
