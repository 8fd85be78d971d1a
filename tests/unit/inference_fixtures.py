"""Small ONNX models built deterministically, model repositories, and a real server process.

Models (opset 21, built with onnx.helper; the MLP, ``mlp_model``, is in ``models.synthetic``):

- ``arith_model``: ``x``, ``y`` INT64 [-1] -> ``sum`` INT64 and ``greater`` BOOL.
- ``logic_model``: ``a``, ``b`` BOOL [-1, 2] -> ``and``, ``xor`` BOOL.
- ``text_model``: ``text`` BYTES [-1] -> ``category`` BYTES and ``label`` INT64 (two
  LabelEncoders over ``WORDS``; unknown words give "other" and -1).
- ``echo_model``: one ``in_<type>`` [-1] per supported datatype, each returned as ``out_<type>``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from onnx import TensorProto, helper

from models.synthetic import onnx_model

REPO = Path(__file__).resolve().parents[2]
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}
# Values of each datatype that survive JSON -> tensor -> JSON exactly (range ends included).
DATATYPES_SAMPLE: dict[str, list] = {
    "BOOL": [True, False],
    "UINT8": [0, 255],
    "UINT16": [65535, 1],
    "UINT32": [2**32 - 1, 0],
    "UINT64": [2**64 - 1, 0],
    "INT8": [-128, 127],
    "INT16": [-32768, 32767],
    "INT32": [-(2**31), 2**31 - 1],
    "INT64": [-(2**63), 2**63 - 1],
    "FP16": [0.5, -2.0, 65504.0],
    "FP32": [0.25, -1.5, 3.0],
    "FP64": [0.1, 1e300],
    "BYTES": ["", "défaut ✓"],
}
WORDS = ["ok", "scratch", "dent", "crack"]
CATEGORIES = {"ok": "pass", "scratch": "cosmetic", "dent": "cosmetic", "crack": "reject"}


def arith_model() -> bytes:
    vi = helper.make_tensor_value_info
    return onnx_model(
        [helper.make_node("Add", ["x", "y"], ["sum"]), helper.make_node("Greater", ["x", "y"], ["greater"])],
        [vi("x", TensorProto.INT64, ["n"]), vi("y", TensorProto.INT64, ["n"])],
        [vi("sum", TensorProto.INT64, ["n"]), vi("greater", TensorProto.BOOL, ["n"])],
        name="arith",
    )


def logic_model() -> bytes:
    vi = helper.make_tensor_value_info
    return onnx_model(
        [helper.make_node("And", ["a", "b"], ["and"]), helper.make_node("Xor", ["a", "b"], ["xor"])],
        [vi("a", TensorProto.BOOL, ["n", 2]), vi("b", TensorProto.BOOL, ["n", 2])],
        [vi("and", TensorProto.BOOL, ["n", 2]), vi("xor", TensorProto.BOOL, ["n", 2])],
        name="logic",
    )


def text_model() -> bytes:
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["category"],
            domain="ai.onnx.ml",
            keys_strings=WORDS,
            values_strings=[CATEGORIES[w] for w in WORDS],
            default_string="other",
        ),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["label"],
            domain="ai.onnx.ml",
            keys_strings=WORDS,
            values_int64s=list(range(len(WORDS))),
            default_int64=-1,
        ),
    ]
    return onnx_model(
        nodes,
        [vi("text", TensorProto.STRING, ["n"])],
        [vi("category", TensorProto.STRING, ["n"]), vi("label", TensorProto.INT64, ["n"])],
        name="text",
    )


def echo_model() -> bytes:
    vi = helper.make_tensor_value_info
    nodes, inputs, outputs = [], [], []
    for datatype, onnx_type in ONNX_TYPES.items():
        t = datatype.lower()
        inputs.append(vi(f"in_{t}", onnx_type, ["n"]))
        outputs.append(vi(f"out_{t}", onnx_type, ["n"]))
        nodes.append(helper.make_node("Identity", [f"in_{t}"], [f"out_{t}"]))
    return onnx_model(nodes, inputs, outputs, name="echo")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_version(root: Path, model: str, version: str, data: bytes, config: str | None = None) -> Path:
    directory = root / model / version
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(data)
    if config is not None:
        (directory / "config.yaml").write_text(config)
    return directory


# --- a real server process ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict]:
        lines = []
        for raw in self.log_path.read_bytes().splitlines():
            try:
                lines.append(orjson.loads(raw))
            except orjson.JSONDecodeError:
                lines.append({"raw": raw.decode("utf-8", "replace")})
        return lines

    def wait_for_lines(self, predicate, timeout: float = 5.0) -> list[dict]:
        """The log lines matching ``predicate`` once there is one (request lines are written in
        batches, a fraction of a second after the request)."""
        found: list[dict] = []

        def match() -> bool:
            found[:] = [line for line in self.log_lines() if predicate(line)]
            return bool(found)

        wait_until(match, timeout, "a matching log line")
        return found


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict, bytes]:
    """One request on a fresh connection: (status, lowercased headers, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(port: int, path: str) -> tuple[int, dict]:
    status, _, body = request(port, "GET", path)
    return status, orjson.loads(body)


def post_json(port: int, path: str, document) -> tuple[int, dict]:
    status, _, body = request(port, "POST", path, orjson.dumps(document), {"content-type": "application/json"})
    return status, orjson.loads(body)


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} while waiting for {what}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def run_server(
    args: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    wait_for: str | None = "/v2/health/ready",
    port: int | None = None,
) -> Iterator[ServerProcess]:
    """``python -m inference`` on 127.0.0.1 and a free port, once ``wait_for`` answers 200;
    stopped with SIGTERM afterwards."""
    port = port or free_port()
    environ = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inference", "--host", "127.0.0.1", "--port", str(port), *args],
            cwd=REPO,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(proc, port, log_path)
    try:
        if wait_for:
            wait_until(lambda: request(port, "GET", wait_for, timeout=1)[0] == 200, 30, wait_for, proc)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
