"""The model catalog's schema and messages, and canary rollout selection."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.catalog import (
    DEFAULT_CATALOG,
    Canary,
    ModelError,
    SiteRef,
    canary_bucket,
    load_catalog,
    select_versions,
    write_catalog,
)

REPO = Path(__file__).resolve().parents[2]


def test_repository_catalog_loads_with_every_built_version():
    loaded = load_catalog(DEFAULT_CATALOG)
    assert {(e.model, e.version) for e in loaded.entries()} == {
        ("predictive-maintenance", "1"),
        ("predictive-maintenance", "2"),
        ("quality-control", "1"),
    }
    for e in loaded.entries():
        assert e.spec.sha256 == hashlib.sha256((loaded.root / e.spec.uri).read_bytes()).hexdigest()
        assert (loaded.root / e.spec.uri).stat().st_size < 1_000_000
    qc = loaded.entry("quality-control", "1").spec
    assert [(t.name, t.datatype, t.shape) for t in qc.inputs] == [("pixels", "FP32", [-1, 64])]
    assert [(t.name, t.datatype, t.shape) for t in qc.outputs] == [
        ("label", "INT64", [-1]),
        ("probabilities", "FP32", [-1, 10]),
    ]


def test_unknown_model_or_version_names_what_exists():
    loaded = load_catalog(DEFAULT_CATALOG)
    with pytest.raises(ModelError, match=r"model 'predictive-maintenance' has no version '9' \(it has '1', '2'\)"):
        loaded.entry("predictive-maintenance", "9")
    with pytest.raises(
        ModelError, match=r"no model named 'nope' \(the catalog has 'predictive-maintenance', 'quality-control'\)"
    ):
        loaded.entry("nope", "1")


def _good() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_CATALOG.read_text())


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets a dotted path (list indices as numbers) in the raw catalog."""

    def apply(raw: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = raw
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        elif value is _DELETE:
            del node[last]
        else:
            node[last] = value

    return apply


_DELETE = object()


def _dup_model(raw: dict[str, Any]) -> None:
    raw["models"][1]["name"] = raw["models"][0]["name"]


def _dup_tensor(raw: dict[str, Any]) -> None:
    outs = raw["models"][0]["versions"]["1"]["outputs"]
    outs[1]["name"] = outs[0]["name"]


BAD = [
    (
        _set("models.1.versions.1.sha256", "xyz"),
        "models[1].versions.1.sha256",
        "'xyz' is not a sha256 hex digest",
        "write the 64 lowercase hex characters printed by `sha256sum model.onnx`",
    ),
    (
        _set("models.0.versions.1.inputs.0.datatype", "FLOAT32"),
        "models[0].versions.1.inputs[0].datatype",
        "'FLOAT32' is not allowed",
        "use one of 'BOOL', 'UINT8'",
    ),
    (
        _set("models.0.versions.2.inputs.0.shape", [0, 8]),
        "models[0].versions.2.inputs[0].shape",
        "[0, 8] has a dimension that is neither -1 nor positive",
        "-1 where it is dynamic",
    ),
    (
        _set("models.0.versions.1.latency_class", "realtime"),
        "models[0].versions.1.latency_class",
        "'realtime' is not allowed",
        "use one of 'control', 'video' or 'batch'",
    ),
    (
        _set("models.1.versions.1.uri", "/srv/models/qc.onnx"),
        "models[1].versions.1.uri",
        "'/srv/models/qc.onnx' is neither s3://bucket/key nor a path inside the repository",
        "models/NAME/VERSION/model.onnx",
    ),
    (
        _set("models.1.versions.1.uri", "s3://Bad_Bucket/qc.onnx"),
        "models[1].versions.1.uri",
        "'s3://Bad_Bucket/qc.onnx' is not an s3://bucket/key URI",
        "scripts/publish-model prints it",
    ),
    (_dup_model, "models[1].name", "model name 'predictive-maintenance' is already used by models[0]", "unique name"),
    (
        _set("models.0.canary", {"version": "3", "waves": [0]}),
        "models[0].canary.version",
        "'3' is not a version of 'predictive-maintenance' (it has '1', '2')",
        "add the version under `versions` first",
    ),
    (
        _set("models.0.canary", {"version": "2", "waves": [0], "percent": 10}),
        "models[0].canary",
        "exactly one of 'waves' or 'percent' must be set",
        "canary: {version: '2', percent: 10}",
    ),
    (
        _set("models.0.canary", {"version": "2", "percent": 150}),
        "models[0].canary.percent",
        "150: Input should be less than or equal to 100",
        "correct the value",
    ),
    (_set("models.0.description", _DELETE), "models[0].description", "is required", "add this field"),
    (
        _set("models.0.versions.1.checksum", "abc"),
        "models[0].versions.1.checksum",
        "is not a known field",
        "check the spelling",
    ),
    (
        _set("models.1.name", "Quality_Control"),
        "models[1].name",
        "'Quality_Control' is not a valid model name",
        "lowercase letters",
    ),
    # The whole value must match, not a valid beginning of it.
    (
        _set("models.1.name", "quality_control"),
        "models[1].name",
        "'quality_control' is not a valid model name",
        "lowercase",
    ),
    (
        _set("models.1.versions.1.sha256", "ab" * 32 + "zz"),
        "models[1].versions.1.sha256",
        f"'{'ab' * 30}'... is not a sha256 hex digest",
        "`sha256sum model.onnx`",
    ),
    (
        _set("models.1.versions.1.uri", "s3://models/"),
        "models[1].versions.1.uri",
        "'s3://models/' is not an s3://bucket/key URI",
        "scripts/publish-model prints it",
    ),
    (
        _set("models.1.name", "monitoring"),
        "models[1].name",
        "'monitoring' names a namespace the fleet does not own",
        "rename the model",
    ),
    (
        _set("models.1.name", "kube-system"),
        "models[1].name",
        "'kube-system' names a namespace the fleet does not own",
        "rename the model",
    ),
    (
        _set("models.1.name", "default"),
        "models[1].name",
        "'default' names a namespace the fleet does not own",
        "rename the model",
    ),
    (
        _set("models.1.versions.1.resources", {"cpu": "lots", "memory": "1Gi"}),
        "models[1].versions.1.resources.cpu",
        "'lots' is not a CPU quantity",
        "'250m'",
    ),
    (
        _dup_tensor,
        "models[0].versions.1.outputs[1].name",
        "tensor name 'label' is already used by outputs[0]",
        "unique",
    ),
    (
        _set("models.1.versions", {}),
        "models[1].versions",
        "Dictionary should have at least 1 item",
        "correct the value",
    ),
]


@pytest.mark.parametrize("mutate,field,message,fix", BAD, ids=[b[1] + ":" + b[2][:20] for b in BAD])
def test_bad_catalog_names_file_field_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mutate, field, message, fix
):
    monkeypatch.chdir(tmp_path)
    raw = _good()
    mutate(raw)
    write_catalog(tmp_path / "models" / "catalog.yaml", raw)
    with pytest.raises(ModelError) as err:
        load_catalog("models/catalog.yaml", check_files=False)
    lines = str(err.value).splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"models/catalog.yaml: {field}: {message}"), line
    assert "(fix: " in line and fix in line.split("(fix: ", 1)[1], line
    problem = err.value.problems[0]
    assert (problem.file, problem.field) == ("models/catalog.yaml", field)


