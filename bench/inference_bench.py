"""Inference server latency and throughput against its floors and a peer, over loopback.

One ONNX model (the 64 -> 128 -> 64 -> 1 MLP, FP32, batch 1) and one JSON request body for all:

- floor 1: ``session.run`` in process (the same session options as the server);
- floor 2: a bare handler, one process, uvloop + httptools, no routing, validation, metrics or
  logging (parse the v2 body, run the session, write the v2 response);
- edge-infer: this server, one worker, validation, metrics and logging (1 % of requests
  sampled to the log) on, with uvloop and with the plain asyncio loop;
- kserve: the KServe Python model server (pinned below, in its own virtualenv under
  ``$EDGEFLEET_CACHE/bench-venv-kserve``) serving the same model through a small kserve.Model
  on onnxruntime.

Each HTTP server is pinned to one CPU and loaded by ``wrk`` (one thread, pinned to the other
CPU, a Lua POST script) at concurrency 1, 8 and 32, ``--duration`` seconds per point split into
``--rounds`` interleaved rounds: all servers run at once and each round loads each of them in
turn, so that the speed swings of a shared machine hit all of them alike. A point is the median
of its rounds (p50/p99 from wrk's latency histogram); the throughput ratio to floor 2 is the
median of the ratios within each round (adjacent runs). The server's CPU time per request
(from /proc, so independent of how busy the machine was) and its RSS are recorded too.

    .venv/bin/python bench/inference_bench.py [--duration 10] [--skip-kserve]

Writes bench/results/inference.json and bench/results/inference.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from inference.runtime import create_session  # noqa: E402

RESULTS = REPO / "bench" / "results"
CACHE = Path(os.environ.get("EDGEFLEET_CACHE", Path.home() / ".cache" / "edgefleet"))
KSERVE_VENV = CACHE / "bench-venv-kserve"
KSERVE_PINS = ["kserve==0.21.0", "onnxruntime==1.32.0", "numpy==2.4.6"]
CONCURRENCY = (1, 8, 32)
MODEL, VERSION = "mlp", "1"
PATH = f"/v2/models/{MODEL}/infer"
TARGETS = {"throughput_vs_floor2_c8": 0.5, "p50_us_c1": 150.0, "rss_mb_per_worker": 80.0}
SERVER_CPU, CLIENT_CPU = 1, 0

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY")):read("*a")
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests":%d,"duration_us":%d,"socket_errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""

KSERVE_MODEL = '''
import sys

import onnxruntime as ort
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.load()

    def load(self):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        features = payload.inputs[0].as_numpy()
        (score,) = self.session.run(None, {self.input_name: features})
        output = InferOutput(name="score", shape=list(score.shape), datatype="FP32")
        output.set_data_from_numpy(score, binary_data=False)
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=[output])


if __name__ == "__main__":
    model_path, port = sys.argv[1], int(sys.argv[2])
    ModelServer(http_port=port, enable_grpc=False, workers=1).start([OnnxModel("mlp", model_path)])
'''


# --- floor 2: the bare handler (run in its own process with --bare-server) ----------------------

def bare_server(model_path: str, port: int) -> None:
    import httptools
    import uvloop

    session = create_session(Path(model_path).read_bytes())

    class Bare(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.body: list[bytes] = []

        def connection_made(self, transport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_message_begin(self) -> None:
            self.body = []

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            tensor = orjson.loads(b"".join(self.body))["inputs"][0]
            features = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
            (score,) = session.run(None, {tensor["name"]: features})
            body = orjson.dumps({"model_name": MODEL, "model_version": VERSION, "outputs": [
                {"name": "score", "datatype": "FP32", "shape": list(score.shape), "data": score.ravel()}]},
                option=orjson.OPT_SERIALIZE_NUMPY)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(body), body))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Bare, "127.0.0.1", port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    uvloop.run(main())


# --- measurement ---------------------------------------------------------------------------

def floor1(model: bytes, body: bytes, seconds: float) -> dict:
    session = create_session(model)
    tensor = orjson.loads(body)["inputs"][0]
    feed = {tensor["name"]: np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])}
    for _ in range(1000):
        session.run(None, feed)
    latencies = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        latencies.append(time.perf_counter_ns() - t0)
    elapsed = time.perf_counter() - start
    lat = np.array(latencies) / 1000
    return {"name": "floor1-session-run", "requests": len(latencies), "rps": round(len(latencies) / elapsed, 1),
            "p50_us": round(float(np.percentile(lat, 50)), 1), "p99_us": round(float(np.percentile(lat, 99)), 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int):
    cpus = sorted(os.sched_getaffinity(0))
    target = {cpus[cpu % len(cpus)]}
    return lambda: os.sched_setaffinity(0, target)


def wait_ready(port: int, proc: subprocess.Popen, body: bytes, timeout: float = 120.0) -> None:
    """Until the server answers the benchmark's own request with 200 (the bare handler has no
    other route)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}{PATH}", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def serving_rss_mb(pid: int) -> float:
    import psutil
    proc = psutil.Process(pid)
    return round(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20, 1)


