"""Models from an S3 registry (moto's S3 server on loopback), verified by sha256 before loading."""

from __future__ import annotations

import boto3
import pytest
from moto.server import ThreadedMotoServer

from inference.errors import ConfigError
from inference.registry import parse_registry, sync
from models.synthetic import mlp_model
from tests.unit.inference_fixtures import (
    free_port,
    get_json,
    post_json,
    run_server,
    sha256,
    text_model,
    write_version,
)

pytestmark = pytest.mark.s3

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
BUCKET = "models"


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    s3 = client(url)
    s3.create_bucket(Bucket=BUCKET)

    def put(key: str, data: bytes, digest: str | None) -> None:
        s3.put_object(Bucket=BUCKET, Key=key, Body=data, Metadata={"sha256": digest} if digest else {})

    put("fleet/mlp/1/model.onnx", mlp_model(0), sha256(mlp_model(0)))
    put("fleet/mlp/2/model.onnx", mlp_model(1), sha256(mlp_model(1)))
    put("fleet/mlp/2/config.yaml", b"intra_op_threads: 1\n", None)
    put("fleet/text/1/model.onnx", text_model(), sha256(text_model()))
    # Tampered: the object's bytes are not the ones its metadata names.
    put("fleet/tampered/1/model.onnx", mlp_model(2), sha256(mlp_model(0)))
    put("fleet/unsigned/1/model.onnx", mlp_model(0), None)
    put("other/ignored/1/model.onnx", mlp_model(0), sha256(mlp_model(0)))
    put("fleet/README.md", b"not a model", None)
    yield url
    server.stop()


# What the catalog declares: the registry's own metadata is never what a download is checked against.
CATALOG = {
    ("mlp", "1"): sha256(mlp_model(0)),
    ("mlp", "2"): sha256(mlp_model(1)),
    ("text", "1"): sha256(text_model()),
    ("tampered", "1"): sha256(mlp_model(0)),
}


def client(url: str):
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )


def test_registry_uri_is_checked():
    assert parse_registry("s3://models/fleet/") == ("models", "fleet/")
    assert parse_registry("s3://models") == ("models", "")
    with pytest.raises(ConfigError, match="not an s3://bucket/prefix"):
        parse_registry("https://models/fleet")


def test_sync_caches_verified_models_and_refuses_tampered_ones(endpoint, tmp_path):
    result = sync("s3://models/fleet", tmp_path, client(endpoint), CATALOG)
    assert set(result.expected) == {("mlp", "1"), ("mlp", "2"), ("text", "1"), ("tampered", "1")}
    assert result.expected[("mlp", "1")] == {"--expect-sha256": sha256(mlp_model(0))}
    assert (tmp_path / "mlp" / "1" / "model.onnx").read_bytes() == mlp_model(0)
    assert (tmp_path / "mlp" / "2" / "config.yaml").read_text() == "intra_op_threads: 1\n"
    assert set(result.failures) == {("tampered", "1"), ("unsigned", "1")}
    assert (
        f"hashes to {sha256(mlp_model(2))}, the catalog expects {sha256(mlp_model(0))}"
        in result.failures[("tampered", "1")]
    )
    assert "the catalog gives no sha256 for unsigned:1" in result.failures[("unsigned", "1")]
    assert not (tmp_path / "tampered" / "1" / "model.onnx").exists()
    assert not (tmp_path / "unsigned" / "1" / "model.onnx").exists()
    assert not (tmp_path / "ignored").exists()


def test_sync_keeps_a_good_cache_and_repairs_a_bad_one(endpoint, tmp_path):
    sync("s3://models/fleet", tmp_path, client(endpoint), CATALOG)
    good, bad = tmp_path / "mlp" / "1" / "model.onnx", tmp_path / "mlp" / "2" / "model.onnx"
    good_inode = good.stat().st_ino
    bad.write_bytes(b"corrupted on disk")
    sync("s3://models/fleet", tmp_path, client(endpoint), CATALOG)
    assert good.stat().st_ino == good_inode  # not downloaded again
    assert bad.read_bytes() == mlp_model(1)


def test_server_loads_from_the_registry_and_refuses_the_tampered_object(endpoint, tmp_path):
    # Left in the cache by an earlier run, no longer in the registry: not served.
    write_version(tmp_path / "cache", "retired", "1", mlp_model(0))
    args = [
        "--registry",
        "s3://models/fleet",
        "--s3-endpoint",
        endpoint,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--model-repository",
        str(tmp_path / "unused"),
        "--expect-sha256",
        f"text:1={sha256(b'not the text model')}",
        *(f"--expect-sha256={m}:{v}={d}" for (m, v), d in CATALOG.items() if m != "text"),
    ]
    with run_server(args, tmp_path / "server.log", env=CREDENTIALS) as srv:
        status, meta = get_json(srv.port, "/v2/models/mlp")
        assert status == 200 and meta["version"] == "2" and meta["sha256"] == sha256(mlp_model(1))
        status, body = post_json(
            srv.port,
            "/v2/models/mlp/versions/1/infer",
            {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]},
        )
        assert status == 200 and body["outputs"][0]["shape"] == [1, 1]
        for model, fragment in [
            ("tampered", "refused s3://models/fleet/tampered/1/model.onnx: the download hashes"),
            ("unsigned", "the catalog gives no sha256 for unsigned:1"),
            ("text", f"the catalog expects {sha256(b'not the text model')}"),
        ]:
            status, meta = get_json(srv.port, f"/v2/models/{model}/versions/1")
            assert status == 200 and meta["state"] == "FAILED" and fragment in meta["reason"], meta
            assert get_json(srv.port, f"/v2/models/{model}/versions/1/ready")[0] == 503
        assert get_json(srv.port, "/v2/models/ignored")[0] == 404
        assert get_json(srv.port, "/v2/models/retired")[0] == 404
        assert get_json(srv.port, "/v2/health/ready")[0] == 200


def test_unreachable_registry_stops_the_server(tmp_path):
    args = [
        "--registry",
        "s3://models/fleet",
        "--s3-endpoint",
        f"http://127.0.0.1:{free_port()}",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    with run_server(args, tmp_path / "server.log", env=CREDENTIALS, wait_for=None) as srv:
        srv.proc.wait(30)
        assert srv.proc.returncode == 1
        assert any(line.get("msg") == "cannot read the model registry" for line in srv.log_lines())
