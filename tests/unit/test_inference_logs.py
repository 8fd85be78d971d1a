"""The access log and the metrics kept outside prometheus_client between flushes (pure)."""

from __future__ import annotations

import os

import orjson
from prometheus_client import generate_latest

from inference import logs
from inference.metrics import Metrics


def _writer(tmp_path, level: int = logs.INFO) -> tuple[logs.LogWriter, object]:
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    return logs.LogWriter(fd, level), path


def test_request_lines_are_buffered_and_events_keep_their_order(tmp_path, monkeypatch):
    writer, path = _writer(tmp_path)
    monkeypatch.setattr(logs, "WRITER", writer)
    log = logs.RequestLog(sample=1.0)
    log("POST", "/v2/models/m/infer", 200, 0.000123, "m", "1")
    log("GET", "/v2/models/x" + "y" * 1000, 404, 0.0, error="unknown model 'x'")
    assert path.read_bytes() == b""  # nothing written per request...
    logs.event(logs.WARNING, "model version failed", model="m")  # ...until an event, after them
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [line["msg"] for line in lines] == ["request", "request", "model version failed"]
    ok, missing, _ = lines
    assert ok["level"] == "info" and ok["status"] == 200 and ok["duration_us"] == 123.0 and ok["model"] == "m"
    assert missing["level"] == "warning" and len(missing["path"]) == logs.MAX_PATH_CHARS
    assert ok["pid"] == os.getpid() and ok["ts"].endswith("Z") and len(ok["ts"]) == 24


def test_success_lines_over_the_rate_are_counted_not_written(tmp_path, monkeypatch):
    writer, path = _writer(tmp_path)
    monkeypatch.setattr(logs, "WRITER", writer)
    log = logs.RequestLog(sample=1.0, rate=10)
    for _ in range(25):
        log("POST", "/v2/models/m/infer", 200, 0.0001, "m", "1")
    for _ in range(3):
        log("POST", "/v2/models/m/infer", 400, 0.0001, "m", "1", error="bad")
    logs.flush()
    statuses = [orjson.loads(line)["status"] for line in path.read_bytes().splitlines()]
    assert statuses.count(200) == 10 and statuses.count(400) == 3  # every error is written
    assert log.suppressed == 15


def test_batched_successes_export_what_observe_would():
    batched, direct = Metrics(), Metrics()
    for seconds in (20e-6, 50e-6, 75e-6, 0.004, 3.0):
        batched.ok("m", "1", seconds)
        direct.requests.labels("m", "1", "200").inc()
        direct.latency.labels("m", "1").observe(seconds)
    batched.flush()

    def series(metrics: Metrics) -> list[str]:
        return [
            line
            for line in generate_latest(metrics.registry).decode().splitlines()
            if line.startswith(("edge_infer_requests", "edge_infer_request_duration"))
        ]

    assert series(batched) == series(direct)
    assert any('le="5e-05"' in line and line.endswith(" 2.0") for line in series(batched))
