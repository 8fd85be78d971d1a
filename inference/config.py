"""Server settings from flags and ``EDGE_INFER_*`` environment variables (a flag wins)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ConfigError
from inference.limits import DEFAULT_MAX_ELEMENTS
from inference.repository import NAME

ENV_PREFIX = "EDGE_INFER_"
_EXPECT = re.compile(r"^(?P<model>[^:=\s]+):(?P<version>[^:=\s]+)=(?P<digest>[0-9A-Fa-f]{64})$")


@dataclass(frozen=True)
class Settings:
    model_repository: Path = Path("/models")
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int | None = None  # None: derived from each model's inputs
    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_connections: int = 512
    max_inflight_bytes: int = 64 * 1024 * 1024
    expect_sha256: dict[tuple[str, str], str] = field(default_factory=dict)
    registry: str | None = None
    s3_endpoint: str | None = None
    cache_dir: Path = Path("/tmp/edge-infer/cache")
    metrics_dir: Path = Path("/tmp/edge-infer/metrics")
    log_level: str = "info"
    log_sample: float = 0.0
    log_rate: float = 100.0
    loop: str = "uvloop"
    grace_seconds: float = 20.0
    idle_timeout: float = 60.0


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text.lower()

    return parse


def parse_expectation(text: str) -> tuple[tuple[str, str], str]:
    """``model:version=<sha256>`` -> ``((model, version), sha256)``."""
    match = _EXPECT.match(text.strip())
    if not match or not NAME.match(match["model"]) or not NAME.match(match["version"]):
        raise ValueError(f"{text!r} is not model:version=<64 hex digits>")
    return (match["model"], match["version"]), match["digest"].lower()


def _optional_str(text: str) -> str | None:
    return text or None


# (setting, flag, type, help). Each setting is also read from EDGE_INFER_<SETTING>.
OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("model_repository", "--model-repository", Path, "directory of <model>/<version>/model.onnx"),
    ("host", "--host", str, "address to listen on"),
    ("port", "--port", _bounded(int, 1, 65535), "TCP port"),
    ("workers", "--workers", _bounded(int, 1, 64), "worker processes sharing the port (SO_REUSEPORT)"),
    (
        "max_body_bytes",
        "--max-body-bytes",
        _bounded(int, 1024, 1 << 31),
        "largest request body accepted, for every model; larger ones get 413 (unset: derived from "
        "each model's input shapes and datatypes, at most 32 MiB)",
    ),
    (
        "max_elements",
        "--max-elements",
        _bounded(int, 1, 1 << 31),
        "most tensor elements one request may carry in inputs of dynamic shape (fixed-shape inputs "
        "always fit); more get 413 before the body is decoded",
    ),
    (
        "max_connections",
        "--max-connections",
        _bounded(int, 1, 1 << 20),
        "open connections per worker; more are answered 503 and closed",
    ),
    (
        "max_inflight_bytes",
        "--max-inflight-bytes",
        _bounded(int, 1024, 1 << 40),
        "request body bytes a worker buffers at once; a request that would exceed it waits "
        "(its connection is not read) until others finish",
    ),
    (
        "registry",
        "--registry",
        _optional_str,
        "s3://bucket/prefix to fetch models from (replaces --model-repository); only versions given "
        "an --expect-sha256 (the catalog's digest) are fetched, never trusting the object's metadata",
    ),
    ("s3_endpoint", "--s3-endpoint", _optional_str, "S3 endpoint URL (default: AWS)"),
    ("cache_dir", "--cache-dir", Path, "where registry models are cached after verification"),
    ("metrics_dir", "--metrics-dir", Path, "scratch directory for metrics of several workers"),
    ("log_level", "--log-level", _choice("debug", "info", "warning", "error"), "debug logs every request"),
    ("log_sample", "--log-sample", _bounded(float, 0.0, 1.0), "fraction of successful requests logged at info"),
    (
        "log_rate",
        "--log-rate",
        _bounded(float, 0.0, 1e9),
        "most successful-request lines logged per second and worker, 0 for no limit (the rest are "
        "counted in edge_infer_access_log_suppressed_total)",
    ),
    ("loop", "--loop", _choice("uvloop", "asyncio"), "event loop implementation"),
    (
        "grace_seconds",
        "--grace-seconds",
        _bounded(float, 0.0, 3600.0),
        "on SIGTERM, how long in-flight requests may take to finish",
    ),
    ("idle_timeout", "--idle-timeout", _bounded(float, 1.0, 3600.0), "close keep-alive connections idle this long"),
]


def _flag_type(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """``kind`` with its ValueError message shown by argparse (which otherwise hides it)."""

    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    return parse


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from ``argv`` over ``environ`` over the defaults.

    Bad flags exit 2 through argparse; bad environment values raise :class:`ConfigError`.
    """
    defaults = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m inference",
        description="Open Inference Protocol v2 REST server on onnxruntime. Every option can "
        f"also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}PORT=8080).",
    )
    for name, flag, kind, help_text in OPTIONS:
        env = ENV_PREFIX + name.upper()
        default = getattr(defaults, name)
        if env in environ:
            try:
                default = kind(environ[env])
            except ValueError as exc:
                raise ConfigError(env, f"{environ[env]!r}: {exc}", f"fix or unset {env}") from None
        parser.add_argument(
            flag, dest=name, type=_flag_type(kind), default=default, help=f"{help_text} [{env}; default: {default}]"
        )
    env = ENV_PREFIX + "EXPECT_SHA256"
    expected: dict[tuple[str, str], str] = {}
    for item in environ.get(env, "").replace(",", " ").split():
        try:
            key, digest = parse_expectation(item)
        except ValueError as exc:
            raise ConfigError(env, str(exc), "list model:version=<sha256> separated by commas") from None
        expected[key] = digest
    parser.add_argument(
        "--expect-sha256",
        dest="expect",
        action="append",
        default=[],
        type=_flag_type(parse_expectation),
        metavar="MODEL:VERSION=SHA256",
        help=f"refuse to load that version unless its file has this digest (repeatable) [{env}: comma-separated]",
    )
    args = parser.parse_args(list(argv))
    expected.update(dict(args.expect))
    settings = {name: getattr(args, name) for name, *_ in OPTIONS}
    return Settings(expect_sha256=expected, **settings)
