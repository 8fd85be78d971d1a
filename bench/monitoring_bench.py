"""Monitoring benchmark: the site agent against a real inference server, on loopback.

Three measurements, one run (a script, not a test; writes bench/results/monitoring.json and .png
only when every part completed):

1. Agent footprint: RSS and CPU of the agent-mode Prometheus scraping the server every 5 s under
   a steady load, remote-writing to a core.
2. Scrape + remote-write overhead on the server's throughput: ``wrk`` (the settings of
   bench/inference_bench.py: one thread pinned to one CPU, a Lua POST script, c=8; the server
   pinned to the other CPU) against the server alone (agent paused), then while the agent
   scrapes it every 5 s; alternated ``--rounds`` times, ratio of the medians.
3. Outage replay: the core is stopped for each outage length (``--outages``, minutes), restarted,
   and the samples the agent scraped meanwhile are counted at the core: samples lost =
   scrapes expected in the window - samples received (one series: the inference job's ``up``).
   The WAL's growth over the outage gives the bytes per sample that size the WAL volumes.

    .venv/bin/python bench/monitoring_bench.py [--outages 1,5] [--rounds 3] [--duration 10]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inference_bench import CLIENT_CPU, SERVER_CPU, WRK_SCRIPT, pinned  # the same wrk settings
from components.contract import LATENCY_BUDGET_MS
from components.monitoring import agent, core, rules

RESULTS = REPO / "bench" / "results"
MODEL, VERSION = "predictive-maintenance", "2"
BODY = orjson.dumps(
    {
        "inputs": [
            {
                "name": "features",
                "shape": [1, 8],
                "datatype": "FP32",
                "data": [1.0, 2.0, 1.5, 3.0, 2.5, 40.0, 5.0, 1500.0],
            }
        ]
    }
)
SITE: dict[str, Any] = {"site": "lab-a", "wave": 1, "hardware_class": "x86-edge", "latency_class": "control"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def wait_until(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except RuntimeError:
            raise
        except Exception as exc:  # the process is still starting
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not within {timeout:g} s (last error: {last})")


@dataclass
class Proc:
    """One local process with its log; stopped by its own pid only."""

    name: str
    cmd: list[str]
    log: Path
    ready_url: str
    cpu: int | None = None
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        proc = self.proc = subprocess.Popen(
            self.cmd,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
            preexec_fn=None if self.cpu is None else pinned(self.cpu),
        )

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({proc.returncode}); log: {self.log}")
            return bool(http_get(self.ready_url))

        wait_until(ready, timeout, f"{self.name} ready")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def stats(self) -> tuple[float, float]:
        """(RSS MiB, CPU seconds) of the process from /proc."""
        pid = self.pid
        rss = (
            next(
                int(ln.split()[1])
                for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ln.startswith("VmRSS:")
            )
            / 1024
        )
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return rss, cpu


class Stack:
    """Inference server, core and agent on 127.0.0.1, in ``work``."""

    def __init__(self, work: Path, scrape_interval: str = "2s", profile: str = "x86-edge"):
        self.work = work
        self.infer_port, self.core_port, self.agent_port = free_port(), free_port(), free_port()
        self.scrape_interval = scrape_interval
        repo = work / "models" / MODEL / VERSION
        repo.mkdir(parents=True)
        shutil.copy(REPO / "models" / MODEL / VERSION / "model.onnx", repo / "model.onnx")
        self.server = Proc(
            "inference",
            [
                sys.executable,
                "-m",
                "inference",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.infer_port),
                "--model-repository",
                str(work / "models"),
                "--cache-dir",
                str(work / "cache"),
                "--metrics-dir",
                str(work / "metrics"),
            ],
            work / "inference.log",
            f"http://127.0.0.1:{self.infer_port}/v2/health/ready",
            cpu=SERVER_CPU,
        )
        (work / "rules").mkdir()
        budgets = {k: v / 1000 for k, v in LATENCY_BUDGET_MS.items()}
        files = core.core_files(
            core.CoreArgs(
                rules_dir=str(work / "rules"), evaluation_interval="5s", self_target=f"127.0.0.1:{self.core_port}"
            ),
            budgets,
            [rules.SiteExpectation(SITE["site"], SITE["latency_class"], {MODEL: [VERSION]})],
        )
        (work / "core.yml").write_text(files.pop("prometheus.yml"))
        for path, text in files.items():
            Path(path).write_text(text)
        self.core = Proc(
            "core",
            [
                "prometheus",
                *core.core_flags(str(work / "core.yml"), str(work / "core-data"), f"127.0.0.1:{self.core_port}"),
            ],
            work / "core.log",
            f"http://127.0.0.1:{self.core_port}/-/ready",
        )
        args = agent.AgentArgs(
            **SITE,
            image="unused",
            core=agent.CoreEndpoint("127.0.0.1", self.core_port),
            nodes={"n1": "127.0.0.1"},
            scrape_namespaces=[MODEL],
        )
        cfg = agent.prometheus_config(args)
        # On loopback there is no cluster DNS and no kubelet: the server is a static target of
        # the inference job; global labels and remote write are the rendered ones.
        cfg["global"]["scrape_interval"] = cfg["global"]["scrape_timeout"] = scrape_interval
        cfg["scrape_configs"] = [
            {
                "job_name": rules.INFER_JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{self.infer_port}"], "labels": {"namespace": MODEL}}],
            }
        ]
        (work / "agent.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.profile = agent.PROFILES[profile]
        self.agent = Proc(
            "agent",
            [
                "prometheus",
                *agent.agent_flags(
                    self.profile, str(work / "agent.yml"), str(work / "agent-wal"), f"127.0.0.1:{self.agent_port}"
                ),
            ],
            work / "agent.log",
            f"http://127.0.0.1:{self.agent_port}/-/ready",
        )

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": promql, **({"time": f"{at:.3f}"} if at is not None else {})}
        out = orjson.loads(http_get(f"http://127.0.0.1:{self.core_port}/api/v1/query?{urllib.parse.urlencode(params)}"))
        return out["data"]["result"]

    def samples(self, promql_selector: str, start: float, end: float) -> list[float]:
        """Timestamps of the raw samples of one series at the core between start and end."""
        result = self.query(f"{promql_selector}[{int(end - start) + 1}s]", at=end)
        return sorted(float(t) for r in result for t, _ in r["values"] if t >= start)

    def stop(self) -> None:
        for p in (self.agent, self.core, self.server):
            p.stop()


@contextlib.contextmanager
def running(work: Path, **kw: Any) -> Iterator[Stack]:
    stack = Stack(work, **kw)
    try:
        stack.server.start(120)
        stack.core.start()
        stack.agent.start()
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def load(port: int, rate: float) -> Iterator[dict[str, int]]:
    """Inference requests at about ``rate`` per second until the block ends."""
    counts = {"ok": 0, "failed": 0}
    stop = threading.Event()
    url = f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer"

    def run() -> None:
        while not stop.wait(1 / rate):
            req = urllib.request.Request(url, data=BODY, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    counts["ok" if r.status == 200 else "failed"] += 1
            except OSError:
                counts["failed"] += 1

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield counts
    finally:
        stop.set()
        t.join(10)


def largest_gap(timestamps: list[float], start: float, end: float) -> float:
    points = [start, *timestamps, end]
    return max(b - a for a, b in itertools.pairwise(points))


def outage(stack: Stack, seconds: float, interval_s: float) -> dict[str, Any]:
    """Stop the core for ``seconds``, restart it, and count the samples of the window at the core."""
    selector = f'up{{job="{rules.INFER_JOB}", site="{SITE["site"]}"}}'
    stack.core.stop()
    t0 = time.time()
    time.sleep(seconds)
    t1 = time.time()
    stack.core.start()
    expected = int(seconds / interval_s)

    def arrived() -> list[float] | None:
        got = stack.samples(selector, t0, t1)
        return got if len(got) >= expected - 1 else None

    started = time.monotonic()
    try:
        got = wait_until(arrived, 120 + seconds / 10, "outage samples at the core", interval=1)
    except TimeoutError:
        got = stack.samples(selector, t0, t1)
    return {
        "outage_s": round(seconds, 1),
        "expected_samples": expected,
        "received_samples": len(got),
        "lost_samples": max(0, expected - len(got)),
        "largest_gap_s": round(largest_gap(got, t0, t1), 2),
        "replay_s": round(time.monotonic() - started, 1),
    }


def run_wrk(port: int, seconds: int, script: Path, body: Path) -> float:
    cmd = [
        "wrk",
        "-t1",
        "-c8",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}/v2/models/{MODEL}/infer",
    ]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "BENCH_BODY": str(body)},
        timeout=seconds + 30,
        check=True,
        preexec_fn=pinned(CLIENT_CPU),
    ).stdout
    r = json.loads(next(ln for ln in out.splitlines() if ln.startswith("WRK_RESULT ")).removeprefix("WRK_RESULT "))
    return r["requests"] / (r["duration_us"] / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--outages", default="1,5", help="outage lengths in minutes, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    opts = ap.parse_args()
    report: dict[str, Any] = {
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "prometheus": subprocess.run(
                ["prometheus", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
        }
    }
    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as tmp:
        tmp_path = Path(tmp)
        script, body = tmp_path / "post.lua", tmp_path / "body.json"
        script.write_text(WRK_SCRIPT)
        body.write_bytes(BODY)
        with running(tmp_path / "overhead", scrape_interval="5s") as stack:
            # Overhead: the agent is paused (SIGSTOP) for the "alone" runs, so both runs share
            # one server process, one warm cache and the same wrk settings.
            run_wrk(stack.infer_port, 2, script, body)
            alone, scraped = [], []
            for _ in range(opts.rounds):
                os.kill(stack.agent.pid, 19)
                alone.append(run_wrk(stack.infer_port, opts.duration, script, body))
                os.kill(stack.agent.pid, 18)
                scraped.append(run_wrk(stack.infer_port, opts.duration, script, body))
            report["overhead"] = {
                "wrk": "-t1 -c8",
                "duration_s": opts.duration,
                "rounds": opts.rounds,
                "scrape_interval_s": 5,
                "rps_alone": [round(x, 1) for x in alone],
                "rps_scraped": [round(x, 1) for x in scraped],
                "ratio_scraped_to_alone": round(statistics.median(scraped) / statistics.median(alone), 3),
                "pinning": {"server_cpu": SERVER_CPU, "wrk_cpu": CLIENT_CPU, "agent_and_core": "unpinned"},
            }
            # Footprint under a steady load, scraping every 5 s.
            _, cpu0 = stack.agent.stats()
            with load(stack.infer_port, 50):
                time.sleep(60)
            rss1, cpu1 = stack.agent.stats()
            series = len(
                orjson.loads(
                    http_get(
                        f"http://127.0.0.1:{stack.core_port}/api/v1/series?match[]="
                        + urllib.parse.quote(f'{{site="{SITE["site"]}"}}')
                    )
                )["data"]
            )
            report["footprint"] = {
                "scrape_interval_s": 5,
                "load_rps": 50,
                "window_s": 60,
                "rss_mib": round(rss1, 1),
                "cpu_percent": round((cpu1 - cpu0) / 60 * 100, 2),
                "series": series,
                "rss_budget_mib": {k: p.memory for k, p in agent.PROFILES.items()},
            }
        with running(tmp_path / "outage", scrape_interval="5s") as stack, load(stack.infer_port, 20):
            wait_until(lambda: stack.query(f'up{{site="{SITE["site"]}"}}'), 60, "first samples at the core")
            time.sleep(10)
            wal = tmp_path / "outage" / "agent-wal"
            replay = []
            for minutes in [float(m) for m in opts.outages.split(",")]:
                before = sum(f.stat().st_size for f in wal.rglob("*") if f.is_file())
                result = outage(stack, minutes * 60, 5.0)
                after = sum(f.stat().st_size for f in wal.rglob("*") if f.is_file())
                result["wal_growth_bytes"] = after - before
                result["wal_bytes_per_sample"] = round((after - before) / (series * result["expected_samples"]), 2)
                replay.append(result)
                time.sleep(15)
            report["outage_replay"] = {"scrape_interval_s": 5, "series": series, "runs": replay}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "monitoring.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report)
    print(json.dumps(report, indent=2))


def plot(report: Mapping[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    o = report["overhead"]
    a.bar(
        ["server alone", "scraped every 5 s"], [statistics.median(o["rps_alone"]), statistics.median(o["rps_scraped"])]
    )
    a.set_ylabel("requests/s (wrk -t1 -c8, median)")
    a.set_title(f"Scrape + remote write overhead (ratio {o['ratio_scraped_to_alone']})")
    runs = report["outage_replay"]["runs"]
    labels = [f"{r['outage_s'] / 60:g} min" for r in runs]
    b.bar(labels, [r["expected_samples"] for r in runs], label="scraped during outage", alpha=0.5)
    b.bar(labels, [r["received_samples"] for r in runs], label="received after restore", alpha=0.8)
    b.set_title("Outage replay (samples of one series)")
    b.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "monitoring.png", dpi=100)


if __name__ == "__main__":
    main()
