"""Inference server latency and throughput against its floors and a peer, over loopback.

One ONNX model (the 64 -> 128 -> 64 -> 1 MLP, FP32, batch 1) and one JSON request body for all:

- floor 1: ``session.run`` in process (the same session options as the server);
- floor 2: a bare handler, one process, uvloop + httptools + orjson + onnxruntime, no routing,
  validation, metrics or logging (parse the v2 body, run the session, write the v2 response);
- edge-infer: this server, one worker, validation, metrics and logs on (every successful request
  sampled for the access log, which writes at most ``--log-rate`` lines per second: the default,
  100), with uvloop and with the plain asyncio loop; ``edge-infer-log-every-request`` writes a
  line for every request (``--log-rate 0``);
- edge-infer-2-workers: ``--workers 2``, not pinned (it shares both CPUs with wrk);
- kserve: the KServe Python model server (pinned below, in its own virtualenv under
  ``$EDGEFLEET_CACHE/bench-venv-kserve``) serving the same model through a small kserve.Model
  on onnxruntime;
- ``--variant NAME=DIR``: this server from another source tree (e.g. an older commit's
  ``inference/`` exported with ``git archive``), to measure a change side by side.

Each one-worker server is pinned to one CPU and loaded by ``wrk`` (one thread, pinned to the
other CPU, a Lua POST script) at each ``--concurrency``, ``--duration`` seconds per point split
into ``--rounds`` interleaved rounds: all servers run at once and each round loads each of them
in turn, so that the speed swings of a shared machine hit all of them alike. A point is the
median of its rounds (p50/p99 from wrk's latency histogram); ratios to floor 2 are taken within
each round (adjacent runs) and reported as min / median / max over the rounds. The server's CPU
time per request (from /proc) and its RSS are recorded too.

The benchmark refuses to start a server on a port something already listens on (with
SO_REUSEPORT a leftover server would silently take part of the load), counts the processes
listening on each server's port once it is up and at the end (all must belong to the server;
their number is recorded as ``workers``), and checks every server's answer against
``session.run`` before loading it. Results are written only when every round completed.

    .venv/bin/python bench/inference_bench.py [--duration 10] [--rounds 5] [--skip-kserve]

Writes bench/results/inference.json and bench/results/inference.png (or into ``--out``).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from components.contract import cache_dir
from inference.runtime import create_session

RESULTS = REPO / "bench" / "results"
CACHE = cache_dir()
KSERVE_VENV = CACHE / "bench-venv-kserve"
KSERVE_PINS = ["kserve==0.21.0", "onnxruntime==1.32.0", "numpy==2.4.6"]
CONCURRENCY = (1, 8, 32)
MODEL, VERSION = "mlp", "1"
PATH = f"/v2/models/{MODEL}/infer"
OURS, FLOOR2 = "edge-infer", "floor2-bare"
# Throughput at c=8 and p50 at c=1 are ratios to floor 2 in the same round.
TARGETS = {
    "throughput_vs_floor2_c8": 0.6,
    "throughput_aim_c8": 0.85,
    "p50_vs_floor2_c1": 1.25,
    "rss_mb_per_worker": 80.0,
    "errors": 0,
}
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

KSERVE_MODEL = """
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
"""


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
            body = orjson.dumps(
                {
                    "model_name": MODEL,
                    "model_version": VERSION,
                    "outputs": [
                        {"name": "score", "datatype": "FP32", "shape": list(score.shape), "data": score.ravel()}
                    ],
                },
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )

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
    return {
        "name": "floor1-session-run",
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_us": round(float(np.percentile(lat, 50)), 1),
        "p99_us": round(float(np.percentile(lat, 99)), 1),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cpu: int):
    cpus = sorted(os.sched_getaffinity(0))
    target = {cpus[cpu % len(cpus)]}
    return lambda: os.sched_setaffinity(0, target)


class BenchError(Exception):
    """The benchmark cannot run, or a run cannot be trusted; nothing is written."""


def listeners(port: int) -> dict[int | None, str]:
    """Processes with a TCP socket listening on ``port``: pid (None if not visible) -> command."""
    import psutil

    found: dict[int | None, str] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            try:
                found[conn.pid] = " ".join(psutil.Process(conn.pid).cmdline())[:200] if conn.pid else "?"
            except psutil.Error:
                found[conn.pid] = "?"
    return found


def ensure_port_free(port: int) -> None:
    """Refuse a port that anything listens on: with SO_REUSEPORT a leftover server would share
    the load without an error."""
    taken = listeners(port)
    if not taken:
        with socket.socket() as probe:  # without SO_REUSEPORT: fails if any socket holds the port
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                taken = {None: str(exc)}
    if taken:
        who = "; ".join(f"pid {pid}: {cmd}" for pid, cmd in taken.items())
        raise BenchError(
            f"port {port} is already in use ({who}); a server left there would share "
            f"the load (fix: stop it, or pass another --port)"
        )


def wait_ready(port: int, proc: subprocess.Popen, body: bytes, expected: float, timeout: float = 120.0) -> None:
    """Until the server answers the benchmark's own request with 200, then check the score it
    computed (the bare handler has no other route)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server on port {port} exited with {proc.returncode} before it was ready")
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}{PATH}", data=body, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    answer = orjson.loads(r.read())
                    break
        except OSError:
            pass
        time.sleep(0.1)
    else:
        raise BenchError(f"server on port {port} not ready after {timeout}s")
    [output] = answer["outputs"]
    if output["shape"] != [1, 1] or not np.isclose(output["data"][0], expected, rtol=1e-5, atol=1e-6):
        raise BenchError(f"server on port {port} answered {output}, expected score {expected}")


