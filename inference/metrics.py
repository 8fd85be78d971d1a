"""Prometheus metrics of the server (served on ``GET /metrics``).

With several worker processes, prometheus_client's multiprocess mode aggregates them: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from inference.repository import STATES

# The *_created series double the output for no use on a dashboard.
disable_created_metrics()

# Latency buckets from 50 us (a small MLP) to 2.5 s (a large model on a gateway CPU).
BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5)


class Metrics:
    """The server's metrics in their own registry (so several servers can live in one process)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "edge_infer_requests",
            "Inference requests by model, version and HTTP status.",
            ["model", "version", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edge_infer_request_duration_seconds",
            "Time from a complete inference request to its response, by model and version.",
            ["model", "version"],
            buckets=BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "edge_infer_errors", "Error responses on any endpoint, by HTTP status.", ["status"], registry=self.registry
        )
        self.model_state = Gauge(
            "edge_infer_model_state",
            "1 for the state each model version is in (LOADING, READY, FAILED), else 0.",
            ["model", "version", "state"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.log_suppressed = Counter(
            "edge_infer_access_log_suppressed",
            "Successful requests chosen for the access log (--log-sample) but not written because "
            "more than --log-rate lines per second were due.",
            registry=self.registry,
        )
        self.log_rate = Gauge(
            "edge_infer_access_log_rate_limit",
            "Most successful-request lines written to the access log per second and worker (0: no limit).",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.log_sample = Gauge(
            "edge_infer_access_log_sample_ratio",
            "Fraction of successful requests chosen for the access log (--log-sample; all of them "
            "at --log-level debug).",
            registry=self.registry,
            multiprocess_mode="max",
        )
        self._ok: dict[tuple[str, str], _Successes] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._errors: dict[int, Any] = {}

    def ok(self, model: str, version: str, seconds: float) -> None:
        """Count a successful inference request and its latency (shown after :meth:`flush`)."""
        series = self._ok.get((model, version))
        if series is None:
            series = self._ok[(model, version)] = _Successes(
                self.requests.labels(model, version, "200"), self.latency.labels(model, version)
            )
        series.count += 1
        series.seconds += seconds
        series.buckets[bisect_left(BUCKETS, seconds)] += 1

    def flush(self) -> None:
        """Add the successes counted since the last flush to the exported series."""
        for series in self._ok.values():
            if series.count:
                series.flush()

    def failed(self, model: str, version: str, status: int) -> None:
        """Count an inference request answered with an error."""
        key = (model, version, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, version, str(status))
        child.inc()

    def error(self, status: int) -> None:
        child = self._errors.get(status)
        if child is None:
            child = self._errors[status] = self.errors.labels(str(status))
        child.inc()

    def set_state(self, model: str, version: str, state: str) -> None:
        for name in STATES:
            self.model_state.labels(model, version, name).set(1 if name == state else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        self.flush()
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Successes:
    """Successful requests of one model version since the last flush, in plain integers: two
    locked prometheus_client updates per request cost more than the rest of the bookkeeping."""

    __slots__ = ("counter", "histogram", "count", "seconds", "buckets")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self.counter, self.histogram = counter, histogram
        self.count, self.seconds = 0, 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last one is +Inf

    def flush(self) -> None:
        self.counter.inc(self.count)
        # prometheus_client has no bulk observe: add to the histogram's own per-bucket values
        # (what observe() increments; cumulated when exported) and to its sum.
        for value, count in zip(self.histogram._buckets, self.buckets, strict=True):
            if count:
                value.inc(count)
        self.histogram._sum.inc(self.seconds)
        self.count, self.seconds = 0, 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)
