"""Bounded fuzzing of the running server: schemathesis against inference/openapi.yaml, and a
flood of malformed requests that must never get a 5xx, kill the server or grow its memory."""

from __future__ import annotations

import http.client
import random
import socket

import orjson
import psutil
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from models.synthetic import mlp_model
from tests.unit.inference_fixtures import (
    REPO,
    arith_model,
    echo_model,
    get_json,
    run_server,
    text_model,
    write_version,
)

OPENAPI = REPO / "inference" / "openapi.yaml"
MAX_BODY = 256 * 1024
# Every model here is READY, so any 5xx (even the 503 of a failed model) is a failure.
MODELS = ["mlp", "arith", "text", "echo", "nope"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_version(root, "mlp", "1", mlp_model(0))
    write_version(root, "mlp", "2", mlp_model(1))
    write_version(root, "arith", "1", arith_model())
    write_version(root, "text", "1", text_model())
    write_version(root, "echo", "1", echo_model())
    log = tmp_path_factory.mktemp("log") / "server.log"
    with run_server(["--model-repository", str(root), "--max-body-bytes", str(MAX_BODY)], log) as srv:
        yield srv


def _api_schema():
    document = yaml.safe_load(OPENAPI.read_text())
    # Aim generated path parameters at the models the test server has (and one it has not), so
    # that requests reach the decoder and the runtime instead of stopping at a 404.
    parameters = document["components"]["parameters"]
    parameters["Model"]["schema"] = {"type": "string", "enum": MODELS}
    parameters["Version"]["schema"] = {"type": "string", "enum": ["1", "2", "7"]}
    schema = schemathesis.openapi.from_dict(document)
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


schema = _api_schema()


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_the_openapi_document(case, server):
    case.call_and_validate(
        base_url=server.base,
        timeout=10,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
            negative_data_rejection,
        ],
    )


def test_openapi_document_lists_every_route_the_server_has():
    paths = set(yaml.safe_load(OPENAPI.read_text())["paths"])
    assert paths == {
        "/v2/health/live",
        "/v2/health/ready",
        "/v2",
        "/v2/models/{model}",
        "/v2/models/{model}/versions/{version}",
        "/v2/models/{model}/ready",
        "/v2/models/{model}/versions/{version}/ready",
        "/v2/models/{model}/infer",
        "/v2/models/{model}/versions/{version}/infer",
        "/metrics",
    }


# --- 10,000 bad requests ---------------------------------------------------------------------


def _bad_requests(rng: random.Random):
    """(raw bytes, closes connection) pairs: malformed HTTP, and well-formed HTTP with bad bodies."""
    good = {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}
    bodies = [
        b"",
        b"{",
        b"null",
        b"[]",
        b'{"inputs": 5}',
        b'{"inputs": [{}]}',
        orjson.dumps({"inputs": [{**good, "datatype": "INT8"}]}),
        orjson.dumps({"inputs": [{**good, "shape": [1, 65]}]}),
        orjson.dumps({"inputs": [{**good, "data": [[0.5] * 64, [1]]}]}),
        orjson.dumps({"inputs": [{**good, "data": ["a"] * 64}]}),
        orjson.dumps({"inputs": [good, good]}),
        orjson.dumps({"inputs": [good], "outputs": [{"name": "nope"}]}),
        orjson.dumps({"inputs": [{**good, "name": "x" * 2000}]}),
        b'{"inputs": [' * 300,
        bytes(rng.randrange(256) for _ in range(64)),
    ]
    paths = [
        "/v2/models/mlp/infer",
        "/v2/models/mlp/versions/1/infer",
        "/v2/models/arith/infer",
        "/v2/models/text/infer",
        "/v2/models/echo/infer",
        "/v2/models/nope/infer",
    ]
    while True:
        roll = rng.random()
        if roll < 0.8:
            body = rng.choice(bodies)
            path = rng.choice(paths)
            yield (
                b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body),
                False,
            )
        elif roll < 0.9:
            path = rng.choice(
                [
                    b"/v2/models/%s" % bytes(rng.randrange(33, 127) for _ in range(12)),
                    b"/v2/../../etc/passwd",
                    b"/v2/models/mlp/versions//infer",
                    b"/%ff%00",
                ]
            )
            method = rng.choice([b"GET", b"DELETE", b"PATCH", b"POST", b"OPTIONS"])
            yield b"%s %s HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n" % (method, path), False
        elif roll < 0.97:
            yield (
                rng.choice(
                    [
                        b"GARBAGE\r\n\r\n",
                        b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                        b"POST /v2/models/mlp/infer HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                        b"POST /v2/models/mlp/infer HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                        b"GET /v2 HTTP/9.9\r\n\r\n",
                        b"GET /v2/health/live HTTP/1.1\r\nBad Header\r\n\r\n",
                        bytes(rng.randrange(256) for _ in range(40)) + b"\r\n\r\n",
                    ]
                ),
                True,
            )
        else:
            yield (b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n"), True


def _read_response(sock: socket.socket) -> int:
    """Status of the next response on ``sock`` (its body is read and dropped)."""
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.read()
    return response.status


def test_ten_thousand_bad_requests(server):
    proc = psutil.Process(server.proc.pid)
    rng = random.Random(1234)
    requests = _bad_requests(rng)
    statuses: dict[int, int] = {}

    def run(count: int) -> None:
        sock = None
        for _ in range(count):
            raw, closes = next(requests)
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            try:
                sock.sendall(raw)
            except (BrokenPipeError, ConnectionResetError):
                pass  # an early 413/431 closed the connection while the request was still going out
            status = _read_response(sock)
            statuses[status] = statuses.get(status, 0) + 1
            if closes or status in (413, 431):
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    run(1000)  # warm up: allocator pools, metric children, caches
    rss_before = proc.memory_info().rss
    run(9000)
    rss_growth = proc.memory_info().rss - rss_before
    assert sum(statuses.values()) == 10000
    assert not [s for s in statuses if s >= 500], statuses
    assert {400, 404, 405, 413, 431} <= set(statuses), statuses
    assert rss_growth < 20 * 1024 * 1024, f"RSS grew by {rss_growth / 2**20:.1f} MiB"
    assert server.proc.poll() is None
    assert get_json(server.port, "/v2/health/ready") == (200, {"ready": True})