def run_wrk(port: int, concurrency: int, seconds: int, script: Path, body_path: Path) -> dict:
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "5s", "-s", str(script),
           f"http://127.0.0.1:{port}{PATH}"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BENCH_BODY": str(body_path)},
                         preexec_fn=pinned(CLIENT_CPU), timeout=seconds + 60, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


class Server:
    """One HTTP server under test, started pinned to the server CPU."""

    def __init__(self, name: str, cmd: list[str], port: int, log: Path) -> None:
        self.name, self.cmd, self.port, self.log = name, cmd, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        print(f"  {self.name}: starting", flush=True)
        with self.log.open("wb") as log_file:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                         preexec_fn=pinned(SERVER_CPU))

    def cpu_seconds(self) -> float:
        import psutil
        proc = psutil.Process(self.proc.pid)
        return sum(sum(p.cpu_times()[:2]) for p in [proc, *proc.children(recursive=True)])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(servers: list[Server], seconds: int, rounds: int, script: Path, body_path: Path) -> list[dict]:
    """Interleave the servers: every round loads each server at each concurrency in turn, so a
    slow spell of this shared machine hits them all alike; a point is the median of its rounds."""
    for server in servers:
        server.start()
    try:
        for server in servers:
            wait_ready(server.port, server.proc, body_path.read_bytes())
            run_wrk(server.port, 8, 2, script, body_path)  # warm-up
        samples: dict[tuple[str, int], list[dict]] = {}
        per_round = max(1, round(seconds / rounds))
        for r in range(rounds):
            for concurrency in CONCURRENCY:
                for server in servers:
                    cpu = server.cpu_seconds()
                    result = run_wrk(server.port, concurrency, per_round, script, body_path)
                    result["cpu_us_per_request"] = round((server.cpu_seconds() - cpu) / max(1, result["requests"]) * 1e6, 1)
                    result["rss_mb"] = serving_rss_mb(server.proc.pid)
                    samples.setdefault((server.name, concurrency), []).append(result)
                    print(f"  round {r + 1} {server.name} c={concurrency}: {result['rps']:.0f} req/s, "
                          f"p50 {result['p50_us']} us, p99 {result['p99_us']} us, "
                          f"{result['cpu_us_per_request']} CPU-us/req, RSS {result['rss_mb']} MB, "
                          f"non-2xx {result['non2xx']}", flush=True)
    finally:
        for server in servers:
            server.stop()
    points = []
    for (name, concurrency), runs in samples.items():
        point = {"name": name, "concurrency": concurrency, "rounds": len(runs)}
        for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request"):
            point[key] = float(np.median([run[key] for run in runs]))
        point["rps_per_round"] = [run["rps"] for run in runs]
        point["requests"] = sum(run["requests"] for run in runs)
        point["non2xx"] = sum(run["non2xx"] for run in runs)
        point["socket_errors"] = sum(run["socket_errors"] for run in runs)
        point["rss_mb"] = max(run["rss_mb"] for run in runs)
        points.append(point)
    return points


