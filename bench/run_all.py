"""Run every benchmark script (bench/*_bench.py) in turn with its defaults.

Each script runs in its own process group under a time limit; one that fails or runs out of
time is reported and the others still run. Prints the result files each script wrote.

    .venv/bin/python bench/run_all.py [--timeout 3600] [NAME ...]   (NAME: e.g. preview)

Exits 1 when a benchmark failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"


@dataclass(frozen=True)
class Outcome:
    name: str
    status: str  # "ok", "failed (exit N)" or "timed out after N s"
    elapsed_s: float
    written: tuple[Path, ...]


def scripts(names: list[str]) -> list[Path]:
    """The benchmark scripts, all or those named (``preview`` or ``preview_bench.py``)."""
    found = {p.name.removesuffix("_bench.py"): p for p in sorted(BENCH.glob("*_bench.py"))}
    if not names:
        return list(found.values())
    unknown = [n for n in names if n.removesuffix(".py").removesuffix("_bench") not in found]
    if unknown:
        raise ValueError(f"no benchmark named {', '.join(unknown)} (known: {', '.join(found)})")
    return [found[n.removesuffix(".py").removesuffix("_bench")] for n in names]


def run(script: Path, timeout_s: float) -> Outcome:
    name = script.name.removesuffix("_bench.py")
    print(f"== {script.relative_to(REPO)} (limit {timeout_s:.0f} s)", flush=True)
    started_wall, started = time.time(), time.perf_counter()
    # Own process group: on timeout the script's servers and load generators go with it.
    proc = subprocess.Popen([sys.executable, str(script)], cwd=REPO, start_new_session=True)
    try:
        code = proc.wait(timeout=timeout_s)
        status = "ok" if code == 0 else f"failed (exit {code})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        status = f"timed out after {timeout_s:.0f} s"
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        raise
    written = tuple(sorted(p for p in RESULTS.glob("*") if p.is_file() and p.stat().st_mtime >= started_wall))
    return Outcome(name, status, time.perf_counter() - started, written)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per benchmark (default 3600)")
    args = parser.parse_args()
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    try:
        selected = scripts(args.names)
    except ValueError as exc:
        parser.error(str(exc))
    outcomes = [run(script, args.timeout) for script in selected]
    print("\nbenchmark   status                      time    results")
    for o in outcomes:
        files = ", ".join(str(p.relative_to(REPO)) for p in o.written) or "(none written)"
        print(f"{o.name:<11} {o.status:<26} {o.elapsed_s:>6.0f} s  {files}")
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
