"""The core's rule file: ``promtool check rules`` accepts it and ``promtool test rules`` runs the
alerts over synthetic series (real Prometheus tooling: promtool from scripts/apt-packages.txt)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.contract import LATENCY_BUDGET_MS
from components.monitoring.rules import RulesError, SiteExpectation, Thresholds, render_rules

# Installed by scripts/bootstrap (scripts/apt-packages.txt): missing, the tests fail rather than skip.
PROMTOOL = shutil.which("promtool") or "promtool"

BUDGETS = {k: v / 1000 for k, v in LATENCY_BUDGET_MS.items()}
SITES = [
    SiteExpectation("plant-a", "control", {"predictive-maintenance": ["2"]}),
    SiteExpectation("plant-b", "batch", {"predictive-maintenance": ["2"]}),
    SiteExpectation("depot-c", "control", {"quality-control": ["1"]}),
]
EXTERNAL = {
    "plant-a": 'site="plant-a", wave="1", hardware_class="x86-edge", latency_class="control"',
    "plant-b": 'site="plant-b", wave="2", hardware_class="gateway", latency_class="batch"',
    "depot-c": 'site="depot-c", wave="1", hardware_class="x86-edge", latency_class="control"',
}


def write_rules(tmp_path: Path, **kw: Any) -> Path:
    path = tmp_path / "edge-rules.yml"
    path.write_text(yaml.safe_dump(render_rules(BUDGETS, SITES, **kw), sort_keys=False))
    return path


def promtool_test(tmp_path: Path, tests: list[dict[str, Any]], **kw: Any) -> subprocess.CompletedProcess[str]:
    rules = write_rules(tmp_path, **kw)
    spec = tmp_path / "edge-rules.test.yml"
    spec.write_text(
        yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": tests}, sort_keys=False)
    )
    return subprocess.run(
        [PROMTOOL, "test", "rules", str(spec)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )


def assert_passes(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr


def histogram(site: str, model: str, per_minute: dict[str, int], minutes: int = 20) -> list[dict[str, str]]:
    """Cumulative bucket series of one model at one site: ``per_minute`` observations fall in
    each bucket (le -> count) every minute."""
    out, total = [], 0
    for le in ("0.005", "0.01", "0.02", "0.05", "1", "+Inf"):
        total += per_minute.get(le, 0)
        out.append(
            {
                "series": f'edge_infer_request_duration_seconds_bucket{{{EXTERNAL[site]}, job="inference", '
                f'model="{model}", version="2", le="{le}"}}',
                "values": f"0+{total}x{minutes}",
            }
        )
    return out


def up(site: str, job: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f', {k}="{v}"' for k, v in labels.items())
    return {"series": f'up{{{EXTERNAL[site]}, job="{job}"{extra}}}', "values": values}


def alert(labels: dict[str, str], summary: str) -> dict[str, Any]:
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


def site_labels(site: str) -> dict[str, str]:
    return dict(kv.split("=") for kv in EXTERNAL[site].replace('"', "").split(", "))


def test_rule_file_passes_promtool_check(tmp_path: Path) -> None:
    result = subprocess.run([PROMTOOL, "check", "rules", str(write_rules(tmp_path))], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 20 rules found" in result.stdout


def test_latency_alert_fires_only_for_the_site_over_its_class_budget(tmp_path: Path) -> None:
    # 15-20 ms: over the control budget (10 ms) at plant-a, well within batch (1 s) at plant-b;
    # depot-c answers in under 5 ms.
    slow = {"0.02": 60}
    series = (
        histogram("plant-a", "predictive-maintenance", slow)
        + histogram("plant-b", "predictive-maintenance", slow)
        + histogram("depot-c", "quality-control", {"0.005": 60})
    )
    fired = {
        "site": "plant-a",
        "latency_class": "control",
        "model": "predictive-maintenance",
        "severity": "critical",
        "budget_seconds": "0.01",
    }
    assert_passes(
        promtool_test(
            tmp_path,
            [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        # Over budget from the first rate (1 m): pending until 6 m.
                        {"eval_time": "4m", "alertname": "EdgeInferenceLatencyOverBudget", "exp_alerts": []},
                        {
                            "eval_time": "12m",
                            "alertname": "EdgeInferenceLatencyOverBudget",
                            "exp_alerts": [
                                alert(fired, "plant-a: predictive-maintenance p99 over the control budget of 10 ms")
                            ],
                        },
                    ],
                    "promql_expr_test": [
                        {
                            "expr": 'site_model:edge_infer_latency_seconds:p99_rate5m{site="depot-c"}',
                            "eval_time": "10m",
                            "exp_samples": [
                                {
                                    "labels": 'site_model:edge_infer_latency_seconds:p99_rate5m{site="depot-c", '
                                    'latency_class="control", model="quality-control"}',
                                    "value": 0.00495,
                                }
                            ],
                        },
                    ],
                }
            ],
        )
    )


def test_site_silent_fires_after_the_window_and_names_the_site(tmp_path: Path) -> None:
    series = [
        up("plant-a", "inference", "1x5"),  # stops after 5 m
        up("plant-b", "inference", "1x30"),
        up("depot-c", "inference", "1x30"),
    ]
    silent = {"alertname": "EdgeSiteSilent", "site": "plant-a", "severity": "critical"}
    del silent["alertname"]
    assert_passes(
        promtool_test(
            tmp_path,
            [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        {"eval_time": "8m", "alertname": "EdgeSiteSilent", "exp_alerts": []},
                        {
                            "eval_time": "11m",
                            "alertname": "EdgeSiteSilent",
                            "exp_alerts": [alert(silent, "plant-a: no sample for 5m (link down or agent stopped)")],
                        },
                    ],
                }
            ],
        )
    )


def test_error_ratio_alert_over_threshold_only(tmp_path: Path) -> None:
    def requests(site: str, status: str, per_min: int) -> dict[str, str]:
        return {
            "series": f'edge_infer_requests_total{{{EXTERNAL[site]}, job="inference", model="m", version="2", '
            f'status="{status}"}}',
            "values": f"0+{per_min}x20",
        }

    series = [
        requests("plant-a", "200", 90),
        requests("plant-a", "503", 10),  # 10 %
        requests("plant-b", "200", 99),
        requests("plant-b", "500", 1),  # 1 %
        requests("depot-c", "200", 90),
        requests("depot-c", "413", 10),
    ]  # client errors only
    assert_passes(
        promtool_test(
            tmp_path,
            [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        {
                            "eval_time": "12m",
                            "alertname": "EdgeInferenceErrorRatio",
                            "exp_alerts": [
                                alert(
                                    {"site": "plant-a", "latency_class": "control", "severity": "warning"},
                                    "plant-a: inference requests fail over the threshold of 5%",
                                )
                            ],
                        },
                    ],
                }
            ],
        )
    )


def test_model_version_alerts_compare_with_the_catalog_choice(tmp_path: Path) -> None:
    def state(site: str, model: str, version: str, ready: str) -> dict[str, str]:
        return {
            "series": f'edge_infer_model_state{{{EXTERNAL[site]}, job="inference", model="{model}", '
            f'version="{version}", state="READY"}}',
            "values": ready,
        }

    series = [
        up("plant-a", "inference", "1x30"),
        up("plant-b", "inference", "1x30"),
        up("depot-c", "inference", "1x30"),
        state("plant-a", "predictive-maintenance", "1", "1x30"),  # the old version, not the catalog's 2
        state("plant-b", "predictive-maintenance", "2", "1x30"),  # as chosen
        state("depot-c", "quality-control", "1", "1x30"),
    ]  # as chosen
    common = {"model": "predictive-maintenance", "expected_version": "2", "severity": "warning"}
    assert_passes(
        promtool_test(
            tmp_path,
            [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        {"eval_time": "5m", "alertname": "EdgeModelVersionUnexpected", "exp_alerts": []},
                        {
                            "eval_time": "15m",
                            "alertname": "EdgeModelVersionUnexpected",
                            "exp_alerts": [
                                alert(
                                    {
                                        **site_labels("plant-a"),
                                        "job": "inference",
                                        "state": "READY",
                                        "version": "1",
                                        "site": "plant-a",
                                        **common,
                                    },
                                    "plant-a: predictive-maintenance version 1 is served; the catalog chose 2",
                                )
                            ],
                        },
                        {
                            "eval_time": "15m",
                            "alertname": "EdgeModelVersionMissing",
                            "exp_alerts": [
                                alert(
                                    {"site": "plant-a", **common},
                                    "plant-a: predictive-maintenance version 2 (the catalog's choice) is not ready",
                                )
                            ],
                        },
                    ],
                }
            ],
        )
    )


def test_node_unreachable_from_the_kubelet_scrape(tmp_path: Path) -> None:
    series = [up("plant-a", "kubelet", "1 1 0x20", node="n1"), up("plant-a", "kubelet", "1x22", node="n2")]
    assert_passes(
        promtool_test(
            tmp_path,
            [
                {
                    "interval": "1m",
                    "input_series": series,
                    "alert_rule_test": [
                        {"eval_time": "4m", "alertname": "EdgeNodeUnreachable", "exp_alerts": []},
                        {
                            "eval_time": "10m",
                            "alertname": "EdgeNodeUnreachable",
                            "exp_alerts": [
                                alert(
                                    {**site_labels("plant-a"), "job": "kubelet", "node": "n1", "severity": "critical"},
                                    "plant-a: kubelet of node n1 does not answer (node down or NotReady)",
                                )
                            ],
                        },
                    ],
                }
            ],
        )
    )


def test_thresholds_change_the_rules(tmp_path: Path) -> None:
    series = [up("plant-a", "inference", "1x2"), up("plant-b", "inference", "1x30"), up("depot-c", "inference", "1x30")]
    result = promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "5m",
                        "alertname": "EdgeSiteSilent",
                        "exp_alerts": [
                            alert(
                                {"site": "plant-a", "severity": "critical"},
                                "plant-a: no sample for 2m (link down or agent stopped)",
                            )
                        ],
                    },
                ],
            }
        ],
        thresholds=Thresholds(silent_for="2m"),
    )
    assert_passes(result)


def test_a_failing_expectation_is_reported_by_promtool(tmp_path: Path) -> None:
    """The harness itself can fail: an alert the rules do not raise is a promtool failure."""
    series = [
        up("plant-a", "inference", "1x30"),
        up("plant-b", "inference", "1x30"),
        up("depot-c", "inference", "1x30"),
    ]
    result = promtool_test(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "EdgeSiteSilent",
                        "exp_alerts": [alert({"site": "plant-a", "severity": "critical"}, "x")],
                    },
                ],
            }
        ],
    )
    assert result.returncode != 0


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Thresholds(silent_for="5 minutes"), "silent_for"),
        (lambda: Thresholds(error_ratio=5), "error_ratio"),
        (lambda: SiteExpectation('a"} or vector(1) #', "control"), "cannot be matched safely"),
        (lambda: SiteExpectation("a", "control", {"m": []}), "no version"),
        (lambda: render_rules(BUDGETS, [SITES[0], SITES[0]]), "listed twice"),
        (lambda: render_rules(BUDGETS, [SiteExpectation("a", "realtime")]), "has no budget"),
    ],
)
def test_bad_inputs_name_the_field_and_the_fix(make, message: str) -> None:
    with pytest.raises(RulesError, match=message) as err:
        make()
    assert "(fix: " in str(err.value)
