"""The live view of ``fleet status``: the core's API answers (canned, as Prometheus 2.42 gives
them) -> one SiteLive per site; the live column and line in every rendering; an unreachable or
odd core named in every row, never a traceback."""

from __future__ import annotations

import copy
import json
import socket
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from components.inventory import MonitoringCore
from components.monitoring.rules import Thresholds, recording_group
from fleet.cli import Context, live_view
from fleet.core import (
    AGE,
    P99,
    QUERIES,
    RATE,
    RECORDS,
    SILENT_AFTER_S,
    CoreDataError,
    ModelLive,
    SiteLive,
    build_view,
    core_url,
    fetch,
    firing_alerts,
    missing_rules,
    unreachable,
    vector,
)
from fleet.errors import FleetError
from fleet.status import SiteStatus, live_cell, render_json, render_markdown, render_plain, render_table
from tests.unit.core_fixtures import ALERTS, ANSWERS, BUDGETS, canned, core_server, rules_answer, sample
from tests.unit.test_fleetcmd_status import row


def rounded(obj: Any) -> Any:
    """A view as plain data, floats to 6 digits (ms from seconds are not exact)."""
    if isinstance(obj, dict):
        return {k: rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [rounded(v) for v in obj]
    return round(obj, 6) if isinstance(obj, float) else obj


EXPECTED = {
    "plant-a": SiteLive(
        "plant-a",
        "online",
        budget_ms=10.0,
        last_sample_age_s=6.249000072479248,
        targets_up=2,
        models=(ModelLive("predictive-maintenance", 1.2, 3.1, 12.0, ("2",), False),),
        rps=12.0,
        error_ratio=0.0,  # requests, no 5xx series
    ),
    "plant-b": SiteLive(
        "plant-b",
        "online",
        budget_ms=10.0,
        last_sample_age_s=12.5,
        targets_up=1,
        models=(
            ModelLive("predictive-maintenance", 4.0, 14.2, 4.0, ("1", "2"), True),
            ModelLive("quality-control", 2.0, 4.5, 0.5, ("3",), False),
        ),
        rps=4.5,
        error_ratio=0.02,
        alerts=("EdgeInferenceLatencyOverBudget", "EdgeModelVersionUnexpected"),  # the pending one is not listed
    ),
    "gw-1": SiteLive(
        "gw-1",
        "silent",
        budget_ms=1000.0,
        last_sample_age_s=412.0,
        targets_up=1,
        models=(ModelLive("predictive-maintenance", 80.0, 200.0, 0.1, ("1",), False),),
        rps=0.1,
        error_ratio=0.0,
        alerts=("EdgeSiteSilent",),
    ),
    "gw-2": SiteLive("gw-2", "silent", budget_ms=50.0),  # nothing at the core
    "idle": SiteLive(
        "idle",
        "online",
        budget_ms=50.0,
        last_sample_age_s=3.0,
        targets_up=1,
        models=(ModelLive("predictive-maintenance", None, None, 0.0, (), False),),
        rps=0.0,
        error_ratio=None,  # no request: no ratio
    ),
}


def view(**kw: Any) -> dict[str, SiteLive]:
    return build_view(BUDGETS, ANSWERS, ALERTS, **kw)


def test_the_view_of_each_site_from_the_cores_answers():
    got = view()
    assert list(got) == list(BUDGETS), "one entry per site of the inventory, none for other sites"
    assert {k: rounded(asdict(v)) for k, v in got.items()} == {k: rounded(asdict(v)) for k, v in EXPECTED.items()}
    assert [s for s, v in got.items() if v.over_budget] == ["plant-b"]


def test_silent_is_the_age_against_the_threshold():
    assert SILENT_AFTER_S == 300, "the default is the EdgeSiteSilent alert's window (5m)"
    assert view()["gw-1"].state == "silent" and view(silent_after_s=412)["gw-1"].state == "online"
    assert (
        view(silent_after_s=6)["plant-a"].state == "silent" and view(silent_after_s=6.25)["plant-a"].state == "online"
    )
    assert view(silent_after_s=1e9)["gw-2"].state == "silent", "no sample at all is silent at any threshold"


def test_the_view_reads_the_series_the_core_records():
    records = {r["record"] for r in recording_group(Thresholds())["rules"]}
    assert set(RECORDS) <= records
    # The age query corrects the recorded age by the time since the rule's evaluation.
    assert QUERIES[AGE] == f"{AGE} + (time() - timestamp({AGE}))"
    assert missing_rules(rules_answer()) == []
    assert missing_rules(rules_answer(tuple(r for r in RECORDS if r != P99))) == [P99]


def test_served_versions_are_those_with_requests_in_the_window():
    answers = copy.deepcopy(ANSWERS)
    answers[RATE]["data"]["result"].append(
        sample(RATE, "0.2", latency_class="control", model="predictive-maintenance", site="plant-a", version="1")
    )
    answers[RATE]["data"]["result"].append(
        sample(RATE, "7", latency_class="control", model="predictive-maintenance", site="plant-a", version="10")
    )
    pm = build_view(BUDGETS, answers, ALERTS)["plant-a"].models[0]
    assert pm.versions == ("1", "2", "10") and pm.rps == pytest.approx(19.2)
    assert build_view(BUDGETS, ANSWERS, ALERTS)["plant-b"].models[0].versions == ("1", "2"), "v10 idle: not served"


def test_firing_alerts_by_site_and_name():
    assert firing_alerts(ALERTS) == {
        "plant-b": ("EdgeInferenceLatencyOverBudget", "EdgeModelVersionUnexpected"),
        "gw-1": ("EdgeSiteSilent",),
        "other": ("EdgeSiteSilent",),
    }
    assert firing_alerts({"status": "success", "data": {"alerts": []}}) == {}


def _bad(answer: Any) -> dict[str, Any]:
    return {**ANSWERS, P99: answer}


@pytest.mark.parametrize(
    ("answers", "alerts", "message"),
    [
        (_bad({"status": "error", "errorType": "bad_data", "error": "parse error"}), ALERTS, "'error': parse error"),
        (_bad({"status": "success", "data": {"resultType": "matrix", "result": []}}), ALERTS, "not an instant vector"),
        (
            _bad({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}),
            ALERTS,
            "[time, value]",
        ),
        (
            _bad({"status": "success", "data": {"resultType": "vector", "result": [sample(P99, "fast")]}}),
            ALERTS,
            "'fast'",
        ),
        (_bad([1, 2]), ALERTS, "no JSON object"),
        ({k: v for k, v in ANSWERS.items() if k != AGE}, ALERTS, f"{AGE} + (time()"),
        (ANSWERS, {"status": "success", "data": {"alerts": {}}}, "data.alerts is not a list"),
        (ANSWERS, {"status": "success", "data": {"alerts": ["x"]}}, "an alert without labels"),
        (ANSWERS, {"status": "success"}, "no data object"),
    ],
)
def test_answers_prometheus_would_not_give_are_named(answers, alerts, message):
    with pytest.raises(CoreDataError) as exc:
        build_view(BUDGETS, answers, alerts)
    assert message in str(exc.value)


def test_labels_the_view_does_not_need_are_ignored_and_odd_ones_skipped():
    assert vector(ANSWERS[P99], P99)[0] == (
        {"__name__": P99, "latency_class": "control", "model": "predictive-maintenance", "site": "plant-a"},
        pytest.approx(0.0031),
    )
    answers = {**ANSWERS, P99: {"status": "success", "data": {"resultType": "vector", "result": [sample(P99, "0.5")]}}}
    assert build_view(BUDGETS, answers, ALERTS)["plant-a"].models[0].p99_ms is None, "a sample without site is skipped"


# --- renderings ------------------------------------------------------------------------------------


def live_rows() -> list[SiteStatus]:
    v = view()
    return [row(name, live=v[name]) for name in BUDGETS]


def test_the_live_cell():
    cells = {name: live_cell(live) for name, live in view().items()}
    assert cells == {
        "plant-a": "p99 3.1/10ms v2 · 12.0 rps err 0.0%",
        "plant-b": (
            "predictive-maintenance p99 14.2/10ms OVER v1+v2; quality-control p99 4.5/10ms v3 · 4.5 rps err 2.0% · "
            "alerts: EdgeInferenceLatencyOverBudget, EdgeModelVersionUnexpected"
        ),
        "gw-1": "silent: last sample 412s ago · alerts: EdgeSiteSilent",
        "gw-2": "silent: no sample",
        "idle": "p99 -/50ms · 0.0 rps err -",
    }
    assert live_cell(SiteLive("x", "online", budget_ms=10.0)) == "no requests · - rps err -"
    assert live_cell(
        replace(EXPECTED["plant-a"], models=(ModelLive("predictive-maintenance", 0.2, 0.497, 1, (), False),))
    ).startswith("p99 0.5/10ms · ")


def test_a_silent_site_is_degraded_and_the_fleet_line_counts_live_health():
    rows = live_rows()
    assert [r.state for r in rows] == ["available", "available", "degraded", "degraded", "available"]
    line = "live: 3 online / 2 silent / 1 over budget / 3 alerts firing"
    plain = render_plain(rows).splitlines()
    assert plain[1] == line and len(plain) == 2 + len(rows)
    assert plain[2].endswith("  live=p99 3.1/10ms v2 · 12.0 rps err 0.0%")
    assert "state=degraded" in plain[4] and plain[4].endswith(
        "live=silent: last sample 412s ago · alerts: EdgeSiteSilent"
    )


def test_markdown_table_and_json_carry_the_live_column():
    rows = live_rows()
    md = render_markdown(rows).splitlines()
    assert md[4] == "live: 3 online / 2 silent / 1 over budget / 3 alerts firing"
    header = next(line for line in md if line.startswith("| site"))
    assert header.endswith("| drift | live |")
    assert "| silent: no sample |" in md[-2]
    console = Console(record=True, width=400)
    render_table(rows, console)
    text = console.export_text()
    assert "live: 3 online / 2 silent" in text and "predictive-maintenance p99 14.2/10ms OVER v1+v2" in text
    data = json.loads(render_json(rows))
    assert data["live"] == {
        "online": 3,
        "silent": 2,
        "unreachable": 0,
        "over_budget": 1,
        "alerts_firing": 3,
        "line": "live: 3 online / 2 silent / 1 over budget / 3 alerts firing",
    }
    b = data["sites"][1]["live"]
    assert (
        b["over_budget"] is True and b["models"][0]["versions"] == ["1", "2"] and b["alerts"][0].startswith("EdgeInf")
    )
    assert data["sites"][3]["live"]["last_sample_age_s"] is None and data["sites"][3]["state"] == "degraded"


def test_without_a_core_nothing_changes():
    rows = [row("ok"), row("gone", connectivity="offline")]
    assert "live" not in render_plain(rows) and "live" not in render_markdown(rows)
    data = json.loads(render_json(rows))
    assert "live" not in data and all("live" not in s for s in data["sites"])


# --- reading the core over HTTP ----------------------------------------------------------------------


def test_fetch_reads_every_query_at_one_time():
    with core_server(canned()) as (url, seen):
        got = fetch(url, BUDGETS)
    assert got == view()
    queries = [r for r in seen if r["path"] == "/api/v1/query"]
    assert sorted(r["query"] for r in queries) == sorted(QUERIES.values())
    assert len({r["time"] for r in queries}) == 1
    assert seen[0]["path"] == "/api/v1/rules" and seen[0]["type"] == "record"
    with core_server(canned()) as (url, _):
        assert fetch(url, BUDGETS, silent_after_s=1)["plant-a"].state == "silent"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_core_is_named_in_every_row():
    url = f"http://127.0.0.1:{closed_port()}"
    error = fetch(url, BUDGETS, timeout_s=2)
    assert isinstance(error, str)
    assert (
        error.startswith(f"core {url} unreachable: GET {url}/api/v1/rules?type=record: ")
        and "Connection refused" in error
    )
    assert "(fix: check --core" in error
    rows = [row(name, live=live) for name, live in unreachable(BUDGETS, error).items()]
    plain = render_plain(rows).splitlines()
    assert plain[1] == f"live: {error}"
    assert all(line.endswith("live=core unreachable") for line in plain[2:]) and len(plain) == 2 + len(BUDGETS)
    assert [r.state for r in rows] == ["available"] * len(BUDGETS), "an unreadable core changes no state"
    assert json.loads(render_json(rows))["sites"][0]["live"]["error"] == error
    v6 = unreachable(BUDGETS, "core http://[fd00::5]:9090 unreachable: GET ...: [Errno 113] No route to host")
    console = Console(record=True, width=1000)
    render_table([row(name, live=live) for name, live in v6.items()], console)
    assert (
        "live: core http://[fd00::5]:9090 unreachable: GET ...: [Errno 113] No route to host" in console.export_text()
    )


def test_a_core_that_answers_oddly_is_named():
    def error_400(path: str, params: dict[str, str]) -> tuple[int, bytes]:
        body = {"status": "error", "errorType": "bad_data", "error": "invalid parameter"}
        return (400, json.dumps(body).encode()) if path == "/api/v1/query" else canned()(path, params)

    with core_server(error_400) as (url, _):
        got = fetch(url, BUDGETS)
        assert isinstance(got, str) and got.startswith(f"core {url}: GET {url}/api/v1/query?query=")
        assert got.endswith("answered 400 Bad Request: invalid parameter")
    with core_server(lambda path, params: (200, b"<html>grafana</html>")) as (url, _):
        got = fetch(url, BUDGETS)
        assert isinstance(got, str) and "answered what the Prometheus API does not" in got and "not JSON" in got
    with core_server(canned(rules=rules_answer(RECORDS[:-1]))) as (url, _):
        assert fetch(url, BUDGETS) == (
            f"core {url} has no recording rule {AGE} (fix: load the rule file components/monitoring/core.py "
            "renders into the core, with the default window)"
        )
    with core_server(canned(alerts={"status": "success", "data": {}})) as (url, _):
        got = fetch(url, BUDGETS)
        assert isinstance(got, str) and got.endswith("/api/v1/alerts: data.alerts is not a list")


# --- where the core is --------------------------------------------------------------------------------


def test_the_core_url_from_the_inventory_or_the_option():
    assert core_url(None, None) is None
    assert core_url(None, MonitoringCore(address="10.0.9.5")) == "http://10.0.9.5:9090"
    assert core_url(None, MonitoringCore(address="fd00::5", port=443, scheme="https")) == "https://[fd00::5]:443"
    assert core_url("http://core.example:9090/", MonitoringCore(address="10.0.9.5")) == "http://core.example:9090"
    assert core_url("none", MonitoringCore(address="10.0.9.5")) is None
    for bad in ("10.0.9.5:9090", "ftp://core", "http://core:99999", "http://core:9090/?x=1", "http://"):
        with pytest.raises(FleetError, match=r"--core: .* is not the http\(s\) URL of the core"):
            core_url(bad, None)


def context(core: str | None, silent_after: float = SILENT_AFTER_S) -> Context:
    args = SimpleNamespace(silent_after=silent_after)
    return Context(Path("."), "dev", "p", None, {}, None, Path("."), args, {}, core, dict(BUDGETS))  # type: ignore[arg-type]


def test_status_reads_the_core_once_for_the_selected_sites():
    sites = [SimpleNamespace(name="plant-a"), SimpleNamespace(name="gw-2")]
    assert live_view(context(None), sites) == {}  # type: ignore[arg-type]
    with core_server(canned()) as (url, seen):
        got = live_view(context(url), sites)  # type: ignore[arg-type]
    assert got == {"plant-a": view()["plant-a"], "gw-2": view()["gw-2"]} and len(seen) == 2 + len(QUERIES)
    down = live_view(context(f"http://127.0.0.1:{closed_port()}"), sites)  # type: ignore[arg-type]
    assert [v.state for v in down.values()] == ["unreachable", "unreachable"] and "Connection refused" in down[
        "gw-2"
    ].error
    with pytest.raises(FleetError, match="--silent-after: 0"):
        live_view(context(url, silent_after=0), sites)  # type: ignore[arg-type]