def test_every_problem_is_reported_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    raw = _good()
    raw["models"][1]["versions"]["1"]["sha256"] = "xyz"
    raw["models"][0]["versions"]["2"]["latency_class"] = "realtime"
    raw["models"][0]["versions"]["1"]["inputs"][0]["datatype"] = "FLOAT32"
    write_catalog(tmp_path / "models" / "catalog.yaml", raw)
    with pytest.raises(ModelError) as err:
        load_catalog("models/catalog.yaml", check_files=False)
    assert sorted(p.field for p in err.value.problems) == [
        "models[0].versions.1.inputs[0].datatype",
        "models[0].versions.2.latency_class",
        "models[1].versions.1.sha256",
    ]
    assert "models/catalog.yaml: models[1].versions.1.sha256: 'xyz' is not a sha256 hex digest (fix: " in str(err.value)


def test_missing_artifact_and_invalid_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    write_catalog(tmp_path / "models" / "catalog.yaml", _good())
    with pytest.raises(ModelError) as err:
        load_catalog("models/catalog.yaml")
    assert len(err.value.problems) == 3
    assert str(err.value.problems[0]).startswith(
        "models/catalog.yaml: models[0].versions.1.uri: 'models/predictive-maintenance/1/model.onnx' does not exist"
    )
    (tmp_path / "models" / "catalog.yaml").write_text("models:\n  - name: [unclosed\n")
    with pytest.raises(ModelError, match=r"^models/catalog.yaml: line 3, column 1: invalid YAML"):
        load_catalog("models/catalog.yaml")


