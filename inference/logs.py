"""Structured logs: one JSON object per line on stderr.

Each line has ``ts`` (RFC 3339, UTC), ``level``, ``msg`` and the event's own fields. Requests
are logged one line each at DEBUG, or at INFO for a random ``sample`` fraction; every error
response is logged (4xx as WARNING, 5xx as ERROR).
"""

from __future__ import annotations

import logging
import os
import random
import sys
import time
from typing import Any

import orjson

LOGGER = logging.getLogger("inference")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            "pid": os.getpid(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


def setup(level: str) -> None:
    """Send the server's logs to stderr as JSON lines at ``level`` and above."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    LOGGER.handlers[:] = [handler]
    LOGGER.setLevel(level.upper())
    LOGGER.propagate = False


def event(level: int, msg: str, **fields: Any) -> None:
    if LOGGER.isEnabledFor(level):
        LOGGER.log(level, msg, extra={"fields": fields})


MAX_PATH_CHARS = 256  # a path is client input: log no more of it than this


class RequestLog:
    """Decides which requests get a log line; cheap when a request is not logged."""

    def __init__(self, sample: float) -> None:
        self.sample = sample

    def __call__(self, method: str, path: str, status: int, seconds: float,
                 model: str = "", version: str = "", error: str = "") -> None:
        if status >= 400:
            level = logging.ERROR if status >= 500 else logging.WARNING
        elif LOGGER.isEnabledFor(logging.DEBUG):
            level = logging.DEBUG
        elif self.sample and random.random() < self.sample:
            level = logging.INFO
        else:
            return
        fields: dict[str, Any] = {"method": method, "path": path[:MAX_PATH_CHARS], "status": status,
                                  "duration_us": round(seconds * 1e6, 1)}
        if model:
            fields.update(model=model, version=version)
        if error:
            fields["error"] = error
        event(level, "request", **fields)
