"""The core Prometheus: the receiver of every site's remote write, and the rules over them.

Pure: typed inputs -> prometheus.yml dict and command line.

Samples a site sends after an outage are older than what other sites have written meanwhile:
the TSDB appends such samples only within ``out_of_order_time_window``, so the window is the
longest outage any agent bridges (the largest ``outage_window`` of the hardware-class profiles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from components.monitoring.agent import PROFILES
from components.monitoring.rules import SiteExpectation, Thresholds, render_rules

RULES_FILE = "edge-rules.yml"


def duration_seconds(duration: str) -> int:
    """Seconds of a Prometheus duration of one unit (``30s``, ``5m``, ``1h``)."""
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def longest_outage_window() -> str:
    return max((p.outage_window for p in PROFILES.values()), key=duration_seconds)


@dataclass(frozen=True)
class CoreArgs:
    rules_dir: str = "/etc/prometheus/rules"
    evaluation_interval: str = "30s"
    retention: str = "15d"
    alertmanagers: Sequence[str] = ()  # host:port of Alertmanagers, if any
    self_target: str = "localhost:9090"  # the core's own web address, scraped for its health


def core_config(args: CoreArgs = CoreArgs()) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {"evaluation_interval": args.evaluation_interval, "external_labels": {"role": "edge-core"}},
        "rule_files": [f"{args.rules_dir}/*.yml"],
        # The core scrapes nothing of the sites: they push. It watches itself only.
        "scrape_configs": [{"job_name": "core", "static_configs": [{"targets": [args.self_target]}]}],
        "storage": {"tsdb": {"out_of_order_time_window": longest_outage_window()}},
    }
    if args.alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(args.alertmanagers)}]}]}
    return config


def core_flags(config_file: str, data_dir: str, listen: str, retention: str = CoreArgs.retention) -> list[str]:
    return [
        f"--config.file={config_file}",
        f"--storage.tsdb.path={data_dir}",
        f"--storage.tsdb.retention.time={retention}",
        "--web.enable-remote-write-receiver",
        f"--web.listen-address={listen}",
        "--log.format=json",
    ]


def core_files(
    args: CoreArgs,
    budgets_s: Mapping[str, float],
    sites: Sequence[SiteExpectation],
    thresholds: Thresholds | None = None,
) -> dict[str, str]:
    """The core's files by path: prometheus.yml and the rule file it loads."""
    return {
        "prometheus.yml": yaml.safe_dump(core_config(args), sort_keys=False),
        f"{args.rules_dir}/{RULES_FILE}": yaml.safe_dump(
            render_rules(budgets_s, sites, thresholds or Thresholds()), sort_keys=False
        ),
    }