def run_wrk(port: int, concurrency: int, seconds: int, script: Path, body_path: Path) -> dict:
    cmd = [
        "wrk",
        "-t1",
        f"-c{concurrency}",
        f"-d{max(1, seconds)}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}{PATH}",
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body_path)},
        preexec_fn=pinned(CLIENT_CPU),
        timeout=seconds + 60,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRK_RESULT "))
    result = json.loads(line.removeprefix("WRK_RESULT "))
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    return result


class Server:
    """One HTTP server under test, started pinned to the server CPU (unless ``pin`` is False)."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        port: int,
        log: Path,
        cwd: Path = REPO,
        pin: bool = True,
        env: dict | None = None,
    ) -> None:
        self.name, self.cmd, self.port, self.log, self.cwd, self.pin = name, cmd, port, log, cwd, pin
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        ensure_port_free(self.port)
        print(f"  {self.name}: starting on port {self.port}", flush=True)
        with self.log.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=self.cwd,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(SERVER_CPU) if self.pin else None,
            )

    @property
    def running(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc

    def processes(self) -> list:
        import psutil

        proc = psutil.Process(self.running.pid)
        return [proc, *proc.children(recursive=True)]

    def workers(self) -> int:
        """Processes listening on the port, all of which must be this server's."""
        mine = {p.pid for p in self.processes()}
        found = listeners(self.port)
        strangers = {pid: cmd for pid, cmd in found.items() if pid not in mine}
        if strangers:
            raise BenchError(f"{self.name}: other processes listen on port {self.port} too: {strangers}")
        return len(found)

    def cpu_seconds(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.processes())

    def rss_mb(self) -> tuple[float, float]:
        """RSS of the whole server and of its largest process (a worker), MB."""
        rss = [p.memory_info().rss / 2**20 for p in self.processes()]
        return round(sum(rss), 1), round(max(rss), 1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def measure(
    servers: list[Server],
    concurrency: tuple[int, ...],
    seconds: int,
    rounds: int,
    script: Path,
    body_path: Path,
    expected: float,
) -> tuple[list[dict], dict[str, int], list[float]]:
    """Interleave the servers: every round loads each server at each concurrency in turn, so a
    slow spell of this shared machine hits them all alike. Returns the points (a point holds
    the runs of every round), the workers counted per server and the load average per round."""
    workers: dict[str, int] = {}
    load: list[float] = []
    samples: dict[tuple[str, int], list[dict]] = {}
    try:
        for server in servers:
            server.start()
        for server in servers:
            wait_ready(server.port, server.running, body_path.read_bytes(), expected)
            workers[server.name] = server.workers()
            print(f"  {server.name}: {workers[server.name]} process(es) listening", flush=True)
            run_wrk(server.port, 8, 2, script, body_path)  # warm-up
        per_round = max(1, round(seconds / rounds))
        for r in range(rounds):
            load.append(round(os.getloadavg()[0], 2))
            for c in concurrency:
                for server in servers:
                    cpu = server.cpu_seconds()
                    result = run_wrk(server.port, c, per_round, script, body_path)
                    result["cpu_us_per_request"] = round(
                        (server.cpu_seconds() - cpu) / max(1, result["requests"]) * 1e6, 1
                    )
                    result["rss_mb"], result["rss_mb_per_worker"] = server.rss_mb()
                    samples.setdefault((server.name, c), []).append(result)
                    print(
                        f"  round {r + 1}/{rounds} {server.name} c={c}: {result['rps']:.0f} req/s, "
                        f"p50 {result['p50_us']} us, p99 {result['p99_us']} us, "
                        f"{result['cpu_us_per_request']} CPU-us/req, RSS {result['rss_mb']} MB, "
                        f"errors {result['non2xx'] + result['socket_errors']}",
                        flush=True,
                    )
        for server in servers:  # nothing joined the port while it was loaded
            if server.workers() != workers[server.name]:
                raise BenchError(f"{server.name}: the number of processes listening on port {server.port} changed")
    finally:
        for server in servers:
            server.stop()
    points = []
    for (name, c), runs in samples.items():
        point = {"name": name, "concurrency": c, "rounds": len(runs), "workers": workers[name]}
        for key in ("rps", "p50_us", "p99_us", "cpu_us_per_request"):
            point[key] = float(np.median([run[key] for run in runs]))
        point["rps_per_round"] = [run["rps"] for run in runs]
        point["p50_us_per_round"] = [run["p50_us"] for run in runs]
        point["requests"] = sum(run["requests"] for run in runs)
        point["non2xx"] = sum(run["non2xx"] for run in runs)
        point["socket_errors"] = sum(run["socket_errors"] for run in runs)
        point["rss_mb"] = max(run["rss_mb"] for run in runs)
        point["rss_mb_per_worker"] = max(run["rss_mb_per_worker"] for run in runs)
        points.append(point)
    return points, workers, load


def kserve_python() -> Path:
    """The peer's interpreter, creating its virtualenv (pinned packages) on first use."""
    python = KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / "pins.txt"
    if not (python.exists() and marker.exists() and marker.read_text().split() == KSERVE_PINS):
        print(f"  creating {KSERVE_VENV} with {' '.join(KSERVE_PINS)}", flush=True)
        for cmd in (
            [os.environ.get("EDGEFLEET_PYTHON", "python3.11"), "-m", "venv", "--clear", str(KSERVE_VENV)],
            [str(python), "-m", "pip", "install", "--quiet", *KSERVE_PINS],
        ):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(cmd)} exited with {done.returncode}: {(done.stderr or done.stdout).strip()[-2000:]}"
                )
        marker.write_text("\n".join(KSERVE_PINS) + "\n")
    return python


