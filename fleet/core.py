"""Live health per site, read from the monitoring core's HTTP API (Prometheus 2.42).

The core holds what every site's agent remote-writes and evaluates the recording rules of
``components/monitoring/rules.py``; this module reads those recorded series with instant queries
(``/api/v1/query``) and the firing alerts (``/api/v1/alerts``) and turns them into one
:class:`SiteLive` per site. Everything but :func:`fetch` is a pure function of the API's JSON.

Per site:

- ``state``: ``online`` when the site's newest sample at the core is at most ``silent_after_s``
  old; ``silent`` when it is older, or when the core holds no sample of the site at all (the
  recorded age disappears once no ``up`` sample is left in the 5 min lookback); ``unreachable``
  when the core could not be read (``error`` says why). The default threshold is the
  ``EdgeSiteSilent`` alert's window (``Thresholds.silent_for``, 5 min). The recorded
  ``site:last_sample_age_seconds`` is the age at the rule's last evaluation; the query adds the
  time since that evaluation, so the age is the age at the query's time.
- per model: p50 and p99 in ms over the rules' rate window, against the site's latency-class
  budget (``over_budget``: p99 above it; the alert fires only after ``latency_for``); the request
  rate; and the versions served: those whose request rate in the window is above 0. A version
  that is loaded but got no request in the window is not listed (it has a counter series at
  rate 0): the list says what answered requests, and the ``EdgeModelVersion*`` alerts watch what
  is loaded. p50/p99 are None without requests in the window (the quantile of no request is NaN).
- ``rps``: requests per second of all models; ``error_ratio``: 5xx responses over all. The
  server creates a 5xx series at its first 5xx response, so a site that serves requests but has
  no recorded ratio has failed none: its ratio is 0. Without requests the ratio is None.
- ``targets_up``: the site's scrape targets that answered (``site:up:sum``).
- ``alerts``: names of the alerts firing with the site's ``site`` label (pending ones are not
  listed: their ``for`` has not passed).
"""

from __future__ import annotations

import http.client
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.inventory import MonitoringCore
from components.monitoring.core import duration_seconds
from components.monitoring.rules import Thresholds
from fleet.errors import FleetError

WINDOW = Thresholds().window
SILENT_AFTER_S = float(duration_seconds(Thresholds().silent_for))
TIMEOUT_S = 3.0  # per GET

P50 = f"site_model:edge_infer_latency_seconds:p50_rate{WINDOW}"
P99 = f"site_model:edge_infer_latency_seconds:p99_rate{WINDOW}"
RATE = f"site_model_version:edge_infer_requests:rate{WINDOW}"
ERRORS = f"site:edge_infer_error_ratio:rate{WINDOW}"
UP = "site:up:sum"
AGE = "site:last_sample_age_seconds"
RECORDS = (P50, P99, RATE, ERRORS, UP, AGE)
# The PromQL of each recorded series the view reads (keys of the answers build_view takes).
QUERIES = {**{r: r for r in RECORDS}, AGE: f"{AGE} + (time() - timestamp({AGE}))"}
FIX_URL = "fix: check --core or the inventory's monitoring.core, and that the core listens there"


class CoreDataError(ValueError):
    """An answer that is not shaped as the Prometheus HTTP API's; the message names the query."""


@dataclass(frozen=True)
class ModelLive:
    model: str
    p50_ms: float | None
    p99_ms: float | None
    rps: float
    versions: tuple[str, ...]  # served: request rate > 0 in the window
    over_budget: bool


@dataclass(frozen=True)
class SiteLive:
    site: str
    state: str  # online | silent | unreachable
    budget_ms: float | None = None
    last_sample_age_s: float | None = None
    targets_up: int | None = None
    models: tuple[ModelLive, ...] = ()
    rps: float | None = None
    error_ratio: float | None = None
    alerts: tuple[str, ...] = ()
    error: str = ""  # why the core could not be read

    @property
    def over_budget(self) -> bool:
        return any(m.over_budget for m in self.models)


Sample = tuple[dict[str, str], float | None]


def _answer_data(answer: Any, what: str) -> dict[str, Any]:
    """The ``data`` object of a successful answer."""
    if not isinstance(answer, dict):
        raise CoreDataError(f"{what}: no JSON object in the answer")
    if answer.get("status") != "success":
        raise CoreDataError(f"{what}: the core answered {answer.get('status')!r}: {answer.get('error') or '-'}")
    data = answer.get("data")
    if not isinstance(data, dict):
        raise CoreDataError(f"{what}: the answer has no data object")
    return data


