"""Repository states, version choice, config files and settings, through the in-process API."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from inference.app import App
from inference.config import Settings, parse
from inference.errors import ConfigError
from inference.logs import RequestLog
from inference.metrics import Metrics
from inference.repository import (
    FAILED,
    LOADING,
    READY,
    ModelVersion,
    Repository,
    load_version,
    parse_config,
    version_key,
)
from inference.runtime import SessionTuning
from models.synthetic import mlp_model
from tests.unit.inference_fixtures import sha256, write_version


def app_for(repo: Repository) -> App:
    return App(repo, Metrics(), RequestLog(0.0))


def call(app: App, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    response = app.handle(method, path, orjson.dumps(body) if body is not None else b"")
    return response.status, orjson.loads(response.body)


def loaded(tmp_path: Path, versions: dict[str, bytes], model: str = "m", expected: dict | None = None) -> Repository:
    for version, data in versions.items():
        write_version(tmp_path, model, version, data)
    repo = Repository()
    repo.load_directory(tmp_path, expected or {})
    return repo


def test_numeric_versions_order_by_value_above_names():
    assert sorted(["10", "2", "beta", "1", "alpha"], key=version_key) == ["alpha", "beta", "1", "2", "10"]


def test_default_version_is_the_highest_ready_one(tmp_path):
    repo = loaded(tmp_path, {"1": mlp_model(0), "2": mlp_model(1), "10": b"broken", "beta": mlp_model(0)})
    assert repo.get("m", "10").state == FAILED
    assert repo.get("m", None).version == "2"
    assert repo.versions("m") == ["beta", "1", "2", "10"]
    status, meta = call(app_for(repo), "GET", "/v2/models/m")
    assert status == 200 and meta["version"] == "2" and meta["versions"] == ["beta", "1", "2", "10"]


def test_with_no_ready_version_the_default_is_the_highest_and_not_ready(tmp_path):
    repo = loaded(tmp_path, {"1": b"broken", "2": b"also broken"})
    app = app_for(repo)
    status, body = call(app, "GET", "/v2/models/m/ready")
    assert status == 503 and "'2' is FAILED" in body["error"]
    status, body = call(app, "GET", "/v2/health/ready")
    assert status == 503 and body["error"].startswith("no model version is ready: m/1: cannot load")


def test_states_while_loading(tmp_path):
    repo = Repository()
    app = app_for(repo)
    status, body = call(app, "GET", "/v2/models/m")
    assert status == 503 and "still being read" in body["error"]
    status, body = call(app, "GET", "/v2/health/ready")
    assert status == 503 and "repository still being read" in body["error"]
    repo.add(ModelVersion("m", "1", None))
    repo.discovered = True
    assert call(app, "GET", "/v2/health/ready") == (503, {"error": "loading models: 0 of 1 version(s) done"})
    assert call(app, "GET", "/v2/models/m/versions/1/ready") == (503, {"error": "model 'm' version '1' is LOADING"})
    assert call(app, "POST", "/v2/models/m/infer", {"inputs": []})[0] == 503
    status, meta = call(app, "GET", "/v2/models/m/versions/1")
    assert status == 200 and meta["state"] == LOADING and meta["inputs"] == []
    assert call(app, "GET", "/v2/models/other")[0] == 404
    assert call(app, "GET", "/v2/health/live") == (200, {"live": True})


def test_expected_digests_from_every_source_must_match(tmp_path):
    data = mlp_model(0)
    right, wrong = sha256(data), sha256(b"x")
    write_version(tmp_path, "m", "1", data, f'sha256: "{right.upper()}"\n')
    mv = ModelVersion("m", "1", None, {"--expect-sha256": wrong})
    load_version(mv, tmp_path / "m" / "1")
    assert mv.state == FAILED and mv.session is None
    assert f"hashes to {right}, expected {wrong} (--expect-sha256)" in mv.reason
    mv = ModelVersion("m", "1", None, {"--expect-sha256": right})
    load_version(mv, tmp_path / "m" / "1")
    assert mv.state == READY and mv.sha256 == right and mv.signature.input_map["features"].shape == (-1, 64)


def test_bad_config_file_fails_only_that_version(tmp_path):
    write_version(tmp_path, "m", "1", mlp_model(0), "threads: 4\n")
    write_version(tmp_path, "m", "2", mlp_model(0), "intra_op_threads: 2\ninter_op_threads: 1\n")
    repo = Repository()
    repo.load_directory(tmp_path, {})
    assert repo.get("m", "1").state == FAILED and "unknown key(s) threads" in repo.get("m", "1").reason
    assert repo.get("m", "2").state == READY


@pytest.mark.parametrize(
    "text,fragment",
    [
        ("sha256: 0000\n", "64 hex digits"),
        ("[1, 2]\n", "must be a mapping"),
        ("intra_op_threads: 0\n", "from 1 to 64"),
        ("inter_op_threads: two\n", "from 1 to 64"),
        ("a: [\n", "not valid YAML"),
    ],
)
def test_config_file_errors_name_the_file_and_key(text, fragment):
    with pytest.raises(ConfigError, match=fragment) as err:
        parse_config(text, "/models/m/1/config.yaml")
    assert str(err.value).startswith("/models/m/1/config.yaml")


def test_config_file_values():
    config = parse_config(f"sha256: {'AB' * 32}\nintra_op_threads: 2\n", "c.yaml")
    assert config.sha256 == "ab" * 32 and config.tuning == SessionTuning(2, 1)
    assert parse_config("", "c.yaml").sha256 is None


def test_unexpected_runtime_failure_is_a_500_without_details(tmp_path):
    repo = loaded(tmp_path, {"1": mlp_model(0)})

    class Exploding:
        def run(self, *_):
            raise MemoryError("secret internals")

    repo.get("m", "1").session = Exploding()
    status, body = call(
        app_for(repo),
        "POST",
        "/v2/models/m/infer",
        {"inputs": [{"name": "features", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
    )
    assert (status, body) == (500, {"error": "internal server error"})


def test_settings_from_flags_over_environment_over_defaults():
    assert parse([], {}) == Settings()
    env = {
        "EDGE_INFER_PORT": "9000",
        "EDGE_INFER_WORKERS": "2",
        "EDGE_INFER_MODEL_REPOSITORY": "/srv/models",
        "EDGE_INFER_EXPECT_SHA256": f"a:1={'a' * 64}, b:2={'B' * 64}",
    }
    settings = parse(["--port", "9100", "--expect-sha256", f"a:1={'c' * 64}"], env)
    assert settings.port == 9100 and settings.workers == 2 and settings.model_repository == Path("/srv/models")
    assert settings.expect_sha256 == {("a", "1"): "c" * 64, ("b", "2"): "b" * 64}
    with pytest.raises(ConfigError, match="EDGE_INFER_LOG_SAMPLE: '2': must be between 0 and 1"):
        parse([], {"EDGE_INFER_LOG_SAMPLE": "2"})


def test_kubernetes_defaults():
    settings = Settings()
    assert settings.port == 8080 and settings.model_repository == Path("/models")
    assert str(settings.cache_dir).startswith("/tmp/") and str(settings.metrics_dir).startswith("/tmp/")
