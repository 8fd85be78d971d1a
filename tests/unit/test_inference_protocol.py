"""Open Inference Protocol v2 conformance of the real server process on loopback."""

from __future__ import annotations

import re
import socket

import jsonschema
import numpy as np
import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from models.synthetic import mlp_model, mlp_reference
from tests.unit.inference_fixtures import (
    DATATYPES_SAMPLE,
    REPO,
    arith_model,
    echo_model,
    get_json,
    logic_model,
    post_json,
    request,
    run_server,
    sha256,
    text_model,
    write_version,
)

MAX_BODY = 64 * 1024
WRONG = sha256(b"some other file")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_version(root, "mlp", "1", mlp_model(0))
    write_version(root, "mlp", "2", mlp_model(1))
    write_version(root, "arith", "1", arith_model())
    write_version(root, "logic", "1", logic_model())
    write_version(root, "text", "1", text_model())
    write_version(root, "echo", "1", echo_model())
    write_version(root, "pinned", "1", mlp_model(0), f'sha256: "{sha256(mlp_model(0))}"\nintra_op_threads: 1\n')
    write_version(root, "tampered", "1", mlp_model(2), f'sha256: "{sha256(mlp_model(0))}"\n')
    write_version(root, "flagged", "1", mlp_model(0))
    write_version(root, "corrupt", "1", b"\x08\x07 not an onnx model")
    write_version(root, "rollout", "1", mlp_model(0))
    write_version(root, "rollout", "2", mlp_model(1), f'sha256: "{WRONG}"\n')
    log = tmp_path_factory.mktemp("log") / "server.log"
    with run_server(
        ["--model-repository", str(root), "--max-body-bytes", str(MAX_BODY), "--expect-sha256", f"flagged:1={WRONG}"],
        log,
    ) as srv:
        yield srv


def infer(server, model: str, inputs: list, version: str | None = None, **extra):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    return post_json(server.port, path, {"inputs": inputs, **extra})


def features(batch: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 64)).astype(np.float32)


# --- health and metadata -------------------------------------------------------------------------


def test_health_endpoints(server):
    assert get_json(server.port, "/v2/health/live") == (200, {"live": True})
    assert get_json(server.port, "/v2/health/ready") == (200, {"ready": True})


def test_server_metadata(server):
    status, meta = get_json(server.port, "/v2")
    assert status == 200 and meta["name"] == "edge-infer" and meta["version"] and meta["extensions"] == []


def test_model_metadata_has_the_real_onnx_signature(server):
    status, meta = get_json(server.port, "/v2/models/mlp/versions/1")
    assert status == 200
    assert meta == {
        "name": "mlp",
        "versions": ["1", "2"],
        "platform": "onnxruntime_onnx",
        "version": "1",
        "state": "READY",
        "sha256": sha256(mlp_model(0)),
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1, 1]}],
    }
    assert get_json(server.port, "/v2/models/arith")[1]["outputs"] == [
        {"name": "sum", "datatype": "INT64", "shape": [-1]},
        {"name": "greater", "datatype": "BOOL", "shape": [-1]},
    ]
    assert get_json(server.port, "/v2/models/logic")[1]["inputs"][0] == {
        "name": "a",
        "datatype": "BOOL",
        "shape": [-1, 2],
    }
    assert get_json(server.port, "/v2/models/text")[1]["inputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [-1]}
    ]
    echo = get_json(server.port, "/v2/models/echo")[1]
    assert [t["datatype"] for t in echo["inputs"]] == list(DATATYPES_SAMPLE)


