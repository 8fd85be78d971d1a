"""``fleet status``'s live view read from a real core: the inference server under a bounded load,
the site's Prometheus agent and the core (Prometheus 2.42, the rendered rules) on 127.0.0.1.
The site is online with its latency, rate and served version and no alert; the core's answers
have the shapes the unit tests' canned answers have; with the agent stopped the site turns
silent by the threshold given, and online again once the agent is back."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.monitoring_bench import MODEL, SITE, VERSION, http_get, load, running, wait_until
from components.contract import LATENCY_BUDGET_MS
from fleet.core import ERRORS, QUERIES, RECORDS, SiteLive, fetch
from tests.unit.core_fixtures import ALERTS, ANSWERS, rules_answer, shape

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus not installed (scripts/apt-packages.txt)"
    ),
]

SILENT_AFTER_S = 15.0  # normal age on loopback: the 2 s scrape plus the remote-write batch, 4-8 s
NAME = str(SITE["site"])
BUDGETS = {NAME: LATENCY_BUDGET_MS[str(SITE["latency_class"])]}
PROBE = "FleetCoreProbe"


def live(core: str, silent_after_s: float = SILENT_AFTER_S) -> SiteLive:
    view = fetch(core, BUDGETS, silent_after_s=silent_after_s)
    assert not isinstance(view, str), view
    return view[NAME]


def get(url: str) -> Any:
    return json.loads(http_get(url))


def test_status_live_view_from_a_real_core(tmp_path: Path) -> None:
    started = time.monotonic()
    with running(tmp_path, scrape_interval="2s") as stack, load(stack.infer_port, 10) as counts:
        core = f"http://127.0.0.1:{stack.core_port}"

        # EdgeSiteSilent (for: 0s) fires while the core has no sample of the site yet, and resolves
        # at the first evaluation of its group that sees one (every 5 s).
        def serving() -> SiteLive | None:
            site = live(core)
            ready = site.state == "online" and site.models and site.models[0].p99_ms and site.rps
            return site if ready and not site.alerts else None

        site = wait_until(serving, 60, "the site online with p99 and requests and no alert in the live view")
        (model,) = site.models
        assert model.model == MODEL and model.versions == (VERSION,)
        assert model.p99_ms is not None and model.p50_ms is not None and 0 < model.p50_ms <= model.p99_ms
        assert site.rps is not None and 0 < site.rps < 20, site  # 10/s at most; rate() of a young series is less
        assert site.error_ratio == 0.0 and counts["failed"] == 0, "no 5xx: no ratio series, ratio 0"
        assert site.alerts == () and site.targets_up == 1 and site.budget_ms == 10.0
        assert site.last_sample_age_s is not None and 0 <= site.last_sample_age_s <= SILENT_AFTER_S

        # The canned answers of the unit tests have the real answers' shapes (the site's series: the
        # core's own target adds series without the site's labels, in any order).
        for record in RECORDS:
            real = get(f"{core}/api/v1/query?{urllib.parse.urlencode({'query': QUERIES[record]})}")
            found = [r for r in real["data"]["result"] if r["metric"].get("site") == NAME]
            real["data"]["result"] = found
            assert found or record == ERRORS, f"{record}: no sample"  # no 5xx response: no ratio series
            canned = {**ANSWERS[record], "data": {**ANSWERS[record]["data"]}}
            canned["data"]["result"] = canned["data"]["result"][: len(found)]
            assert shape(real) == shape(canned), record
        rules = get(f"{core}/api/v1/rules?type=record")
        view_group = [g for g in rules["data"]["groups"] if g["name"] == "edge-fleet-view"]
        assert shape({**rules, "data": {"groups": view_group}}) == shape(rules_answer())

        # An alert that fires at once (for: 0s), loaded by SIGHUP, shows the firing alerts' shape;
        # meanwhile the agent stops and the site falls silent.
        probe = {"alert": PROBE, "expr": "site:up:sum >= 1", "labels": {"severity": "none"}}
        probe["annotations"] = {"summary": "{{ $labels.site }} reports"}
        (tmp_path / "rules" / "probe.yml").write_text(yaml.safe_dump({"groups": [{"name": "probe", "rules": [probe]}]}))
        os.kill(stack.core.pid, signal.SIGHUP)
        stack.agent.stop()

        # The site's last samples go stale a while after its agent stops, and the probe (on
        # site:up:sum) resolves then: one poll reads the view at both thresholds and the site's
        # firing probe, and is retried until they agree (the probe also fires for the core's own
        # target, without the site's labels).
        def silent() -> tuple[SiteLive, dict[str, Any]] | None:
            site, default = live(core), live(core, silent_after_s=300)
            alerts = get(f"{core}/api/v1/alerts")["data"]["alerts"]
            ours = [a for a in alerts if a["labels"]["alertname"] == PROBE and a["labels"].get("site") == NAME]
            if site.state == "silent" and site.alerts == (PROBE,) and default.state == "online" and ours:
                return site, ours[0]
            return None

        site, alert = wait_until(silent, 45, "the site silent in the live view (online by the 5 min default)")
        assert site.last_sample_age_s is not None and site.last_sample_age_s > SILENT_AFTER_S
        assert alert["state"] == "firing"
        entry = ALERTS["data"]["alerts"][0]
        assert {k: shape(v) for k, v in alert.items() if k not in ("labels", "annotations")} == {
            k: shape(v) for k, v in entry.items() if k not in ("labels", "annotations")
        } and set(alert) == set(entry)

        stack.agent.start()
        wait_until(lambda: live(core).state == "online", 45, "the site online again once the agent is back")
    assert all(p.proc is not None and p.proc.poll() is not None for p in (stack.agent, stack.core, stack.server))
    assert time.monotonic() - started < 180