def vector(answer: Any, query: str) -> list[Sample]:
    """The samples of an instant-vector answer: (labels, value; None for NaN and infinities)."""
    data = _answer_data(answer, query)
    result = data.get("result")
    if data.get("resultType") != "vector" or not isinstance(result, list):
        raise CoreDataError(f"{query}: not an instant vector (resultType {data.get('resultType')!r})")
    out: list[Sample] = []
    for item in result:
        metric, value = (item.get("metric"), item.get("value")) if isinstance(item, dict) else (None, None)
        if not isinstance(metric, dict) or not isinstance(value, list) or len(value) != 2:
            raise CoreDataError(f"{query}: a sample is not {{metric, value: [time, value]}}: {str(item)[:80]}")
        try:
            v = float(value[1])
        except (TypeError, ValueError):
            raise CoreDataError(f"{query}: value {value[1]!r} is not a number") from None
        out.append(({str(k): str(x) for k, x in metric.items()}, v if math.isfinite(v) else None))
    return out


def firing_alerts(answer: Any) -> dict[str, tuple[str, ...]]:
    """Site -> names of its firing alerts (an ``/api/v1/alerts`` answer)."""
    items = _answer_data(answer, "/api/v1/alerts").get("alerts")
    if not isinstance(items, list):
        raise CoreDataError("/api/v1/alerts: data.alerts is not a list")
    out: dict[str, set[str]] = {}
    for a in items:
        labels = a.get("labels") if isinstance(a, dict) else None
        if not isinstance(labels, dict):
            raise CoreDataError(f"/api/v1/alerts: an alert without labels: {str(a)[:80]}")
        if a.get("state") == "firing" and labels.get("site") and labels.get("alertname"):
            out.setdefault(str(labels["site"]), set()).add(str(labels["alertname"]))
    return {site: tuple(sorted(names)) for site, names in out.items()}


def missing_rules(answer: Any) -> list[str]:
    """The recorded series the view reads that the core has no rule for (``/api/v1/rules``)."""
    groups = _answer_data(answer, "/api/v1/rules").get("groups")
    if not isinstance(groups, list):
        raise CoreDataError("/api/v1/rules: data.groups is not a list")
    names = {r.get("name") for g in groups if isinstance(g, dict) for r in g.get("rules") or [] if isinstance(r, dict)}
    return [r for r in RECORDS if r not in names]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _version_key(v: str) -> tuple[int, str]:
    return len(v), v  # "2" before "10"


def _models(site: dict[str, list[Sample]], budget_ms: float) -> tuple[ModelLive, ...]:
    p50 = {m["model"]: v for m, v in site.get(P50, []) if "model" in m}
    p99 = {m["model"]: v for m, v in site.get(P99, []) if "model" in m}
    rates: dict[str, dict[str, float]] = {}
    for m, v in site.get(RATE, []):
        if "model" in m and "version" in m:
            rates.setdefault(m["model"], {})[m["version"]] = v or 0.0
    models = []
    for model in sorted({*p50, *p99, *rates}):
        p99_ms = _ms(p99.get(model))
        by_version = rates.get(model, {})
        models.append(
            ModelLive(
                model=model,
                p50_ms=_ms(p50.get(model)),
                p99_ms=p99_ms,
                rps=sum(by_version.values()),
                versions=tuple(sorted((v for v, r in by_version.items() if r > 0), key=_version_key)),
                over_budget=p99_ms is not None and p99_ms > budget_ms,
            )
        )
    return tuple(models)


