"""The S3 model registry: scripts/publish-model and fetch_verified against moto's S3 server."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.catalog import ModelError, fetch_verified, load_catalog

REPO = Path(__file__).resolve().parents[2]
PUBLISH = REPO / "scripts" / "publish-model"
BUCKET = "edge-models"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}

pytestmark = pytest.mark.s3


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """A fresh, empty registry bucket; credentials in the environment (the boto3 chain)."""
    import boto3

    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield client
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The models directory copied, so --update-catalog edits a private catalog."""
    shutil.copytree(REPO / "models", tmp_path / "models")
    return tmp_path


def publish(endpoint: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": endpoint}
    return subprocess.run(
        [str(PUBLISH), *args, "--bucket", BUCKET, "--catalog", str(root / "models" / "catalog.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_publish_then_fetch_verified(s3, s3_endpoint: str, repo_copy: Path, tmp_path: Path):
    entry = load_catalog(repo_copy / "models" / "catalog.yaml").entry("predictive-maintenance", "2")
    done = publish(s3_endpoint, repo_copy, "predictive-maintenance", "2", "--update-catalog")
    assert done.returncode == 0, done.stderr
    uri = f"s3://{BUCKET}/models/predictive-maintenance/2/model.onnx"
    assert done.stdout == f"{uri}  {entry.spec.sha256}\n"
    head = s3.head_object(Bucket=BUCKET, Key="models/predictive-maintenance/2/model.onnx")
    assert head["Metadata"] == {"sha256": entry.spec.sha256}

    updated = load_catalog(repo_copy / "models" / "catalog.yaml").entry("predictive-maintenance", "2")
    assert updated.spec.uri == uri and updated.spec.sha256 == entry.spec.sha256
    assert (
        load_catalog(repo_copy / "models" / "catalog.yaml")
        .entry("predictive-maintenance", "1")
        .spec.uri.startswith("models/")
    )

    got = fetch_verified(uri, entry.spec.sha256, tmp_path / "cache", s3_endpoint=s3_endpoint)
    assert got.read_bytes() == (repo_copy / "models/predictive-maintenance/2/model.onnx").read_bytes()

    again = publish(s3_endpoint, repo_copy, "predictive-maintenance", "2")
    assert again.returncode == 0 and again.stdout == done.stdout
    assert "already holds this content; nothing uploaded" in again.stderr


def test_tampered_object_is_refused(s3, s3_endpoint: str, repo_copy: Path, tmp_path: Path):
    entry = load_catalog(repo_copy / "models" / "catalog.yaml").entry("quality-control", "1")
    assert publish(s3_endpoint, repo_copy, "quality-control", "1").returncode == 0
    key = "models/quality-control/1/model.onnx"
    tampered = (repo_copy / "models/predictive-maintenance/1/model.onnx").read_bytes()
    s3.put_object(Bucket=BUCKET, Key=key, Body=tampered, Metadata={"sha256": entry.spec.sha256})

    uri = f"s3://{BUCKET}/{key}"
    with pytest.raises(ModelError) as err:
        fetch_verified(uri, entry.spec.sha256, tmp_path / "cache", s3_endpoint=s3_endpoint)
    (problem,) = err.value.problems
    assert (problem.file, problem.field) == (uri, "sha256")
    assert problem.message == f"content has sha256 {hashlib.sha256(tampered).hexdigest()}, expected {entry.spec.sha256}"
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []

    again = publish(s3_endpoint, repo_copy, "quality-control", "1")
    assert again.returncode == 1
    assert (
        f"{uri} has content with sha256 {hashlib.sha256(tampered).hexdigest()} "
        f"but its metadata records {entry.spec.sha256}" in again.stderr
    )
    assert "Traceback" not in again.stderr


def test_published_versions_are_immutable(s3, s3_endpoint: str, repo_copy: Path):
    key = "models/quality-control/1/model.onnx"
    other = b"another model under the same version"
    s3.put_object(Bucket=BUCKET, Key=key, Body=other, Metadata={"sha256": hashlib.sha256(other).hexdigest()})
    refused = publish(s3_endpoint, repo_copy, "quality-control", "1")
    assert refused.returncode == 1
    assert (
        f"already holds sha256 {hashlib.sha256(other).hexdigest()}" in refused.stderr
        and "versions are immutable" in refused.stderr
    )
    assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == other


def test_a_file_that_is_not_the_catalogs_is_not_published(s3, s3_endpoint: str, repo_copy: Path):
    (repo_copy / "models/quality-control/1/model.onnx").write_bytes(b"edited by hand")
    refused = publish(s3_endpoint, repo_copy, "quality-control", "1")
    assert refused.returncode == 2
    assert "models[1].versions.1.sha256: model 'quality-control' version '1': " in refused.stderr
    assert "(fix: run scripts/make-models" in refused.stderr
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0


def test_usage_errors_exit_2(s3_endpoint: str, repo_copy: Path):
    unknown = publish(s3_endpoint, repo_copy, "quality-control", "7")
    assert unknown.returncode == 2 and "model 'quality-control' has no version '7'" in unknown.stderr
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_MODEL_BUCKET"}
    no_bucket = subprocess.run(
        [str(PUBLISH), "quality-control", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert no_bucket.returncode == 2 and "no bucket: pass --bucket or set EDGEFLEET_MODEL_BUCKET" in no_bucket.stderr


def test_fetch_of_a_missing_object(s3, s3_endpoint: str, tmp_path: Path):
    uri = f"s3://{BUCKET}/models/nothing/1/model.onnx"
    with pytest.raises(ModelError, match=rf"^{uri}: uri: no such object \(fix: publish it with scripts/publish-model"):
        fetch_verified(uri, "a" * 64, tmp_path, s3_endpoint=s3_endpoint)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_registry_mode_trusts_the_catalog_not_the_objects_metadata(
    s3, s3_endpoint: str, repo_copy: Path, tmp_path: Path
):
    """The inference server's --registry mode: an object replaced together with its
    x-amz-meta-sha256 is refused, and so is a version the catalog gives no digest for."""
    import boto3

    from inference.registry import sync

    catalog = load_catalog(repo_copy / "models" / "catalog.yaml")
    for model, version in [("quality-control", "1"), ("predictive-maintenance", "1"), ("predictive-maintenance", "2")]:
        assert publish(s3_endpoint, repo_copy, model, version).returncode == 0
    # Whoever can write the bucket swaps the bytes and writes a matching digest beside them.
    forged = (repo_copy / "models/predictive-maintenance/1/model.onnx").read_bytes()
    s3.put_object(
        Bucket=BUCKET,
        Key="models/quality-control/1/model.onnx",
        Body=forged,
        Metadata={"sha256": hashlib.sha256(forged).hexdigest()},
    )
    expected = {
        (e.model, e.version): e.spec.sha256
        for e in catalog.entries()
        if (e.model, e.version) != ("predictive-maintenance", "2")
    }
    client = boto3.client("s3", endpoint_url=s3_endpoint)

    result = sync(f"s3://{BUCKET}/models", tmp_path / "cache", client, expected)

    assert set(result.expected) == {("quality-control", "1"), ("predictive-maintenance", "1")}
    qc = catalog.entry("quality-control", "1").spec.sha256
    assert result.failures[("quality-control", "1")].endswith(
        f"the download hashes to {hashlib.sha256(forged).hexdigest()}, the catalog expects {qc}"
    )
    assert (
        "the catalog gives no sha256 for predictive-maintenance:2 (fix: pass --expect-sha256"
        in result.failures[("predictive-maintenance", "2")]
    )
    cached = sorted(p.relative_to(tmp_path / "cache").as_posix() for p in (tmp_path / "cache").rglob("model.onnx"))
    assert cached == ["predictive-maintenance/1/model.onnx"]
