"""Canned answers of the monitoring core's HTTP API, shaped as Prometheus 2.42 gives them (the
integration test tests/integration/test_fleet_core_live.py compares these shapes with a real
core's answers), and a loopback HTTP server that serves them to :func:`fleet.core.fetch`."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fleet.core import AGE, ERRORS, P50, P99, QUERIES, RATE, RECORDS, UP

T = 1796647064.993  # the evaluation time every sample of an instant query carries
EXTERNAL = {"latency_class": "control"}

# site -> its latency class's budget (ms); "other" is a site of the core the view does not show.
BUDGETS = {"plant-a": 10.0, "plant-b": 10.0, "gw-1": 1000.0, "gw-2": 50.0, "idle": 50.0}


def sample(record: str | None, value: str, **labels: str) -> dict[str, Any]:
    """One element of an instant vector; an arithmetic result (the age query) has no __name__."""
    metric = {"__name__": record, **labels} if record else labels
    return {"metric": metric, "value": [T, value]}


def vector(*samples: dict[str, Any]) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}


def _rate(site: str, model: str, version: str, value: str, cls: str = "control") -> dict[str, Any]:
    return sample(RATE, value, latency_class=cls, model=model, site=site, version=version)


PM, QC = "predictive-maintenance", "quality-control"
# site, model, latency class, p50 and p99 in seconds (NaN: no request in the window)
QUANTILES = (
    ("plant-a", PM, "control", "0.0012", "0.0031"),
    ("plant-b", QC, "control", "0.002", "0.0045"),
    ("plant-b", PM, "control", "0.004", "0.0142"),
    ("gw-1", PM, "batch", "0.08", "0.2"),
    ("idle", PM, "video", "NaN", "NaN"),
    ("other", PM, "control", "0.001", "0.9"),
)


def _quantile(record: str, column: int) -> dict[str, Any]:
    return vector(
        *(sample(record, q[column], latency_class=cls, model=model, site=site) for site, model, cls, *q in QUANTILES)
    )


ANSWERS: dict[str, dict[str, Any]] = {
    P50: _quantile(P50, 0),
    P99: _quantile(P99, 1),
    RATE: vector(
        _rate("plant-a", PM, "2", "12"),
        _rate("plant-b", QC, "3", "0.5"),
        _rate("plant-b", PM, "1", "3"),
        _rate("plant-b", PM, "10", "0"),  # loaded, no request in the window
        _rate("plant-b", PM, "2", "1"),
        _rate("gw-1", PM, "1", "0.1", "batch"),
        _rate("idle", PM, "2", "0", "video"),
        _rate("other", PM, "2", "5"),
    ),
    # plant-a serves requests but never failed one: no 5xx series, no ratio.
    ERRORS: vector(
        sample(ERRORS, "0.02", latency_class="control", site="plant-b"),
        sample(ERRORS, "0", latency_class="batch", site="gw-1"),
        sample(ERRORS, "NaN", latency_class="video", site="idle"),
    ),
    UP: vector(
        *(
            sample(UP, up, hardware_class="x86-edge", latency_class=cls, site=site, wave="1")
            for site, cls, up in (("plant-a", "control", "2"), ("plant-b", "control", "1"), ("idle", "video", "1"))
        ),
        sample(UP, "1", hardware_class="gateway", latency_class="batch", site="gw-1", wave="2"),
    ),
    # gw-2 has no sample left in the lookback: absent.
    AGE: vector(
        sample(None, "6.249000072479248", site="plant-a"),
        sample(None, "12.5", site="plant-b"),
        sample(None, "412", site="gw-1"),
        sample(None, "3", site="idle"),
        sample(None, "1", site="other"),
    ),
}


def alert(name: str, state: str, value: str = "1e+00", **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": "warning", **labels},
        "annotations": {"summary": f"{labels.get('site', 'core')}: {name}"},
        "state": state,
        "activeAt": "2026-12-07T12:30:01.123456789Z",
        "value": value,
    }


ALERTS: dict[str, Any] = {
    "status": "success",
    "data": {
        "alerts": [
            alert(
                "EdgeInferenceLatencyOverBudget",
                "firing",
                "1.42e-02",
                site="plant-b",
                model="predictive-maintenance",
                **EXTERNAL,
            ),
            alert("EdgeInferenceErrorRatio", "pending", "2e-02", site="plant-b", **EXTERNAL),  # not yet firing
            alert("EdgeModelVersionUnexpected", "firing", site="plant-b", model="predictive-maintenance", version="1"),
            alert("EdgeModelVersionUnexpected", "firing", site="plant-b", model="predictive-maintenance", version="10"),
            alert("EdgeSiteSilent", "firing", site="gw-1"),
            alert("EdgeSiteSilent", "firing", site="other"),
            alert("PrometheusRuleFailures", "firing"),  # no site label
        ]
    },
}


def rules_answer(names: tuple[str, ...] = RECORDS) -> dict[str, Any]:
    """``/api/v1/rules?type=record`` with the edge-fleet-view group holding ``names``."""
    rules = [
        {
            "name": n,
            "query": "time() - max by (site) (timestamp(up))",
            "health": "ok",
            "evaluationTime": 4.2e-05,
            "lastEvaluation": "2026-12-07T12:37:43.664514966Z",
            "type": "recording",
        }
        for n in names
    ]
    group = {"name": "edge-fleet-view", "file": "/etc/prometheus/rules/edge-rules.yml", "rules": rules}
    timing = {"evaluationTime": 0.000932344, "lastEvaluation": "2026-12-07T12:37:43.663706475Z"}
    return {"status": "success", "data": {"groups": [{**group, "interval": 30, "limit": 0, **timing}]}}


def shape(obj: Any) -> Any:
    """The structure of a JSON value: keys, list element shape (first element), scalar types."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [shape(x) for x in obj[:1]]
    return type(obj).__name__


Route = Callable[[str, dict[str, str]], tuple[int, bytes]]


def canned(answers: dict[str, Any] = ANSWERS, alerts: Any = ALERTS, rules: Any = None) -> Route:
    """Answer like a core holding ``answers`` (keyed by recorded series)."""
    by_query = {q: r for r, q in QUERIES.items()}

    def route(path: str, params: dict[str, str]) -> tuple[int, bytes]:
        if path == "/api/v1/rules":
            return 200, json.dumps(rules if rules is not None else rules_answer()).encode()
        if path == "/api/v1/alerts":
            return 200, json.dumps(alerts).encode()
        if path == "/api/v1/query" and params.get("query") in by_query:
            return 200, json.dumps(answers[by_query[params["query"]]]).encode()
        return 404, b"404 page not found\n"

    return route


@contextlib.contextmanager
def core_server(route: Route) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server answering with ``route``: (its URL, the params of each request)."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            params = dict(urllib.parse.parse_qsl(url.query))
            seen.append({"path": url.path, **params})
            status, body = route(url.path, params)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