def build_view(
    budgets_ms: Mapping[str, float],
    answers: Mapping[str, Any],
    alerts: Any,
    silent_after_s: float = SILENT_AFTER_S,
) -> dict[str, SiteLive]:
    """One :class:`SiteLive` per site of ``budgets_ms`` (site -> its latency budget in ms) from
    the answers to :data:`QUERIES` (keyed like it) and to ``/api/v1/alerts``; series of other
    sites are ignored. Raises :class:`CoreDataError` for an answer Prometheus would not give."""
    by_site: dict[str, dict[str, list[Sample]]] = {site: {} for site in budgets_ms}
    for record in RECORDS:
        for labels, value in vector(answers.get(record), QUERIES[record]):
            if labels.get("site") in by_site:
                by_site[labels["site"]].setdefault(record, []).append((labels, value))
    firing = firing_alerts(alerts)
    view = {}
    for name, budget in budgets_ms.items():
        site = by_site[name]
        age = next((v for _, v in site.get(AGE, []) if v is not None), None)
        # A relabelled site (another wave) has its old and new series for the lookback: not their sum.
        up = max((v for _, v in site.get(UP, []) if v is not None), default=None)
        models = _models(site, budget)
        rps = sum(m.rps for m in models) if site.get(RATE) else None
        ratio = next((v for _, v in site.get(ERRORS, []) if v is not None), None)
        view[name] = SiteLive(
            site=name,
            state="online" if age is not None and age <= silent_after_s else "silent",
            budget_ms=budget,
            last_sample_age_s=age,
            targets_up=None if up is None else int(up),
            models=models,
            rps=rps,
            error_ratio=0.0 if ratio is None and rps else ratio,
            alerts=firing.get(name, ()),
        )
    return view


def unreachable(sites: Mapping[str, float], error: str) -> dict[str, SiteLive]:
    """Every site, with the reason the core could not be read."""
    return {site: SiteLive(site, "unreachable", budget_ms=budget, error=error) for site, budget in sites.items()}


def core_url(option: str | None, core: MonitoringCore | None) -> str | None:
    """The core's HTTP API: ``--core`` when given (``none``: no live view), else the inventory's
    ``monitoring.core`` (the API answers on the remote-write receiver's address and port)."""
    if option is None:
        if core is None:
            return None
        host = f"[{core.address}]" if ":" in core.address else core.address
        return f"{core.scheme}://{host}:{core.port}"
    if option.strip().lower() == "none":
        return None
    try:
        parts = urllib.parse.urlsplit(option)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and not parts.query and not parts.fragment
        _ = parts.port  # raises ValueError for a port out of range
    except ValueError:
        ok = False
    if not ok:
        raise FleetError(
            f"--core: {option!r} is not the http(s) URL of the core "
            "(fix: e.g. --core http://10.0.9.5:9090, or --core none for no live view)"
        )
    return option.rstrip("/")


def _get_json(url: str, timeout_s: float) -> Any:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        body = r.read()
    try:
        return json.loads(body)
    except ValueError:
        raise CoreDataError(f"GET {url}: the answer is not JSON: {body[:80]!r}") from None


def _http_error(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def fetch(
    core: str,
    budgets_ms: Mapping[str, float],
    *,
    silent_after_s: float = SILENT_AFTER_S,
    timeout_s: float = TIMEOUT_S,
) -> dict[str, SiteLive] | str:
    """Read the core at ``core`` (``http://host:port``): the live view of the sites of
    ``budgets_ms``, or one line saying why it could not be read, naming the URL. Every query is
    evaluated at the same time; the first failing GET ends the reading."""
    at = f"{time.time():.3f}"
    urls = {
        "rules": f"{core}/api/v1/rules?type=record",
        **{r: f"{core}/api/v1/query?{urllib.parse.urlencode({'query': q, 'time': at})}" for r, q in QUERIES.items()},
        "alerts": f"{core}/api/v1/alerts",
    }
    answers: dict[str, Any] = {}
    try:
        for key, url in urls.items():
            try:
                answers[key] = _get_json(url, timeout_s)
            except urllib.error.HTTPError as exc:
                detail = _http_error(exc)
                return f"core {core}: GET {url} answered {exc.code} {exc.reason}{': ' + detail if detail else ''}"
            except urllib.error.URLError as exc:
                return f"core {core} unreachable: GET {url}: {exc.reason} ({FIX_URL})"
            except (OSError, http.client.HTTPException) as exc:
                return f"core {core} unreachable: GET {url}: {str(exc) or type(exc).__name__} ({FIX_URL})"
        missing = missing_rules(answers.pop("rules"))
        if missing:
            return (
                f"core {core} has no recording rule {', '.join(missing)} (fix: load the rule file "
                "components/monitoring/core.py renders into the core, with the default window)"
            )
        return build_view(budgets_ms, answers, answers.pop("alerts"), silent_after_s)
    except CoreDataError as exc:
        return f"core {core} answered what the Prometheus API does not: {exc}"
