"""The site agent and the core as real Prometheus processes on 127.0.0.1: the core receives the
inference server's series with the site's labels, and samples scraped while the core is down
arrive once it is back (the agent's WAL bridges the outage)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from bench.monitoring_bench import MODEL, SITE, largest_gap, load, outage, running, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("prometheus") is None, reason="prometheus not installed (scripts/apt-packages.txt)"
    ),
]

INTERVAL_S = 2.0
OUTAGE_S = float(os.environ.get("EDGEFLEET_MONITORING_OUTAGE_S", "60"))


def test_agent_remote_writes_with_site_labels_and_bridges_a_core_outage(tmp_path: Path) -> None:
    with running(tmp_path, scrape_interval=f"{INTERVAL_S:g}s") as stack, load(stack.infer_port, 10) as counts:
        requests = wait_until(
            lambda: stack.query(f'edge_infer_requests_total{{model="{MODEL}", status="200"}}'),
            60,
            "request counter at the core",
        )
        labels = requests[0]["metric"]
        assert {k: labels[k] for k in ("site", "wave", "hardware_class", "latency_class")} == {
            k: str(v) for k, v in SITE.items()
        }
        assert labels["job"] == "inference" and labels["version"] == "2"
        # The recording rules see the site too (the core evaluates every 5 s).
        wait_until(lambda: stack.query(f'site:up:sum{{site="{SITE["site"]}"}} >= 1'), 30, "site:up:sum at the core")

        result = outage(stack, OUTAGE_S, INTERVAL_S)
        assert counts["ok"] > 0 and counts["failed"] == 0
        # Every scrape of the outage window reached the core: no gap beyond one scrape interval
        # (plus the scrape's jitter) inside the window.
        assert result["lost_samples"] <= 1, result
        assert result["largest_gap_s"] <= 2 * INTERVAL_S, result
        # ...and the series goes on after the restart.
        now = time.time()
        wait_until(
            lambda: (
                largest_gap(
                    stack.samples(f'up{{job="inference", site="{SITE["site"]}"}}', now, now + 10), now, now + 10
                )
                <= 2 * INTERVAL_S
                if time.time() > now + 12
                else None
            ),
            40,
            "samples after the restart",
        )
    assert (
        stack.agent.proc.poll() is not None
        and stack.core.proc.poll() is not None
        and stack.server.proc.poll() is not None
    )
