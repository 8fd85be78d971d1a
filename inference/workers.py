"""Several worker processes on one port: each binds its own SO_REUSEPORT socket and the kernel
spreads connections across them. The supervisor forwards SIGTERM/SIGINT, restarts a worker
that dies unexpectedly, and exits once every worker has stopped."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from types import FrameType

from inference.config import Settings

RESTART_DELAY = 1.0


def prepare_metrics_dir(settings: Settings) -> None:
    """Point prometheus_client at an empty per-run directory; must run before it is imported."""
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)


def supervise(settings: Settings) -> int:
    """Fork ``settings.workers`` workers and wait for them; the exit status."""
    prepare_metrics_dir(settings)
    # Imported after the metrics directory is set, and before forking so workers share it.
    from prometheus_client import multiprocess

    from inference import logs, server

    logs.setup(settings.log_level)
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index
    failed = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 1
            try:
                code = server.serve(settings)
            finally:
                logs.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(settings.workers):
        spawn(index)
    logs.event(logging.INFO, "workers started", workers=settings.workers, pids=sorted(children))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        worker = children.pop(pid, None)
        if worker is None:
            continue
        multiprocess.mark_process_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed = failed or code != 0
            continue
        logs.event(logging.ERROR, "worker exited", pid=pid, exit_code=code)
        if code == server.EXIT_BIND:
            failed = True
            forward(signal.SIGTERM, None)
            continue
        time.sleep(RESTART_DELAY)
        if not stopping:
            spawn(worker)
    shutil.rmtree(settings.metrics_dir, ignore_errors=True)
    return 1 if failed else 0
