"""Resource limits of the real server: bodies of millions of numbers are refused before they are
decoded, with 413/400 and never a 5xx, and the server's memory stays inside a 256 MiB pod limit
however many of them arrive at once; connections and buffered body bytes are capped."""

from __future__ import annotations

import socket
import threading
import time

import orjson
import psutil
import pytest

from models.synthetic import mlp_model
from tests.unit.inference_fixtures import get_json, post_json, run_server, write_version

POD_LIMIT = 256 * 2**20
FLOATS = 4 * 2**20  # ~4M numbers: 16 MB as "0.5,", 8 MB as "0,"
GOOD = {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}]}


def _tensor_body(shape: list[int], data: bytes) -> bytes:
    """A v2 body around raw JSON ``data`` (built as bytes: the test must not hold 4M objects)."""
    return b'{"inputs":[{"name":"features","datatype":"FP32","shape":%s,"data":%s}]}' % (orjson.dumps(shape), data)


def _flat(value: bytes, count: int) -> bytes:
    return b"[" + b",".join([value] * count) + b"]"


ABUSE = {
    # (path, body) -> what it tries
    "4M floats, flat, declared": ("/v2/models/mlp/infer", _tensor_body([FLOATS // 64, 64], _flat(b"0.5", FLOATS))),
    "4M small ints, flat, declared": ("/v2/models/mlp/infer", _tensor_body([FLOATS // 64, 64], _flat(b"0", FLOATS))),
    "4M floats under a small shape": ("/v2/models/mlp/infer", _tensor_body([1, 64], _flat(b"0.5", FLOATS))),
    "4M floats nested": (
        "/v2/models/mlp/infer",
        _tensor_body([FLOATS // 64, 64], b"[" + b",".join([_flat(b"0.5", 64)] * (FLOATS // 64)) + b"]"),
    ),
    "nested empty arrays": (
        "/v2/models/mlp/infer",
        _tensor_body([1, 64], b"[" + b"[" * 500 + b"]" * 500 + b"]").replace(
            b"[" * 500 + b"]" * 500, b",".join([b"[" * 500 + b"]" * 500] * 8000)
        ),
    ),
    "a huge declared shape": ("/v2/models/mlp/infer", _tensor_body([2**20, 2**20], _flat(b"0.5", 64))),
    "4M floats to a fixed-shape model": ("/v2/models/fixed/infer", _tensor_body([1, 64], _flat(b"0.5", FLOATS))),
    "4M floats in parameters": ("/v2/models/mlp/infer", b'{"parameters":{"x":%s},"inputs":[]}' % _flat(b"0.5", FLOATS)),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_version(root, "mlp", "1", mlp_model(0))
    write_version(root, "fixed", "1", mlp_model(0, batch=1))
    log = tmp_path_factory.mktemp("log") / "server.log"
    with run_server(["--model-repository", str(root)], log) as srv:
        yield srv


class RssWatch:
    """The peak RSS of a process, sampled every few milliseconds on a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _post(port: int, path: str, body: bytes, chunked: bool = False) -> int:
    """Send ``body`` (the server may answer and close before it is all sent); the status."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        if chunked:
            head = b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" % path.encode()
            step = 1 << 20
            payload = (
                b"".join(
                    b"%x\r\n%s\r\n" % (len(body[i : i + step]), body[i : i + step]) for i in range(0, len(body), step)
                )
                + b"0\r\n\r\n"
            )
        else:
            head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (path.encode(), len(body))
            payload = body
        try:
            sock.sendall(head + payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered early (413 from the headers) and closed
        response = b""
        while b"\r\n" not in response:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def test_bodies_of_millions_of_numbers_are_refused_before_decoding(server):
    cases = [(name, path, body, False) for name, (path, body) in ABUSE.items()]
    cases.append(("4M floats, chunked", *ABUSE["4M floats, flat, declared"], True))
    statuses: dict[str, int] = {}

    def send(name: str, path: str, body: bytes, chunked: bool) -> None:
        statuses[name] = _post(server.port, path, body, chunked)

    with RssWatch(server.proc.pid) as rss:
        for _ in range(2):  # each case, all at once, twice
            threads = [threading.Thread(target=send, args=case) for case in cases]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
            assert len(statuses) == len(cases)
            assert {name: status for name, status in statuses.items() if status not in (400, 413)} == {}
            statuses.clear()
    assert rss.peak < POD_LIMIT, f"peak RSS {rss.peak / 2**20:.0f} MiB"
    assert server.proc.poll() is None
    assert post_json(server.port, "/v2/models/mlp/infer", GOOD)[0] == 200
    assert get_json(server.port, "/v2/health/ready")[0] == 200


def test_the_refusal_says_what_the_model_takes(server):
    status, body = post_json(
        server.port,
        "/v2/models/mlp/infer",
        {"inputs": [{"name": "features", "shape": [2**20, 64], "datatype": "FP32", "data": [0.5] * 64}]},
    )
    assert status == 413 and "at most 1048576" in body["error"]
    # A batch within the limit is served.
    batch = {"inputs": [{"name": "features", "shape": [1024, 64], "datatype": "FP32", "data": [0.5] * 65536}]}
    status, body = post_json(server.port, "/v2/models/mlp/infer", batch)
    assert status == 200 and body["outputs"][0]["shape"] == [1024, 1]


def test_connections_over_the_cap_get_503(tmp_path):
    root = tmp_path / "models"
    write_version(root, "mlp", "1", mlp_model(0))
    with run_server(["--model-repository", str(root), "--max-connections", "3"], tmp_path / "server.log") as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(3)]
        for sock in held:  # answered: the server holds the connection
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as extra:
            extra.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            answer = extra.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"too many connections" in answer
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert get_json(srv.port, "/v2/health/live")[0] == 200


def test_a_request_over_the_inflight_budget_waits_for_the_others(tmp_path):
    root = tmp_path / "models"
    write_version(root, "mlp", "1", mlp_model(0))
    body = orjson.dumps(
        {"inputs": [{"name": "features", "shape": [2, 64], "datatype": "FP32", "data": [0.123456789] * 128}]}
    )
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(
        body
    )
    args = ["--model-repository", str(root), "--max-inflight-bytes", str(len(body) + 100)]
    with run_server(args, tmp_path / "server.log") as srv:
        first = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        second = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        first.sendall(head)
        assert first.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"  # it holds its Content-Length
        first.sendall(body[:100])
        second.sendall(head)  # does not fit beside it: no 100 Continue yet
        second.settimeout(0.5)
        with pytest.raises(TimeoutError):
            second.recv(1024)
        first.sendall(body[100:])
        assert first.recv(65536).startswith(b"HTTP/1.1 200 ")
        second.settimeout(10)
        assert second.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        second.sendall(body)
        assert second.recv(65536).startswith(b"HTTP/1.1 200 ")
        first.close()
        second.close()


# --- the limits themselves (pure) -----------------------------------------------------------


def _signature(*inputs: tuple[str, str, tuple[int, ...]]):
    from inference.codec import Signature, TensorSpec

    return Signature(tuple(TensorSpec(*i) for i in inputs), (TensorSpec("y", "FP32", (-1,)),))


def test_limits_follow_the_input_shapes_and_datatypes():
    from inference.limits import BODY_CAP, HEADROOM, JSON_WIDTH, VALUE_HEADROOM, limits_for

    fixed = limits_for(_signature(("x", "FP32", (1, 3, 8, 8)), ("mask", "BOOL", (1, 10))))
    assert fixed.elements == 192 + 10 and fixed.values == 202 + VALUE_HEADROOM
    assert fixed.body_bytes == HEADROOM + 192 * JSON_WIDTH["FP32"] + 10 * JSON_WIDTH["BOOL"]
    # Dynamic inputs share max_elements, at the widest of their datatypes; the cap bounds the body.
    dynamic = limits_for(
        _signature(("a", "UINT8", (-1, 4)), ("b", "INT64", (-1,)), ("c", "FP32", (2,))), max_elements=1000
    )
    assert dynamic.elements == 1002 and dynamic.body_bytes == HEADROOM + 1000 * JSON_WIDTH["INT64"] + 2 * 32
    assert limits_for(_signature(("x", "FP32", (-1, 64)))).body_bytes == BODY_CAP
    assert limits_for(_signature(("x", "FP32", (1,))), override=5000).body_bytes == 5000


def test_json_values_are_counted_outside_strings():
    from inference.limits import json_values_over

    body = orjson.dumps({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [2], "data": ["a,b,c" * 1000, "x"]}]})
    assert json_values_over(body, 50) == 0  # 5000 commas, all inside a string
    assert json_values_over(b"[" + b"0," * 100 + b"0]", 50) == 102
    assert json_values_over(b"[" * 60 + b"]" * 60, 50) == 61  # nesting without commas counts too
    assert json_values_over(b'["a\\",b", ' + b"1," * 60 + b"1]", 50) == 63  # an escaped quote ends no string


def test_declared_shapes_over_the_element_budget_are_413_before_conversion():
    from inference.codec import decode_infer_request
    from inference.errors import TooLarge

    signature = _signature(("x", "FP32", (-1, 4)), ("z", "FP32", (-1,)))
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1.0] * 8},
                {"name": "z", "shape": [3], "datatype": "FP32", "data": [1.0] * 3},
            ]
        }
    )
    assert decode_infer_request(body, signature, max_elements=11).inputs["z"].shape == (3,)
    with pytest.raises(TooLarge, match=r"inputs\[1\]\.shape: \[3\] is 3 elements; .* at most 10 in all"):
        decode_infer_request(body, signature, max_elements=10)
