"""Prometheus rule groups of the core: the fleet view (recording rules) and the alerts.

Pure: typed inputs -> rule-file dict (``yaml.safe_dump`` it; ``promtool check rules`` accepts it).

Every series the core holds carries the agent's external labels ``site``, ``wave``,
``hardware_class`` and ``latency_class``, so one alert per latency class covers every site of that
class. What needs the inventory by name (which sites must report, which model versions the catalog
chose for a site) is rendered per site.

The inference server's series used here (inference/metrics.py):
``edge_infer_requests_total{model,version,status}``,
``edge_infer_request_duration_seconds_bucket{model,version,le}`` and
``edge_infer_model_state{model,version,state}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Budgets come in as an argument (seconds per latency class, from the inventory's
# LATENCY_BUDGET_MS) so that the renderer imports nothing of the program.
DURATION = re.compile(r"[1-9][0-9]{0,4}[smh]")
LABEL_VALUE = re.compile(r"[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?")
INFER_JOB = "inference"
KUBELET_JOB = "kubelet"


class RulesError(ValueError):
    """Inputs the rules cannot be rendered from; the message names the value and the fix."""


@dataclass(frozen=True)
class Thresholds:
    """How long a condition lasts before its alert fires, and the error ratio that alerts."""

    window: str = "5m"  # rate() window of the recording rules
    latency_for: str = "5m"
    silent_for: str = "5m"
    error_ratio: float = 0.05  # 5xx responses / all inference responses
    error_for: str = "5m"
    version_for: str = "10m"  # longer than a rollout step, so a rollout in progress is quiet
    node_for: str = "5m"

    def __post_init__(self) -> None:
        for name in ("window", "latency_for", "silent_for", "error_for", "version_for", "node_for"):
            value = getattr(self, name)
            if not DURATION.fullmatch(value):
                raise RulesError(f"thresholds: {name}: {value!r} is not a duration (fix: write e.g. 30s, 5m or 1h)")
        if not 0 < self.error_ratio < 1:
            raise RulesError(
                f"thresholds: error_ratio: {self.error_ratio} is not a ratio in (0, 1) (fix: e.g. 0.05 for 5%)"
            )


@dataclass(frozen=True)
class SiteExpectation:
    """What the core expects of one site: that it reports, and the model versions it serves."""

    site: str
    latency_class: str
    versions: Mapping[str, Sequence[str]] = field(default_factory=dict)  # model -> catalog's versions

    def __post_init__(self) -> None:
        for what, value in (
            ("site", self.site),
            *(("model", m) for m in self.versions),
            *(("version", v) for vs in self.versions.values() for v in vs),
        ):
            if not LABEL_VALUE.fullmatch(value):
                raise RulesError(
                    f"site {self.site}: {what}: {value!r} cannot be matched safely in PromQL "
                    "(fix: lowercase letters, digits, '.', '-')"
                )
        for model, vs in self.versions.items():
            if not vs:
                raise RulesError(
                    f"site {self.site}: model {model}: no version listed (fix: list the catalog's version for the site)"
                )


def _quantile(q: float, window: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (site, latency_class, model, le) "
        f"(rate(edge_infer_request_duration_seconds_bucket[{window}])))"
    )


def recording_group(t: Thresholds) -> dict[str, Any]:
    """The fleet view: per site and model p50/p99, request rate and error ratio; per site the
    number of targets up and the age of its newest sample."""
    w = t.window
    return {
        "name": "edge-fleet-view",
        "rules": [
            {"record": f"site_model:edge_infer_latency_seconds:p50_rate{w}", "expr": _quantile(0.5, w)},
            {"record": f"site_model:edge_infer_latency_seconds:p99_rate{w}", "expr": _quantile(0.99, w)},
            {
                "record": f"site_model_version:edge_infer_requests:rate{w}",
                "expr": f"sum by (site, latency_class, model, version) (rate(edge_infer_requests_total[{w}]))",
            },
            {
                "record": f"site:edge_infer_error_ratio:rate{w}",
                "expr": (
                    f'sum by (site, latency_class) (rate(edge_infer_requests_total{{status=~"5.."}}[{w}]))'
                    f" / sum by (site, latency_class) (rate(edge_infer_requests_total[{w}]))"
                ),
            },
            {"record": "site:up:sum", "expr": "sum by (site, wave, hardware_class, latency_class) (up)"},
            {"record": "site:last_sample_age_seconds", "expr": "time() - max by (site) (timestamp(up))"},
        ],
    }


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, **labels: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {"severity": severity, **labels},
        "annotations": {"summary": summary},
    }


def latency_group(budgets_s: Mapping[str, float], t: Thresholds) -> dict[str, Any]:
    """One alert per latency class: a model's p99 over the class budget for ``latency_for``."""
    rules = []
    for cls in sorted(budgets_s):
        budget = budgets_s[cls]
        if not budget > 0:
            raise RulesError(
                f"latency class {cls}: budget {budget} s is not positive (fix: a budget in seconds, e.g. 0.01)"
            )
        rules.append(
            _alert(
                "EdgeInferenceLatencyOverBudget",
                f'site_model:edge_infer_latency_seconds:p99_rate{t.window}{{latency_class="{cls}"}} > {budget:g}',
                t.latency_for,
                "critical",
                f"{{{{ $labels.site }}}}: {{{{ $labels.model }}}} p99 over the {cls} budget of {budget * 1000:g} ms",
                budget_seconds=f"{budget:g}",
            )
        )
    return {"name": "edge-latency-budgets", "rules": rules}