def kserve_python() -> Path:
    """The peer's interpreter, creating its virtualenv (pinned packages) on first use."""
    python = KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / "pins.txt"
    if not (python.exists() and marker.exists() and marker.read_text().split() == KSERVE_PINS):
        print(f"  creating {KSERVE_VENV} with {' '.join(KSERVE_PINS)}", flush=True)
        for cmd in ([os.environ.get("EDGEFLEET_PYTHON", "python3.11"), "-m", "venv", "--clear", str(KSERVE_VENV)],
                    [str(python), "-m", "pip", "install", "--quiet", *KSERVE_PINS]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} exited with {done.returncode}: "
                                   f"{(done.stderr or done.stdout).strip()[-2000:]}")
        marker.write_text("\n".join(KSERVE_PINS) + "\n")
    return python


# --- report --------------------------------------------------------------------------------

def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p["name"] for p in report["points"]))
    fig, ((ax_rps, ax_lat), (ax_cpu, ax_rss)) = plt.subplots(2, 2, figsize=(14, 10))
    for name in names:
        pts = [p for p in report["points"] if p["name"] == name]
        c = [p["concurrency"] for p in pts]
        ax_rps.plot(c, [p["rps"] for p in pts], marker="o", label=name)
        line, = ax_lat.plot(c, [p["p50_us"] for p in pts], marker="o", label=f"{name} p50")
        ax_lat.plot(c, [p["p99_us"] for p in pts], marker="x", linestyle="--", color=line.get_color(),
                    label=f"{name} p99")
        ax_cpu.plot(c, [p["cpu_us_per_request"] for p in pts], marker="o", label=name)
    f1 = report["floor1"]
    ax_rps.axhline(f1["rps"], color="grey", linestyle=":", label="floor 1 (session.run in process)")
    ax_cpu.axhline(f1["p50_us"], color="grey", linestyle=":", label="floor 1 (session.run p50)")
    ax_lat.axhline(TARGETS["p50_us_c1"], color="red", linestyle=":", label="target p50 at c=1")
    ax_rps.set(title="Throughput, one worker (median of rounds)", ylabel="requests/s", yscale="log")
    ax_lat.set(title="Latency (median of rounds)", ylabel="microseconds", yscale="log")
    ax_cpu.set(title="Server CPU time per request", ylabel="CPU microseconds", yscale="log")
    for ax in (ax_rps, ax_lat, ax_cpu):
        ax.set_xscale("log")
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent connections (wrk)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.legend(fontsize=8)
    ax_cpu.legend(fontsize=8)
    ax_lat.legend(fontsize=6, ncol=2)
    rss = {name: max(p["rss_mb"] for p in report["points"] if p["name"] == name) for name in names}
    ax_rss.bar(range(len(rss)), list(rss.values()), color="tab:blue")
    ax_rss.set_xticks(range(len(rss)), list(rss), rotation=15, fontsize=8)
    ax_rss.axhline(TARGETS["rss_mb_per_worker"], color="red", linestyle=":", label="target per worker")
    ax_rss.set(title="RSS of the serving process", ylabel="MB")
    ax_rss.legend(fontsize=8)
    fig.suptitle(f"MLP 64-128-64-1 FP32, batch 1, loopback, {report['duration_s']} s per point "
                 f"in {report['rounds']} interleaved rounds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def evaluate(report: dict) -> dict:
    def point(name: str, c: int) -> dict:
        return next(p for p in report["points"] if p["name"] == name and p["concurrency"] == c)

    ours, floor2 = point("edge-infer", 8), point("floor2-bare", 8)
    ratio = round(float(np.median([a / b for a, b in zip(ours["rps_per_round"], floor2["rps_per_round"])])), 3)
    p50 = point("edge-infer", 1)["p50_us"]
    rss = max(p["rss_mb"] for p in report["points"] if p["name"] == "edge-infer")
    return {
        "throughput_vs_floor2_c8": {"value": ratio, "target": f">= {TARGETS['throughput_vs_floor2_c8']}",
                                    "met": ratio >= TARGETS["throughput_vs_floor2_c8"],
                                    "per_round": [round(a / b, 3) for a, b in zip(ours["rps_per_round"],
                                                                                  floor2["rps_per_round"])],
                                    "cpu_time_ratio": round(floor2["cpu_us_per_request"] / ours["cpu_us_per_request"], 3)},
        "p50_us_c1": {"value": p50, "target": f"<= {TARGETS['p50_us_c1']}", "met": p50 <= TARGETS["p50_us_c1"]},
        "rss_mb_per_worker": {"value": rss, "target": f"<= {TARGETS['rss_mb_per_worker']}",
                              "met": rss <= TARGETS["rss_mb_per_worker"]},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load point (over all rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per point (median reported)")
    parser.add_argument("--skip-kserve", action="store_true", help="do not measure the KServe peer")
    parser.add_argument("--bare-server", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]))
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 CPUs, server and wrk share one", file=sys.stderr)

    # Imported here, not at the top: the bare server process must not carry onnx in its RSS.
    from tests.unit.inference_fixtures import mlp_model

    model = mlp_model(0)
    rng = np.random.default_rng(7)
    body = orjson.dumps({"id": "bench", "inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32",
                                                     "data": rng.standard_normal(64).astype(np.float32).tolist()}]})
    report: dict = {
        "model": "MLP 64-128-64-1 FP32 (tests/unit/inference_fixtures.py mlp_model(0))", "batch": 1,
        "request_bytes": len(body), "duration_s": args.duration, "rounds": args.rounds,
        "concurrency": list(CONCURRENCY),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "loadavg_start": [round(x, 2) for x in os.getloadavg()]},
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("[")[0].strip(),
        "points": [],
    }
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        tmp_path = Path(tmp)
        model_dir = tmp_path / "models" / MODEL / VERSION
        model_dir.mkdir(parents=True)
        (model_dir / "model.onnx").write_bytes(model)
        body_path, script = tmp_path / "body.json", tmp_path / "post.lua"
        body_path.write_bytes(body)
        script.write_text(WRK_SCRIPT)

        print("floor 1: session.run in process", flush=True)
        report["floor1"] = floor1(model, body, min(args.duration, 5.0))
        print(f"  {report['floor1']}", flush=True)

        py, models = sys.executable, str(tmp_path / "models")
        ours = [py, "-m", "inference", "--model-repository", models, "--host", "127.0.0.1", "--log-sample", "0.01"]
        commands = {
            "floor2-bare": lambda port: [py, __file__, "--bare-server", str(model_dir / "model.onnx"), str(port)],
            "edge-infer": lambda port: [*ours, "--port", str(port)],
            "edge-infer-asyncio-loop": lambda port: [*ours, "--port", str(port), "--loop", "asyncio"],
        }
        if not args.skip_kserve:
            try:
                kpy = kserve_python()
                (tmp_path / "kserve_model.py").write_text(KSERVE_MODEL)
                commands[f"kserve-{KSERVE_PINS[0].split('==')[1]}"] = lambda port: [
                    str(kpy), str(tmp_path / "kserve_model.py"), str(model_dir / "model.onnx"), str(port)]
            except (OSError, RuntimeError) as exc:
                report["kserve_error"] = str(exc)
                print(f"  kserve unavailable: {report['kserve_error']}", flush=True)
        servers = []
        for name, command in commands.items():
            port = free_port()
            servers.append(Server(name, command(port), port, tmp_path / f"{name}.log"))

        print("HTTP servers (wrk), interleaved", flush=True)
        report["points"] = measure(servers, args.duration, args.rounds, script, body_path)
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["targets"] = evaluate(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "inference.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, RESULTS / "inference.png")
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {RESULTS / 'inference.json'} and {RESULTS / 'inference.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
