"""Prometheus metrics of the server (served on ``GET /metrics``).

With several worker processes, prometheus_client's multiprocess mode aggregates them: the
supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before this module is imported.
"""

from __future__ import annotations

import os

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               ProcessCollector, disable_created_metrics, generate_latest)
from prometheus_client import multiprocess

from inference.repository import STATES

# The *_created series double the output for no use on a dashboard.
disable_created_metrics()

# Latency buckets from 50 us (a small MLP) to 2.5 s (a large model on a gateway CPU).
BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 20e-3, 50e-3, 100e-3,
           250e-3, 500e-3, 1.0, 2.5)


class Metrics:
    """The server's metrics in their own registry (so several servers can live in one process)."""

    def __init__(self) -> None:
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry = CollectorRegistry(auto_describe=True)
        if not self.multiprocess:
            ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "edge_infer_requests", "Inference requests by model, version and HTTP status.",
            ["model", "version", "status"], registry=self.registry)
        self.latency = Histogram(
            "edge_infer_request_duration_seconds",
            "Time from a complete inference request to its response, by model and version.",
            ["model", "version"], buckets=BUCKETS, registry=self.registry)
        self.errors = Counter(
            "edge_infer_errors", "Error responses on any endpoint, by HTTP status.",
            ["status"], registry=self.registry)
        self.model_state = Gauge(
            "edge_infer_model_state",
            "1 for the state each model version is in (LOADING, READY, FAILED), else 0.",
            ["model", "version", "state"], registry=self.registry, multiprocess_mode="livemin")
        self._requests: dict[tuple[str, str, int], object] = {}
        self._latency: dict[tuple[str, str], object] = {}

    def observe(self, model: str, version: str, status: int, seconds: float | None) -> None:
        """Count one inference request (and its latency when it reached the model)."""
        key = (model, version, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(model, version, str(status))
        child.inc()
        if seconds is not None:
            hist = self._latency.get(key[:2])
            if hist is None:
                hist = self._latency[key[:2]] = self.latency.labels(model, version)
            hist.observe(seconds)

    def error(self, status: int) -> None:
        self.errors.labels(str(status)).inc()

    def set_state(self, model: str, version: str, state: str) -> None:
        for name in STATES:
            self.model_state.labels(model, version, name).set(1 if name == state else 0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