def test_version_omitted_means_highest_ready_version(server):
    assert get_json(server.port, "/v2/models/mlp")[1]["version"] == "2"
    status, body = infer(
        server,
        "mlp",
        [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": features(1).ravel().tolist()}],
    )
    assert status == 200 and body["model_version"] == "2"
    # rollout/2 failed its digest check: unversioned URLs keep serving version 1.
    assert get_json(server.port, "/v2/models/rollout")[1]["version"] == "1"
    assert get_json(server.port, "/v2/models/rollout/ready") == (
        200,
        {"name": "rollout", "version": "1", "ready": True},
    )


def test_model_ready(server):
    assert get_json(server.port, "/v2/models/mlp/ready") == (200, {"name": "mlp", "version": "2", "ready": True})
    assert get_json(server.port, "/v2/models/mlp/versions/1/ready")[0] == 200
    assert get_json(server.port, "/v2/models/pinned/versions/1/ready")[0] == 200


@pytest.mark.parametrize(
    "model,fragment",
    [
        ("tampered", f"sha256 mismatch: {{}} hashes to {sha256(mlp_model(2))}, expected {sha256(mlp_model(0))}"),
        ("flagged", f"expected {WRONG} (--expect-sha256)"),
        ("corrupt", "cannot load"),
    ],
)
def test_failed_versions_are_refused_and_reported(server, model, fragment):
    status, body = get_json(server.port, f"/v2/models/{model}/versions/1/ready")
    assert status == 503 and "FAILED" in body["error"]
    status, meta = get_json(server.port, f"/v2/models/{model}/versions/1")
    assert status == 200 and meta["state"] == "FAILED" and meta["inputs"] == [] and "sha256" not in meta
    head, _, tail = fragment.partition("{}")
    assert head in meta["reason"] and tail in meta["reason"]
    status, body = infer(
        server, model, [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}], version="1"
    )
    assert status == 503 and "FAILED" in body["error"]


# --- inference -------------------------------------------------------------------------------


def test_mlp_flat_and_nested_data_give_the_reference_result(server):
    x = features(3)
    expected = mlp_reference(x, seed=0)
    for data in (x.ravel().tolist(), x.tolist()):
        status, body = infer(
            server,
            "mlp",
            [{"name": "features", "shape": [3, 64], "datatype": "FP32", "data": data}],
            version="1",
            id="req-42",
            parameters={"trace": True},
        )
        assert status == 200
        assert body["model_name"] == "mlp" and body["model_version"] == "1" and body["id"] == "req-42"
        [out] = body["outputs"]
        assert out["name"] == "score" and out["datatype"] == "FP32" and out["shape"] == [3, 1]
        np.testing.assert_allclose(np.array(out["data"]).reshape(3, 1), expected, rtol=1e-5, atol=1e-5)


def test_int64_and_bool_models(server):
    status, body = infer(
        server,
        "arith",
        [
            {"name": "x", "shape": [3], "datatype": "INT64", "data": [1, 2**40, -5]},
            {"name": "y", "shape": [3], "datatype": "INT64", "data": [2, 1, -9]},
        ],
    )
    assert status == 200
    assert body["outputs"] == [
        {"name": "sum", "datatype": "INT64", "shape": [3], "data": [3, 2**40 + 1, -14]},
        {"name": "greater", "datatype": "BOOL", "shape": [3], "data": [False, True, True]},
    ]
    a, b = [[True, True], [False, True]], [[True, False], [False, False]]
    status, body = infer(
        server,
        "logic",
        [
            {"name": "a", "shape": [2, 2], "datatype": "BOOL", "data": a},
            {"name": "b", "shape": [2, 2], "datatype": "BOOL", "data": b},
        ],
    )
    assert status == 200
    assert body["outputs"][0]["data"] == [True, False, False, False]
    assert body["outputs"][1]["data"] == [False, True, False, True]


def test_bytes_model(server):
    status, body = infer(
        server,
        "text",
        [{"name": "text", "shape": [4], "datatype": "BYTES", "data": ["crack", "ok", "dent", "ünknown"]}],
    )
    assert status == 200
    assert body["outputs"] == [
        {"name": "category", "datatype": "BYTES", "shape": [4], "data": ["reject", "pass", "cosmetic", "other"]},
        {"name": "label", "datatype": "INT64", "shape": [4], "data": [3, 0, 2, -1]},
    ]