def health_group(t: Thresholds) -> dict[str, Any]:
    """Error ratio and nodes; the same for every site."""
    return {
        "name": "edge-health",
        "rules": [
            _alert(
                "EdgeInferenceErrorRatio",
                f"site:edge_infer_error_ratio:rate{t.window} > {t.error_ratio:g}",
                t.error_for,
                "warning",
                f"{{{{ $labels.site }}}}: inference requests fail over the threshold of {t.error_ratio:.0%}",
            ),
            # A site without kube-state-metrics has no NodeReady condition as a metric: a node whose
            # kubelet the agent cannot scrape (node down, kubelet dead, node unreachable) is what it sees.
            _alert(
                "EdgeNodeUnreachable",
                f'up{{job="{KUBELET_JOB}"}} == 0',
                t.node_for,
                "critical",
                "{{ $labels.site }}: kubelet of node {{ $labels.node }} does not answer (node down or NotReady)",
            ),
        ],
    }


def site_group(site: SiteExpectation, t: Thresholds) -> dict[str, Any]:
    """The alerts that need the inventory by name: silence, and the catalog's model versions."""
    s = site.site
    rules = [
        _alert(
            "EdgeSiteSilent",
            f'absent_over_time(up{{site="{s}"}}[{t.silent_for}])',
            "0s",
            "critical",
            f"{s}: no sample for {t.silent_for} (link down or agent stopped)",
            site=s,
        )
    ]
    for model in sorted(site.versions):
        versions = sorted(site.versions[model])
        expected = "|".join(re.escape(v) for v in versions)
        ready = f'edge_infer_model_state{{site="{s}", model="{model}", state="READY"'
        rules.append(
            _alert(
                "EdgeModelVersionUnexpected",
                f'{ready}, version!~"{expected}"}} == 1',
                t.version_for,
                "warning",
                f"{s}: {model} version {{{{ $labels.version }}}} is served; the catalog chose {', '.join(versions)}",
                site=s,
                model=model,
                expected_version=",".join(versions),
            )
        )
        rules.append(
            _alert(
                "EdgeModelVersionMissing",
                (
                    f'group by (site) (up{{site="{s}", job="{INFER_JOB}"}}) unless on (site) '
                    f'({ready}, version=~"{expected}"}} == 1)'
                ),
                t.version_for,
                "warning",
                f"{s}: {model} version {', '.join(versions)} (the catalog's choice) is not ready",
                site=s,
                model=model,
                expected_version=",".join(versions),
            )
        )
    return {"name": f"edge-site-{s}", "rules": rules}


def render_rules(
    budgets_s: Mapping[str, float], sites: Sequence[SiteExpectation], thresholds: Thresholds = Thresholds()
) -> dict[str, Any]:
    """The core's rule file: fleet view, latency budgets, health, and one group per site."""
    names = [s.site for s in sites]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise RulesError(f"sites: {', '.join(dupes)} listed twice (fix: one expectation per site)")
    unknown = sorted({s.latency_class for s in sites} - set(budgets_s))
    if unknown:
        raise RulesError(
            f"sites: latency class {', '.join(unknown)} has no budget (fix: one of {', '.join(sorted(budgets_s))})"
        )
    return {
        "groups": [
            recording_group(thresholds),
            latency_group(budgets_s, thresholds),
            health_group(thresholds),
            *(site_group(s, thresholds) for s in sorted(sites, key=lambda s: s.site)),
        ]
    }