def test_integer_version_keys_are_version_names(tmp_path: Path):
    text = DEFAULT_CATALOG.read_text().replace("'1':", "1:").replace("'2':", "2:")
    path = tmp_path / "models" / "catalog.yaml"
    path.parent.mkdir()
    path.write_text(text.replace("versions:", "canary: {version: 2, percent: 10}\n  versions:", 1))
    loaded = load_catalog(path, check_files=False)
    assert loaded.model("predictive-maintenance").canary == Canary(version="2", percent=10)
    assert (
        loaded.entry("predictive-maintenance", "2").spec.sha256
        == load_catalog(DEFAULT_CATALOG).entry("predictive-maintenance", "2").spec.sha256
    )


# --- canary rollout ---------------------------------------------------------------------------

SITES = [SiteRef(f"plant-{c}", wave=i % 3) for i, c in enumerate("abcdefghij")] + [
    SiteRef(f"store-{i:02d}", wave=1) for i in range(1, 11)
]
PINS = {s.name: {"predictive-maintenance": "1", "quality-control": "1"} for s in SITES}


def test_canary_by_wave_goes_to_wave_sites_only():
    sites = [
        SiteRef("plant-a", 0),
        SiteRef("plant-b", 1),
        SiteRef("plant-c", 0),
        SiteRef("plant-d", 2),
        SiteRef("store-01", 0),
    ]
    pins = {
        "plant-a": {"predictive-maintenance": "1"},
        "plant-b": {"predictive-maintenance": "1"},
        "plant-c": {"predictive-maintenance": "1"},
        "plant-d": {"predictive-maintenance": "1"},
        "store-01": {"quality-control": "1"},
    }
    assert select_versions("predictive-maintenance", sites, pins, Canary(version="2", waves=[0])) == {
        "plant-a": "2",
        "plant-b": "1",
        "plant-c": "2",
        "plant-d": "1",
    }
    assert select_versions("predictive-maintenance", sites, pins, Canary(version="2", waves=[0, 1])) == {
        "plant-a": "2",
        "plant-b": "2",
        "plant-c": "2",
        "plant-d": "1",
    }
    assert select_versions("predictive-maintenance", sites, pins, None) == {
        "plant-a": "1",
        "plant-b": "1",
        "plant-c": "1",
        "plant-d": "1",
    }
    assert select_versions("quality-control", sites, pins, Canary(version="2", waves=[0])) == {"store-01": "2"}


@pytest.mark.parametrize(
    "percent,expected",
    [
        (0, []),
        (10, ["plant-a", "plant-b", "store-02"]),
        (25, ["plant-a", "plant-b", "store-02", "store-03", "store-06", "store-08"]),
        (
            50,
            [
                "plant-a",
                "plant-b",
                "plant-c",
                "plant-e",
                "plant-g",
                "plant-h",
                "plant-i",
                "plant-j",
                "store-02",
                "store-03",
                "store-06",
                "store-08",
            ],
        ),
        (100, [s.name for s in SITES]),
    ],
)
def test_canary_by_percent_selects_exact_stable_subset(percent, expected):
    chosen = select_versions("predictive-maintenance", SITES, PINS, Canary(version="2", percent=percent))
    assert sorted(n for n, v in chosen.items() if v == "2") == expected
    assert all(v == "1" for n, v in chosen.items() if n not in expected)
    assert len(chosen) == len(SITES)


def test_canary_bucket_is_the_documented_hash():
    for s in SITES:
        digest = hashlib.sha256(s.name.encode("utf-8")).digest()
        assert canary_bucket(s.name) == int.from_bytes(digest[:8], "big") % 10_000


def test_raising_percent_only_adds_sites():
    previous: set[str] = set()
    for percent in range(0, 101, 5):
        chosen = {
            n
            for n, v in select_versions("quality-control", SITES, PINS, Canary(version="2", percent=percent)).items()
            if v == "2"
        }
        assert previous <= chosen
        previous = chosen


def test_percent_selection_is_the_same_in_another_process():
    code = (
        "from components.catalog import *; import json; "
        f"sites=[SiteRef(n) for n in {[s.name for s in SITES]!r}]; "
        "print(json.dumps(select_versions('m', sites, {n.name: {'m': '1'} for n in sites}, "
        "Canary(version='2', percent=37.5))))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1
    here = select_versions(
        "m", [SiteRef(s.name) for s in SITES], {s.name: {"m": "1"} for s in SITES}, Canary(version="2", percent=37.5)
    )
    assert yaml.safe_load(outputs.pop()) == here


def test_canary_needs_exactly_one_selector():
    with pytest.raises(ValueError, match="exactly one of 'waves' or 'percent'"):
        Canary(version="2")
