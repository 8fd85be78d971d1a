"""The inventory's rollout section, per-site pause/maintenance/labels, and the libyaml loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import components.inventory.loader as inventory_module
from components.inventory import InventoryError, load_inventory

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
SITE = {
    "name": "s0",
    "topology": "single-node",
    "distribution": {"version": "v1.33.4+k3s1"},
    "hosts": [{"name": "h0", "address": "10.0.0.1", "ssh": {"host_key": KEY, "private_key": {"config": "k"}}}],
}


def load(tmp_path: Path, rollout: dict | None = None, **site) -> object:
    doc = {
        "fleet": "f",
        "environment": "prod",
        "sites": [{**SITE, **site}],
        **({"rollout": rollout} if rollout else {}),
    }
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(doc))
    return load_inventory(tmp_path / "f.yaml", check_files=False).inventory


def problems(tmp_path: Path, rollout: dict | None = None, **site) -> list[str]:
    with pytest.raises(InventoryError) as info:
        load(tmp_path, rollout, **site)
    return info.value.problems


def test_rollout_defaults_and_durations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    inv = load(tmp_path)
    r = inv.rollout
    assert (r.max_concurrency, r.max_failures, r.mandatory_waves, r.progress_deadline, r.preflight_timeout) == (
        "25%",
        0,
        [0],
        1800,
        10,
    )
    r = load(
        tmp_path,
        {
            "max_concurrency": 4,
            "max_failures": "10%",
            "min_success_time": "5m",
            "progress_deadline": "1h",
            "preflight_timeout": "30s",
            "mandatory_waves": [1, 0, 1],
        },
    ).rollout
    assert (
        r.max_concurrency,
        r.max_failures,
        r.min_success_time,
        r.progress_deadline,
        r.preflight_timeout,
        r.mandatory_waves,
    ) == (4, "10%", 300, 3600, 30, [0, 1])


@pytest.mark.parametrize(
    "rollout, field, phrase",
    [
        ({"max_concurrency": 0}, "rollout.max_concurrency", "is not a count of at least 1 or a percentage"),
        ({"max_concurrency": "150%"}, "rollout.max_concurrency", "is not a count of at least 1 or a percentage"),
        ({"max_failures": "a few"}, "rollout.max_failures", "is not a count of at least 0 or a percentage"),
        ({"preflight_timeout": 120}, "rollout.preflight_timeout", "is not a duration of at most 60 s"),
        ({"preflight_timeout": 0}, "rollout.preflight_timeout", "must be at least 1 s"),
        ({"progress_deadline": "soon"}, "rollout.progress_deadline", "is not a duration"),
        ({"mandatory_waves": [200]}, "rollout.mandatory_waves", "names a wave outside 0..100"),
        ({"strategy": "yolo"}, "rollout.strategy", "is not a known field"),
    ],
)
def test_bad_rollouts_are_refused_by_field_with_a_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rollout, field, phrase
):
    monkeypatch.chdir(tmp_path)
    (line,) = problems(tmp_path, rollout)
    assert line.startswith(f"f.yaml: {field}: ") and phrase in line and "(fix: " in line


def test_paused_maintenance_and_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    site = load(
        tmp_path, paused=True, maintenance=True, labels={"region": "eu-west", "edgefleet.io/tier": "gold"}
    ).sites[0]
    assert site.paused and site.maintenance and site.labels["region"] == "eu-west"
    (line,) = problems(tmp_path, labels={"bad key": "x"})
    assert line.startswith("f.yaml: sites[0].labels: ") and "is not a Kubernetes label key" in line
    (line,) = problems(tmp_path, labels={"ok": "$(reboot)"})
    assert "is not a Kubernetes label value" in line


def test_the_loader_parses_with_libyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert yaml.__with_libyaml__, "PyYAML was built without libyaml: inventories load several times slower"

    def pure_python(*a, **k):
        raise AssertionError("a valid inventory went through the pure-Python parser")

    monkeypatch.setattr(inventory_module.yaml, "safe_load", pure_python)
    assert load(tmp_path).sites[0].name == "s0"


def test_syntax_errors_keep_the_detailed_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("fleet: f\nsites:\n\t- name: x\n")
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path / "bad.yaml")
    assert info.value.problems == [
        "bad.yaml: line 3, column 1: invalid YAML: found character '\\t' that cannot start "
        "any token (fix: correct the YAML syntax)"
    ]