# --- report --------------------------------------------------------------------------------


def spread(values: list[float]) -> dict:
    return {
        "min": round(min(values), 3),
        "median": round(float(np.median(values)), 3),
        "max": round(max(values), 3),
        "per_round": [round(v, 3) for v in values],
    }


def point(report: dict, name: str, c: int) -> dict | None:
    return next((p for p in report["points"] if p["name"] == name and p["concurrency"] == c), None)


def ratios(report: dict, name: str) -> dict:
    """Per-round ratios of ``name`` to floor 2: throughput at c=8, p50 at c=1 (and CPU time)."""
    out: dict = {}
    c8, b8 = point(report, name, 8), point(report, FLOOR2, 8)
    if c8 and b8:
        out["throughput_c8"] = spread([a / b for a, b in zip(c8["rps_per_round"], b8["rps_per_round"], strict=True)])
        out["cpu_per_request_c8"] = round(c8["cpu_us_per_request"] / b8["cpu_us_per_request"], 3)
    c1, b1 = point(report, name, 1), point(report, FLOOR2, 1)
    if c1 and b1:
        out["p50_c1"] = spread([a / b for a, b in zip(c1["p50_us_per_round"], b1["p50_us_per_round"], strict=True)])
    return out


def evaluate(report: dict) -> dict:
    ours = [p for p in report["points"] if p["name"] == OURS]
    r = report["ratios"][OURS]
    errors = sum(p["non2xx"] + p["socket_errors"] for p in ours)
    rss = max(p["rss_mb_per_worker"] for p in ours)
    targets = {
        "rss_mb_per_worker": {
            "value": rss,
            "target": f"<= {TARGETS['rss_mb_per_worker']}",
            "met": rss <= TARGETS["rss_mb_per_worker"],
        },
        "errors": {"value": errors, "target": "0", "met": errors == 0},
    }
    if "throughput_c8" in r:
        value = r["throughput_c8"]["median"]
        targets["throughput_vs_floor2_c8"] = {
            "value": value,
            "spread": [r["throughput_c8"]["min"], r["throughput_c8"]["max"]],
            "target": f">= {TARGETS['throughput_vs_floor2_c8']} (aim {TARGETS['throughput_aim_c8']})",
            "met": value >= TARGETS["throughput_vs_floor2_c8"],
        }
    ours_c1, floor_c1 = point(report, OURS, 1), point(report, FLOOR2, 1)
    if "p50_c1" in r and ours_c1 and floor_c1:
        value = r["p50_c1"]["median"]
        targets["p50_vs_floor2_c1"] = {
            "value": value,
            "spread": [r["p50_c1"]["min"], r["p50_c1"]["max"]],
            "p50_us": ours_c1["p50_us"],
            "floor2_p50_us": floor_c1["p50_us"],
            "target": f"<= {TARGETS['p50_vs_floor2_c1']}",
            "met": value <= TARGETS["p50_vs_floor2_c1"],
        }
    return targets


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(p["name"] for p in report["points"]))
    concurrency = report["concurrency"]
    fig, ((ax_rps, ax_lat), (ax_ratio, ax_rss)) = plt.subplots(2, 2, figsize=(14, 10))
    for name in names:
        pts = [p for p in report["points"] if p["name"] == name]
        c = [p["concurrency"] for p in pts]
        ax_rps.plot(c, [p["rps"] for p in pts], marker="o", label=f"{name} ({pts[0]['workers']} worker(s))")
        (line,) = ax_lat.plot(c, [p["p50_us"] for p in pts], marker="o", label=f"{name} p50")
        ax_lat.plot(
            c, [p["p99_us"] for p in pts], marker="x", linestyle="--", color=line.get_color(), label=f"{name} p99"
        )
    ax_rps.axhline(report["floor1"]["rps"], color="grey", linestyle=":", label="floor 1 (session.run in process)")
    ax_rps.set(title="Throughput (median of rounds)", ylabel="requests/s", yscale="log")
    ax_lat.set(title="Latency (median of rounds)", ylabel="microseconds", yscale="log")
    for ax in (ax_rps, ax_lat):
        ax.set_xscale("log")
        ax.set_xticks(concurrency, [str(c) for c in concurrency])
        ax.set_xlabel("concurrent connections (wrk)")
        ax.grid(True, which="both", alpha=0.3)
    ax_rps.legend(fontsize=7)
    ax_lat.legend(fontsize=6, ncol=2)
    # Per-round ratios to floor 2: the spread shows how much a shared machine moved them.
    others = [n for n in names if n != FLOOR2 and "throughput_c8" in report["ratios"].get(n, {})]
    for i, name in enumerate(others):
        per_round = report["ratios"][name]["throughput_c8"]["per_round"]
        ax_ratio.scatter([i] * len(per_round), per_round, color="tab:blue", alpha=0.6)
        ax_ratio.plot([i - 0.2, i + 0.2], [np.median(per_round)] * 2, color="black")
    ax_ratio.axhline(TARGETS["throughput_vs_floor2_c8"], color="red", linestyle=":", label="target")
    ax_ratio.axhline(TARGETS["throughput_aim_c8"], color="green", linestyle=":", label="aim")
    ax_ratio.set_xticks(range(len(others)), others, rotation=15, fontsize=7)
    ax_ratio.set(title="req/s at c=8 / floor 2's, per round (bar: median)", ylabel="ratio")
    ax_ratio.legend(fontsize=8)
    rss = {name: max(p["rss_mb_per_worker"] for p in report["points"] if p["name"] == name) for name in names}
    ax_rss.bar(range(len(rss)), list(rss.values()), color="tab:blue")
    ax_rss.set_xticks(range(len(rss)), list(rss), rotation=15, fontsize=7)
    ax_rss.axhline(TARGETS["rss_mb_per_worker"], color="red", linestyle=":", label="target per worker")
    ax_rss.set(title="RSS of the largest serving process", ylabel="MB")
    ax_rss.legend(fontsize=8)
    fig.suptitle(
        f"MLP 64-128-64-1 FP32, batch 1, loopback, {report['duration_s']} s per point "
        f"in {report['rounds']} interleaved rounds"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write_results(report: dict, out: Path) -> None:
    """Both files or neither: written beside their final names, then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    json_tmp, png_tmp = out / ".inference.json.tmp", out / ".inference.png.tmp.png"
    json_tmp.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, png_tmp)
    png_tmp.replace(out / "inference.png")
    json_tmp.replace(out / "inference.json")


def parse_variant(text: str) -> tuple[str, Path, list[str]]:
    """``NAME=DIR[,ARG...]``: the server of source tree DIR, with extra server arguments."""
    name, sep, rest = text.partition("=")
    directory, *extra = rest.split(",")
    path = Path(directory).resolve()
    if not sep or not name or not (path / "inference" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIR[,ARG...] with DIR/inference/__main__.py")
    return name, path, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load point (over all rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per point (median reported)")
    parser.add_argument(
        "--concurrency",
        default=",".join(map(str, CONCURRENCY)),
        help="wrk connections per point, comma-separated (1 and 8 are the targets')",
    )
    parser.add_argument(
        "--port", type=int, default=0, help="first port of the servers (one each, consecutive); default: free ports"
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME=DIR[,ARG...]",
        help="also measure the server of another source tree DIR, with extra server arguments ARG (repeatable)",
    )
    parser.add_argument("--skip-kserve", action="store_true", help="do not measure the KServe peer")
    parser.add_argument("--skip-extra", action="store_true", help="measure only floor 2, edge-infer and the variants")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for inference.json/png")
    parser.add_argument("--bare-server", nargs=2, metavar=("MODEL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.bare_server[0], int(args.bare_server[1]))
        return 0
    try:
        concurrency = tuple(int(c) for c in args.concurrency.split(","))
    except ValueError:
        parser.error(f"--concurrency: {args.concurrency!r} is not a comma-separated list of integers")
    if len(os.sched_getaffinity(0)) < 2:
        print("note: fewer than 2 CPUs, server and wrk share one", file=sys.stderr)
    try:
        report = run(args, concurrency)
    except BenchError as exc:
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return 1
    write_results(report, args.out)
    print(json.dumps(report["targets"], indent=2))
    print(f"wrote {args.out / 'inference.json'} and {args.out / 'inference.png'}")
    return 0


def run(args: argparse.Namespace, concurrency: tuple[int, ...]) -> dict:
    # Imported here, not at the top: the bare server process must not carry onnx in its RSS.
    from models.synthetic import mlp_model

    model = mlp_model(0)
    rng = np.random.default_rng(7)
    features = rng.standard_normal(64).astype(np.float32)
    body = orjson.dumps(
        {
            "id": "bench",
            "inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": features.tolist()}],
        }
    )
    expected = float(create_session(model).run(None, {"features": features.reshape(1, 64)})[0][0, 0])
    report: dict = {
        "model": "MLP 64-128-64-1 FP32 (models/synthetic.py mlp_model(0))",
        "batch": 1,
        "request_bytes": len(body),
        "duration_s": args.duration,
        "rounds": args.rounds,
        "concurrency": list(concurrency),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
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
        ours = [
            py,
            "-m",
            "inference",
            "--model-repository",
            models,
            "--host",
            "127.0.0.1",
            "--log-sample",
            "1",
            "--metrics-dir",
            str(tmp_path / "metrics"),
        ]

        def ours_with(*flags: str) -> Callable[[int], list[str]]:
            return lambda port: [*ours, "--port", str(port), *flags]

        # name -> (command for a port, source tree, pinned to one CPU)
        commands: dict[str, tuple[Callable[[int], list[str]], Path, bool]] = {
            FLOOR2: (
                lambda port: [py, __file__, "--bare-server", str(model_dir / "model.onnx"), str(port)],
                REPO,
                True,
            ),
            OURS: (ours_with(), REPO, True),
        }
        for name, tree, extra in args.variant:
            commands[name] = (ours_with(*extra), tree, True)
        if not args.skip_extra:
            commands[f"{OURS}-asyncio-loop"] = (ours_with("--loop", "asyncio"), REPO, True)
            commands[f"{OURS}-log-every-request"] = (ours_with("--log-rate", "0"), REPO, True)
            commands[f"{OURS}-2-workers"] = (ours_with("--workers", "2"), REPO, False)
        if not args.skip_kserve:
            try:
                kpy = kserve_python()
                (tmp_path / "kserve_model.py").write_text(KSERVE_MODEL)
                commands[f"kserve-{KSERVE_PINS[0].split('==')[1]}"] = (
                    lambda port: [
                        str(kpy),
                        str(tmp_path / "kserve_model.py"),
                        str(model_dir / "model.onnx"),
                        str(port),
                    ],
                    REPO,
                    True,
                )
            except (OSError, RuntimeError) as exc:
                report["kserve_error"] = str(exc)
                print(f"  kserve unavailable: {report['kserve_error']}", flush=True)
        servers = []
        for i, (name, (command, tree, pin)) in enumerate(commands.items()):
            port = args.port + i if args.port else free_port()
            servers.append(
                Server(
                    name,
                    command(port),
                    port,
                    tmp_path / f"{name}.log",
                    cwd=tree,
                    pin=pin,
                    env={"PYTHONPATH": str(tree)},
                )
            )
        report["servers"] = {
            s.name: {
                "source": str(s.cwd),
                "pinned_to_one_cpu": s.pin,
                "command": " ".join(s.cmd[1:]).replace(tmp, "$TMP"),
            }
            for s in servers
        }
        print("HTTP servers (wrk), interleaved", flush=True)
        report["points"], workers, report["machine"]["loadavg_per_round"] = measure(
            servers, concurrency, args.duration, args.rounds, script, body_path, expected
        )
        for name, count in workers.items():
            report["servers"][name]["workers"] = count
    report["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    report["ratios"] = {name: ratios(report, name) for name in report["servers"] if name != FLOOR2}
    report["targets"] = evaluate(report)
    return report


if __name__ == "__main__":
    sys.exit(main())
