"""The server process: graceful shutdown, worker processes, configuration, startup failures."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import orjson
import psutil
import pytest

from models.synthetic import mlp_model
from tests.unit.inference_fixtures import (
    REPO,
    free_port,
    get_json,
    post_json,
    request,
    run_server,
    sha256,
    wait_until,
    write_version,
)

GOOD = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_version(root, "mlp", "1", mlp_model(0))
    return root


def test_sigterm_finishes_the_request_in_flight_then_exits_0(repo, tmp_path):
    body = orjson.dumps(GOOD)
    with run_server(["--model-repository", str(repo)], tmp_path / "server.log") as srv:
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        busy = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        busy.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body[:100])
        )
        time.sleep(0.2)
        srv.proc.send_signal(signal.SIGTERM)
        # It stops accepting, and drops the idle keep-alive connection...
        wait_until(lambda: _refused(srv.port), 5, "the listener to close")
        assert idle.recv(1024) == b""
        # ...but the request it was reading completes.
        busy.sendall(body[100:])
        response = busy.recv(65536)
        assert response.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in response
        assert srv.proc.wait(10) == 0
        messages = [line.get("msg") for line in srv.log_lines()]
        assert "shutting down" in messages and messages[-1] == "stopped"
        idle.close()
        busy.close()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_workers_share_the_port_and_aggregate_metrics(repo, tmp_path):
    args = ["--model-repository", str(repo), "--workers", "2", "--metrics-dir", str(tmp_path / "metrics")]
    with run_server(args, tmp_path / "server.log") as srv:
        workers = psutil.Process(srv.proc.pid).children()
        assert len(workers) == 2
        wait_until(lambda: all(_worker_ready(srv.port) for _ in range(10)), 30, "both workers ready")
        before = _requests_total(srv.port)
        for _ in range(40):  # a new connection each, spread over both workers by the kernel
            assert post_json(srv.port, "/v2/models/mlp/infer", GOOD)[0] == 200
        # Each worker adds its counts to the shared series a fraction of a second later.
        wait_until(lambda: _requests_total(srv.port) - before == 40, 5, "40 requests counted")
        assert {line["pid"] for line in srv.log_lines() if line.get("msg") == "listening"} == {w.pid for w in workers}
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(15) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert not (tmp_path / "metrics").exists()


def _worker_ready(port: int) -> bool:
    return request(port, "GET", "/v2/health/ready")[0] == 200


def _requests_total(port: int) -> float:
    raw = request(port, "GET", "/metrics")[2].decode()
    lines = [ln for ln in raw.splitlines() if ln.startswith("edge_infer_requests_total{") and 'status="200"' in ln]
    return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)


def test_environment_variables_configure_the_server(repo, tmp_path):
    env = {
        "EDGE_INFER_MODEL_REPOSITORY": str(repo),
        "EDGE_INFER_MAX_BODY_BYTES": "2048",
        "EDGE_INFER_EXPECT_SHA256": f"mlp:1={sha256(mlp_model(0))}",
        "EDGE_INFER_LOG_LEVEL": "debug",
        "EDGE_INFER_LOOP": "asyncio",
        "EDGE_INFER_PORT": "1",
    }  # the --port flag wins over the variable
    with run_server([], tmp_path / "server.log", env=env) as srv:
        assert get_json(srv.port, "/v2/models/mlp")[1]["sha256"] == sha256(mlp_model(0))
        batch = {"inputs": [{"name": "features", "shape": [8, 64], "datatype": "FP32", "data": [0.123456] * 512}]}
        assert post_json(srv.port, "/v2/models/mlp/infer", batch)[0] == 413
        assert post_json(srv.port, "/v2/models/mlp/infer", GOOD)[0] == 200
        lines = srv.log_lines()
        assert any(line.get("msg") == "listening" and line.get("loop") == "asyncio" for line in lines)
        # At debug level every request has its line.
        srv.wait_for_lines(lambda line: line.get("msg") == "request" and line.get("status") == 200)


def test_log_sampling_logs_successful_requests_at_info(repo, tmp_path):
    with run_server(["--model-repository", str(repo), "--log-sample", "1"], tmp_path / "server.log") as srv:
        post_json(srv.port, "/v2/models/mlp/infer", GOOD)
        [line] = srv.wait_for_lines(lambda ln: ln.get("msg") == "request" and ln.get("path") == "/v2/models/mlp/infer")
        assert line["level"] == "info" and line["model"] == "mlp" and line["duration_us"] > 0


@pytest.mark.parametrize(
    "args,env,fragment",
    [
        (["--workers", "0"], {}, "argument --workers: '0': must be between 1 and 64"),
        (["--expect-sha256", "mlp=abc"], {}, "is not model:version=<64 hex digits>"),
        (["--log-level", "loud"], {}, "argument --log-level: 'loud': must be one of debug, info"),
        ([], {"EDGE_INFER_WORKERS": "many"}, "EDGE_INFER_WORKERS: 'many'"),
        ([], {"EDGE_INFER_EXPECT_SHA256": "mlp:1=zz"}, "EDGE_INFER_EXPECT_SHA256"),
    ],
)
def test_bad_configuration_exits_2_without_traceback(args, env, fragment):
    proc = subprocess.run(
        [sys.executable, "-m", "inference", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **env},
        timeout=60,
    )
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr


def test_missing_repository_is_live_but_not_ready(tmp_path):
    with run_server(
        ["--model-repository", str(tmp_path / "absent")], tmp_path / "server.log", wait_for="/v2/health/live"
    ) as srv:
        wait_until(
            lambda: "holds no model version" in get_json(srv.port, "/v2/health/ready")[1].get("error", ""),
            10,
            "the repository to be read",
        )
        assert get_json(srv.port, "/v2/health/ready")[0] == 503
        assert any(line.get("msg") == "model repository missing" for line in srv.log_lines())


def test_port_in_use_is_reported(repo, tmp_path):
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "inference",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model-repository",
                str(repo),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode != 0
    [line] = [orjson.loads(ln) for ln in proc.stderr.splitlines() if "cannot listen" in ln]
    assert line["port"] == port and line["level"] == "error"
