"""Structured logs: one JSON object per line on stderr.

Each line has ``ts`` (RFC 3339, UTC), ``level``, ``msg``, ``pid`` and the event's own fields.
Requests are logged one line each at DEBUG, or at INFO for a random ``sample`` fraction of the
successful ones, at most ``rate`` such lines per second (the rest are counted, not written);
every error response is logged (4xx as WARNING, 5xx as ERROR).

Lines are encoded with orjson straight into a buffer, without ``logging`` records. Request
lines are written in batches (every :data:`FLUSH_SECONDS`, or once :data:`FLUSH_BYTES` are
waiting); any other event writes the buffer out at once, so lines keep their order.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
from collections import deque
from typing import Any

import orjson

DEBUG, INFO, WARNING, ERROR = logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR
LEVELS = {"debug": DEBUG, "info": INFO, "warning": WARNING, "error": ERROR}
_NAMES = {DEBUG: "debug", INFO: "info", WARNING: "warning", ERROR: "error"}
FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 * 1024
MAX_PATH_CHARS = 256  # a path is client input: log no more of it than this


class LogWriter:
    """JSON lines to a file descriptor; ``add`` buffers, ``write`` and ``flush`` write out."""

    def __init__(self, fd: int = 2, level: int = INFO) -> None:
        self.fd = fd
        self.level = level
        self.pid = os.getpid()
        self._pending: deque[bytes] = deque()  # appends are atomic: the loader thread logs too
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._second = -1
        self._second_text = ""

    def line(self, level: int, msg: str, fields: dict[str, Any]) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime costs more than the rest of the line
            self._second, self._second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        head = {
            "ts": f"{self._second_text}.{int((now - second) * 1000):03d}Z",
            "level": _NAMES.get(level, "info"),
            "msg": msg,
            "pid": self.pid,
        }
        return orjson.dumps(head | fields, default=str, option=orjson.OPT_APPEND_NEWLINE)

    def add(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        """Buffer a line; written by the next flush (or at once if the buffer is large)."""
        line = self.line(level, msg, fields)
        self._pending.append(line)
        self._pending_bytes += len(line)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def write(self, level: int, msg: str, fields: dict[str, Any]) -> None:
        """Write a line now, after whatever is buffered."""
        self._pending.append(self.line(level, msg, fields))
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending = self._pending
            if not pending:
                return
            lines = [pending.popleft() for _ in range(len(pending))]
            self._pending_bytes = 0
            data = memoryview(b"".join(lines))
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except OSError:
                pass  # stderr is gone (closed pipe): the server keeps serving


WRITER = LogWriter()
atexit.register(lambda: WRITER.flush())


def setup(level: str) -> None:
    """Log JSON lines to stderr at ``level`` and above (for this process, e.g. after a fork)."""
    global WRITER
    WRITER.flush()
    WRITER = LogWriter(2, LEVELS[level.lower()])


def event(level: int, msg: str, **fields: Any) -> None:
    """Log a server event (not a request) now."""
    if level >= WRITER.level:
        WRITER.write(level, msg, fields)


def flush() -> None:
    WRITER.flush()


class RequestLog:
    """Decides which requests get a line; cheap when a request is not logged.

    ``sample`` is the fraction of successful requests logged at INFO, ``rate`` the most such
    lines per second (0: no limit); ``suppressed`` counts the lines the rate left out.
    """

    def __init__(self, sample: float, rate: float = 0.0) -> None:
        self.sample = sample
        self.rate = rate
        self.suppressed = 0
        self._window_end = 0.0
        self._window_lines = 0

    def __call__(
        self, method: str, path: str, status: int, seconds: float, model: str = "", version: str = "", error: str = ""
    ) -> None:
        writer = WRITER
        if status >= 400:
            level = ERROR if status >= 500 else WARNING
        elif writer.level <= DEBUG:
            level = DEBUG
        elif self.sample and (self.sample >= 1.0 or random.random() < self.sample):
            if self.rate and not self._admit():
                return
            level = INFO
        else:
            return
        fields: dict[str, Any] = {
            "method": method,
            "path": path[:MAX_PATH_CHARS],
            "status": status,
            "duration_us": round(seconds * 1e6, 1),
        }
        if model:
            fields["model"] = model
            fields["version"] = version
        if error:
            fields["error"] = error
        writer.add(level, "request", fields)

    def _admit(self) -> bool:
        now = time.monotonic()
        if now >= self._window_end:
            self._window_end, self._window_lines = now + 1.0, 0
        if self._window_lines >= self.rate:
            self.suppressed += 1
            return False
        self._window_lines += 1
        return True