def test_every_datatype_round_trips(server):
    inputs = [
        {"name": f"in_{dt.lower()}", "shape": [len(values)], "datatype": dt, "data": values}
        for dt, values in DATATYPES_SAMPLE.items()
    ]
    status, body = infer(server, "echo", inputs)
    assert status == 200
    got = {o["name"]: o for o in body["outputs"]}
    for dt, values in DATATYPES_SAMPLE.items():
        out = got[f"out_{dt.lower()}"]
        assert out["datatype"] == dt and out["shape"] == [len(values)]
        assert out["data"] == values, dt


def test_requested_outputs_only_in_request_order(server):
    inputs = [
        {"name": "x", "shape": [1], "datatype": "INT64", "data": [4]},
        {"name": "y", "shape": [1], "datatype": "INT64", "data": [1]},
    ]
    status, body = infer(server, "arith", inputs, outputs=[{"name": "greater"}])
    assert status == 200 and [o["name"] for o in body["outputs"]] == ["greater"]
    status, body = infer(server, "arith", inputs, outputs=[{"name": "greater"}, {"name": "sum"}])
    assert [o["name"] for o in body["outputs"]] == ["greater", "sum"]


# --- errors ----------------------------------------------------------------------------------

GOOD = {"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.5] * 64}


@pytest.mark.parametrize(
    "body,fragment",
    [
        (b'{"inputs": [', "not valid JSON"),
        (b"", "not valid JSON"),
        (orjson.dumps({"inputs": [{**GOOD, "datatype": "FP64"}]}), "takes FP32, not FP64"),
        (orjson.dumps({"inputs": [{**GOOD, "datatype": "FLOAT32"}]}), "must be one of"),
        (orjson.dumps({"inputs": [{**GOOD, "shape": [1, 63]}]}), "does not fit"),
        (orjson.dumps({"inputs": [{**GOOD, "shape": [64]}]}), "does not fit"),
        (orjson.dumps({"inputs": [{**GOOD, "shape": [2, 64]}]}), "needs 128"),
        (orjson.dumps({"inputs": [{**GOOD, "data": ["x"] * 64}]}), "FP32 takes JSON"),
        (orjson.dumps({"inputs": [{**GOOD, "name": "pixels"}]}), "no input 'pixels'"),
        (orjson.dumps({"inputs": [GOOD], "outputs": [{"name": "label"}]}), "no output 'label'"),
        (orjson.dumps({"inputs": []}), "non-empty array"),
    ],
)
def test_bad_infer_requests_are_400(server, body, fragment):
    status, headers, raw = request(server.port, "POST", "/v2/models/mlp/infer", body)
    assert status == 400 and headers["content-type"] == "application/json"
    assert fragment in orjson.loads(raw)["error"]


def test_missing_input_is_400(server):
    status, body = infer(server, "arith", [{"name": "x", "shape": [1], "datatype": "INT64", "data": [1]}])
    assert status == 400 and "missing input(s): y" in body["error"]


def test_input_rejected_by_the_runtime_is_400(server):
    # Shapes agree with each input's own declaration but not with each other: Add cannot broadcast.
    status, body = infer(
        server,
        "arith",
        [
            {"name": "x", "shape": [2], "datatype": "INT64", "data": [1, 2]},
            {"name": "y", "shape": [3], "datatype": "INT64", "data": [1, 2, 3]},
        ],
    )
    assert status == 400 and "rejected the input" in body["error"]


@pytest.mark.parametrize(
    "method,path,fragment",
    [
        ("GET", "/v2/models/nope", "unknown model 'nope'"),
        ("GET", "/v2/models/mlp/versions/9", "no version '9' (versions: 1, 2)"),
        ("GET", "/v2/models/nope/ready", "unknown model"),
        ("POST", "/v2/models/nope/infer", "unknown model"),
        ("POST", "/v2/models/mlp/versions/3/infer", "no version '3'"),
        ("GET", "/v3", "no route"),
        ("GET", "/v2/models/mlp/versions/1/stats", "no route"),
        ("GET", "/", "no route"),
        ("GET", "/v2/models//ready", "no route"),
    ],
)
def test_unknown_model_version_or_route_is_404(server, method, path, fragment):
    status, _, raw = request(server.port, method, path, b"{}" if method == "POST" else None)
    assert status == 404 and fragment in orjson.loads(raw)["error"]


@pytest.mark.parametrize(
    "method,path,allow",
    [
        ("POST", "/v2/health/live", "GET"),
        ("DELETE", "/v2/models/mlp", "GET"),
        ("PUT", "/metrics", "GET"),
        ("GET", "/v2/models/mlp/infer", "POST"),
        ("HEAD", "/v2/health/ready", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(server, method, path, allow):
    status, headers, raw = request(server.port, method, path)
    assert status == 405 and headers["allow"] == allow
    if method != "HEAD":
        assert "not allowed" in orjson.loads(raw)["error"]


def test_body_over_the_limit_is_413_and_the_server_stays_up(server):
    big = orjson.dumps({"inputs": [{**GOOD, "shape": [300, 64], "data": [0.5] * (300 * 64)}]})
    assert len(big) > MAX_BODY
    status, _, raw = request(server.port, "POST", "/v2/models/mlp/infer", big)
    assert status == 413 and "exceeds the limit" in orjson.loads(raw)["error"]
    # Chunked: no Content-Length, the limit applies while reading.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 16384
        try:
            for _ in range(8):
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
    assert get_json(server.port, "/v2/health/ready")[0] == 200


def test_expect_100_continue(server):
    body = orjson.dumps({"inputs": [GOOD]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert s.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 OK\r\n")
        s.sendall(
            b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 413 ")


def test_pipelined_requests_are_answered_in_order(server):
    body = orjson.dumps({"inputs": [GOOD], "id": "p1"})
    reqs = (
        b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"GET /v2/models/nope HTTP/1.1\r\nHost: x\r\n\r\n"
        + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(reqs)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    assert statuses == [b"200", b"404", b"200"]
    assert b'"id":"p1"' in data and data.endswith(b'{"live":true}')


def test_malformed_http_and_huge_headers(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GARBAGE \x00\x01 nonsense\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 400 ")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(10):
                s.sendall(b"X-Filler: " + b"a" * 16000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert s.recv(65536).startswith(b"HTTP/1.1 431 ")
    assert get_json(server.port, "/v2/health/live")[0] == 200


def test_http_1_0_closes_the_connection(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /v2/health/live HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close" in data


# --- observability ---------------------------------------------------------------------------


def _samples(port: int) -> dict:
    status, headers, raw = request(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(raw.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_latency_errors_and_model_state(server):
    before = _samples(server.port)
    key = ("edge_infer_requests_total", (("model", "mlp"), ("status", "200"), ("version", "1")))
    for _ in range(3):
        assert infer(server, "mlp", [GOOD], version="1")[0] == 200
    assert infer(server, "mlp", [{**GOOD, "shape": [2, 64]}], version="1")[0] == 400
    request(server.port, "GET", "/v2/models/nope")
    after = _samples(server.port)
    assert after[key] - before.get(key, 0) == 3
    bad = ("edge_infer_requests_total", (("model", "mlp"), ("status", "400"), ("version", "1")))
    assert after[bad] - before.get(bad, 0) == 1
    hist = ("edge_infer_request_duration_seconds_count", (("model", "mlp"), ("version", "1")))
    assert after[hist] - before.get(hist, 0) == 3
    errors_404 = ("edge_infer_errors_total", (("status", "404"),))
    assert after[errors_404] - before.get(errors_404, 0) == 1

    def state(model: str, version: str, name: str) -> float:
        return after[("edge_infer_model_state", (("model", model), ("state", name), ("version", version)))]

    assert state("mlp", "1", "READY") == 1 and state("mlp", "1", "FAILED") == 0
    assert state("tampered", "1", "FAILED") == 1 and state("tampered", "1", "READY") == 0
    assert any(name == "process_resident_memory_bytes" for name, _ in after)


def test_logs_are_json_lines_with_every_error(server):
    request(server.port, "GET", "/v2/models/log-probe")
    server.wait_for_lines(lambda line: line.get("path") == "/v2/models/log-probe")
    lines = server.log_lines()
    assert all("raw" not in line for line in lines), [line for line in lines if "raw" in line][:3]
    assert {"listening", "model version ready", "model version failed"} <= {line["msg"] for line in lines}
    [probe] = [line for line in lines if line.get("path") == "/v2/models/log-probe"]
    assert probe["level"] == "warning" and probe["status"] == 404 and "unknown model" in probe["error"]
    # Successful requests are not logged at the default level without sampling.
    assert not [line for line in lines if line.get("msg") == "request" and line.get("status") == 200]


# --- the OpenAPI document describes these responses ----------------------------------------

OPENAPI = yaml.safe_load((REPO / "inference" / "openapi.yaml").read_text())


@pytest.mark.parametrize(
    "method,template,path,body,status",
    [
        ("GET", "/v2/health/live", "/v2/health/live", None, 200),
        ("GET", "/v2/health/ready", "/v2/health/ready", None, 200),
        ("GET", "/v2", "/v2", None, 200),
        ("GET", "/v2/models/{model}", "/v2/models/mlp", None, 200),
        ("GET", "/v2/models/{model}", "/v2/models/nope", None, 404),
        ("GET", "/v2/models/{model}/versions/{version}", "/v2/models/tampered/versions/1", None, 200),
        ("GET", "/v2/models/{model}/versions/{version}", "/v2/models/echo/versions/1", None, 200),
        ("GET", "/v2/models/{model}/ready", "/v2/models/mlp/ready", None, 200),
        ("GET", "/v2/models/{model}/versions/{version}/ready", "/v2/models/corrupt/versions/1/ready", None, 503),
        ("GET", "/v2/models/{model}/versions/{version}/ready", "/v2/models/mlp/versions/5/ready", None, 404),
        ("POST", "/v2/models/{model}/infer", "/v2/models/mlp/infer", {"inputs": [GOOD], "id": "x"}, 200),
        (
            "POST",
            "/v2/models/{model}/infer",
            "/v2/models/echo/infer",
            {
                "inputs": [
                    {"name": f"in_{dt.lower()}", "shape": [len(v)], "datatype": dt, "data": v}
                    for dt, v in DATATYPES_SAMPLE.items()
                ]
            },
            200,
        ),
        ("POST", "/v2/models/{model}/infer", "/v2/models/mlp/infer", {"inputs": [{**GOOD, "shape": [2]}]}, 400),
        (
            "POST",
            "/v2/models/{model}/versions/{version}/infer",
            "/v2/models/flagged/versions/1/infer",
            {"inputs": [GOOD]},
            503,
        ),
        (
            "POST",
            "/v2/models/{model}/versions/{version}/infer",
            "/v2/models/mlp/versions/1/infer",
            {"inputs": [{**GOOD, "shape": [1000, 64], "data": [0.125] * 64000}]},
            413,
        ),
    ],
)
def test_responses_match_the_openapi_document(server, method, template, path, body, status):
    got, headers, raw = request(server.port, method, path, orjson.dumps(body) if body is not None else None)
    assert got == status
    response = OPENAPI["paths"][template][method.lower()]["responses"][str(status)]
    if "$ref" in response:
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    [(media_type, content)] = response["content"].items()
    assert headers["content-type"] == media_type
    jsonschema.Draft7Validator({**content["schema"], "components": OPENAPI["components"]}).validate(orjson.loads(raw))
