"""scripts/make-models: byte-identical output across runs, and the committed models are its output."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from components.catalog import load_catalog

REPO = Path(__file__).resolve().parents[2]


def _digests(models: Path) -> dict[str, str]:
    """Every file scripts/make-models writes (the catalog, models and metrics), by digest;
    models/synthetic.py (test and benchmark models built in memory) is not its output."""
    return {
        p.relative_to(models).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(models.rglob("*"))
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = []
    for seed in ("1", "2"):  # another hash seed: nothing may depend on set or dict-of-str order
        models = tmp_path_factory.mktemp(f"run{seed}") / "models"
        done = subprocess.run(
            [str(REPO / "scripts" / "make-models"), "--out", str(models)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        out.append(models)
    return out


def test_two_runs_are_byte_identical(builds: list[Path]):
    first, second = (_digests(m) for m in builds)
    assert first == second
    assert {
        "predictive-maintenance/1/model.onnx",
        "predictive-maintenance/2/model.onnx",
        "quality-control/1/model.onnx",
        "catalog.yaml",
    } <= first.keys()


def test_output_is_a_valid_small_catalog_with_metrics(builds: list[Path]):
    loaded = load_catalog(builds[0] / "catalog.yaml")
    for e in loaded.entries():
        artifact = loaded.root / e.spec.uri
        assert artifact.stat().st_size < 1_000_000
        metrics = json.loads((artifact.parent / "metrics.json").read_text())
        assert metrics["sha256"] == e.spec.sha256 == hashlib.sha256(artifact.read_bytes()).hexdigest()
        assert metrics["metrics"]["accuracy"] > 0.85
        assert metrics["metrics"]["agreement_with_sklearn"] >= 0.99
    pm = json.loads((builds[0] / "predictive-maintenance/1/metrics.json").read_text())["metrics"]
    assert pm["roc_auc"] > 0.9 and pm["precision"] > 0.8 and pm["recall"] > 0.75


def test_committed_models_are_the_scripts_output(builds: list[Path]):
    committed = json.loads((REPO / "models/quality-control/1/metrics.json").read_text())["libraries"]
    built = json.loads((builds[0] / "quality-control/1/metrics.json").read_text())["libraries"]
    if committed != built:
        pytest.skip(f"committed models were built with {committed}, this environment has {built}")
    assert _digests(REPO / "models") == _digests(builds[0])


def test_edits_to_the_catalog_survive_a_rebuild(builds: list[Path], tmp_path: Path):
    models = tmp_path / "models"
    shutil.copytree(builds[0], models)
    catalog = models / "catalog.yaml"
    text = catalog.read_text()
    published = "s3://edge-models/models/quality-control/1/model.onnx"
    text = text.replace("uri: models/quality-control/1/model.onnx", f"uri: {published}")
    text = text.replace("latency_class: video", "latency_class: batch")
    text = text.replace("  versions:", "  canary: {version: '2', waves: [0]}\n  versions:", 1)
    catalog.write_text(text)
    done = subprocess.run(
        [str(REPO / "scripts" / "make-models"), "--out", str(models)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    loaded = load_catalog(catalog)
    qc = loaded.entry("quality-control", "1").spec
    assert (qc.uri, qc.latency_class) == (published, "batch")
    assert loaded.model("predictive-maintenance").canary is not None
