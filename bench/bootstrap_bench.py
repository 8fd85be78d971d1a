"""Toolchain bootstrap, cold and warm: `scripts/bootstrap` in a fresh clone of the committed HEAD
with every cache empty and private to the run, then the same command again on those caches.

Cold: a `git clone` of this repository's HEAD into a temporary directory (so `.venv` is created
there), with EDGEFLEET_CACHE, GOMODCACHE, GOCACHE, GOPATH, PIP_CACHE_DIR, PULUMI_HOME,
XDG_CACHE_HOME and TMPDIR all empty and inside that directory: every Go module and Python wheel
is downloaded and every Go program built. Warm: the same command right after (everything cached,
manifests verified). The Debian packages (scripts/apt-packages.txt) are system-wide; the run
requires them installed already, so its apt step only checks them, as on any machine that ran
the bootstrap once. Per-step seconds come from the bootstrap's own timings file
(EDGEFLEET_BOOTSTRAP_TIMINGS, whole seconds); the wall time of each run is measured here. The
load average is sampled during the run: on a shared machine the cold figure carries whatever
else ran beside it.

    .venv/bin/python bench/bootstrap_bench.py [--timeout 7200] [--sample-interval 30] [--show-env]

Writes bench/results/bootstrap.json and bench/results/bootstrap.png, only from a complete run;
on failure or timeout (the bootstrap's whole process group is killed) nothing is written. The
temporary directory is removed in every case.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SHARED = (REPO, Path.home() / ".cache" / "edgefleet")
# Every place the bootstrap (and the Go, pip and Pulumi commands it runs) writes to, as the
# variable that names it and its folder below the run's temporary directory.
PRIVATE = {
    "EDGEFLEET_CACHE": "cache",
    "PULUMI_HOME": "cache/pulumi-home",
    "GOMODCACHE": "gomod",
    "GOCACHE": "gocache",
    "GOPATH": "gopath",
    "PIP_CACHE_DIR": "pip",
    "XDG_CACHE_HOME": "xdg-cache",
    "TMPDIR": "tmp",
}
# Inherited settings that could point the run at shared state (a sourced scripts/env.sh, an
# activated virtualenv); the bootstrap sets its own. EDGEFLEET_PYTHON picks the interpreter.
DROPPED_PREFIXES = ("PULUMI_", "EDGEFLEET_")
DROPPED = {"GOBIN", "GOFLAGS", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
KEPT = {"EDGEFLEET_PYTHON"}
STEP_LABELS = {
    "apt": "Debian packages (installed already)",
    "venv": "virtualenv (.venv)",
    "pulumi": "Pulumi CLI + python language host",
    "kubernetes": "kubernetes provider plugin",
    "kwok": "kwok",
    "k3s": "K3s",
    "tools": "kube-score + actionlint",
    "plugins": "plugins into PULUMI_HOME",
}
APT_NOTE = (
    "the Debian packages of scripts/apt-packages.txt are system-wide and were installed already (checked "
    "before the run), as on any machine that ran the bootstrap once: the apt step only checks them with "
    "dpkg-query; on a machine without them it also downloads and installs them"
)


class BenchError(Exception):
    """A run that cannot give a result; the message says why."""


def private_env(tmp: Path) -> dict[str, str]:
    """The bootstrap's environment: this one without what points at shared state, every cache in tmp."""
    env = {k: v for k, v in os.environ.items() if k in KEPT or not (k in DROPPED or k.startswith(DROPPED_PREFIXES))}
    path = env.get("PATH", "").split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in path if p and not any(Path(p).is_relative_to(s) for s in SHARED))
    env.update({name: str(tmp / sub) for name, sub in PRIVATE.items()})
    return env


def show_env() -> None:
    """What the bootstrap gets that differs from this environment, with $TMP for the run's directory."""
    tmp = Path(tempfile.gettempdir()) / "bootstrap-bench-XXXXXX"
    env = private_env(tmp)
    for name in sorted(set(env) | set(os.environ)):
        before, after = os.environ.get(name), env.get(name)
        if before != after:
            shown = "(removed)" if after is None else after.replace(str(tmp), "$TMP")
            print(f"{name}={shown}" + ("" if before is None else f"    (was {before})"))
    print("EDGEFLEET_BOOTSTRAP_TIMINGS=$TMP/cold.json, then $TMP/warm.json; the clone is $TMP/repo (cwd)")


def run_checked(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(args)} exited with status {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


def missing_apt_packages(clone: Path) -> list[str]:
    def installed(pkg: str) -> bool:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True)
        return "ok installed" in proc.stdout

    lines = (line.strip() for line in (clone / "scripts/apt-packages.txt").read_text().splitlines())
    return [pkg for pkg in lines if pkg and not pkg.startswith("#") and not installed(pkg)]


def pinned_versions(clone: Path) -> dict[str, str]:
    lines = (clone / "scripts/versions.env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 2**20, 1)
    raise BenchError("/proc/meminfo has no MemTotal line")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class LoadSampler:
    """The 1/5/15-min load averages every interval_s seconds while the block runs (and at its end)."""

    interval_s: float
    samples: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0
    _thread: threading.Thread = field(init=False)

    def _sample(self) -> None:
        self.samples.append({"t_s": round(time.monotonic() - self._started, 1), "load": load_average()})

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> LoadSampler:
        self._started = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def summary(self) -> dict[str, Any]:
        columns = list(zip(*(s["load"] for s in self.samples), strict=True))
        return {
            "interval_s": self.interval_s,
            "mean": [round(statistics.fmean(c), 2) for c in columns],
            "max": [max(c) for c in columns],
            "samples": self.samples,
        }


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (the bootstrap and its Go builds), SIGKILL after 30 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def bootstrap(clone: Path, env: dict[str, str], timings: Path, deadline: float, steps: list[str]) -> dict[str, Any]:
    """One run of the clone's scripts/bootstrap: its own timings file plus the wall time measured here."""
    print(f"== scripts/bootstrap (timings: {timings.name})", flush=True)
    started = time.perf_counter()
    # Own process group, so that a timeout or a signal to this script stops every build it started.
    proc = subprocess.Popen(
        [str(clone / "scripts/bootstrap")],
        cwd=clone,
        env={**env, "EDGEFLEET_BOOTSTRAP_TIMINGS": str(timings)},
        start_new_session=True,
    )
    try:
        code = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        raise BenchError("the time limit ran out (fix: a larger --timeout)") from None
    finally:
        if proc.returncode is None:
            stop_group(proc)
    wall_s = round(time.perf_counter() - started, 2)
    if code != 0:
        raise BenchError(f"scripts/bootstrap exited with status {code} (its own message is above)")
    try:
        data = json.loads(timings.read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{timings.name}: unreadable timings from scripts/bootstrap: {exc}") from None
    got = [s.get("step") for s in data.get("steps", [])]
    if got != steps or not isinstance(data.get("total_seconds"), int):
        raise BenchError(f"{timings.name}: steps {got}, expected {steps} and a total_seconds (fix: scripts/bootstrap)")
    print(f"   {wall_s:.1f} s: " + ", ".join(f"{s['step']} {s['seconds']} s" for s in data["steps"]), flush=True)
    return {"wall_s": wall_s, "total_seconds": data["total_seconds"], "date": data.get("date"), "steps": data["steps"]}


def sizes_mb(paths: dict[str, Path]) -> dict[str, float]:
    out = {}
    for name, path in paths.items():
        if path.exists():
            out[name] = round(int(run_checked(["du", "-sb", str(path)]).split()[0]) / 1e6, 1)
    return out


def remove_tree(path: Path) -> None:
    """rm -rf that also gets through the Go module cache, whose folders are read-only."""
    subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)
    shutil.rmtree(path)


@contextlib.contextmanager
def run_dir() -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bootstrap-bench-"))
    try:
        yield tmp
    finally:
        print(f"removing {tmp}", flush=True)
        remove_tree(tmp)


def measure(timeout_s: float, interval_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    started = time.perf_counter()
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    load_start = load_average()
    with run_dir() as tmp:
        clone = tmp / "repo"
        run_checked(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)])
        env = private_env(tmp)
        for name in PRIVATE:
            Path(env[name]).mkdir(parents=True, exist_ok=True)
        missing = missing_apt_packages(clone)
        if missing:
            raise BenchError(
                f"Debian packages {' '.join(missing)} are missing; this benchmark does not install system packages "
                f"(fix: sudo apt-get install {' '.join(missing)})"
            )
        steps = run_checked([str(clone / "scripts/bootstrap"), "--list"], env=env, cwd=clone).split()
        commit = run_checked(["git", "log", "-1", "--format=%H %s"], cwd=clone).split(" ", 1)
        go_version = run_checked(["go", "version"], env=env)
        with LoadSampler(interval_s) as sampler:
            cold = bootstrap(clone, env, tmp / "cold.json", deadline, steps)
        warm = bootstrap(clone, env, tmp / "warm.json", deadline, steps)
        caches = sizes_mb(
            {
                "toolchain": tmp / PRIVATE["EDGEFLEET_CACHE"] / "toolchain",
                "build_copies": tmp / PRIVATE["EDGEFLEET_CACHE"] / "build",
                "go_modules": tmp / PRIVATE["GOMODCACHE"],
                "go_build_cache": tmp / PRIVATE["GOCACHE"],
                "pip_cache": tmp / PRIVATE["PIP_CACHE_DIR"],
                "venv": clone / ".venv",
            }
        )
        versions = pinned_versions(clone)
    return {
        "benchmark": "scripts/bootstrap: cold in a fresh clone with empty private caches, then warm on those caches",
        "command": "scripts/bootstrap",
        "date": date,
        "commit": {"sha": commit[0], "subject": commit[-1]},
        "source": "a git clone of the committed HEAD (uncommitted changes are not measured)",
        "isolation": {name: f"$TMP/{sub}" for name, sub in PRIVATE.items()} | {".venv": "$TMP/repo/.venv"},
        "apt": APT_NOTE,
        "machine": {
            "cores": len(os.sched_getaffinity(0)),
            "memory_gib": memory_gib(),
            "nice": os.nice(0),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "go": go_version,
        "versions": versions,
        "load_average": {"start": load_start, "end": load_average(), "during_cold": sampler.summary()},
        "step_resolution_s": 1,
        "cold": cold,
        "warm": warm,
        "cache_sizes_mb": caches,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes else f"{rest} s"


def plot(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = result["cold"]["steps"]
    fig, ax = plt.subplots(figsize=(10, 4.8))
    bars = ax.barh([STEP_LABELS.get(s["step"], s["step"]) for s in steps], [s["seconds"] / 60 for s in steps])
    ax.invert_yaxis()
    for bar, step in zip(bars, steps, strict=True):
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {duration(step['seconds'])}", va="center")
    ax.margins(x=0.18)
    ax.set(
        xlabel="minutes",
        title=f"scripts/bootstrap cold: {duration(result['cold']['wall_s'])}   "
        f"warm re-run: {result['warm']['wall_s']:.1f} s",
    )
    load = result["load_average"]["during_cold"]
    machine = result["machine"]
    ax.text(
        0.99,
        0.03,
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, nice {machine['nice']}; "
        f"1-min load average during the cold run: mean {load['mean'][0]:.1f}, max {load['max'][0]:.1f}\n"
        f"fresh clone of {result['commit']['sha'][:10]}, empty private caches; {result['date']}",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=8,
        color="0.3",
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def stopped(signum: int, _: FrameType | None) -> None:
    raise BenchError(f"stopped by {signal.Signals(signum).name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=7200, help="seconds allowed for the whole run (default 7200)")
    parser.add_argument("--sample-interval", type=float, default=30, help="seconds between load samples (default 30)")
    parser.add_argument("--show-env", action="store_true", help="print the bootstrap's environment and exit")
    args = parser.parse_args()
    if args.show_env:
        show_env()
        return 0
    if args.timeout <= 0 or args.sample_interval <= 0:
        parser.error("--timeout and --sample-interval must be positive")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stopped)
    try:
        result = measure(args.timeout, args.sample_interval)
        png = plot(result)
    except BenchError as exc:
        print(f"bootstrap_bench: {exc}; nothing written", file=sys.stderr)
        return 1
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bootstrap.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "bootstrap.png").write_bytes(png)
    cold, warm = result["cold"], result["warm"]
    print(f"cold {duration(cold['wall_s'])} ({cold['total_seconds']} s by the bootstrap), warm {warm['wall_s']:.1f} s")
    print(f"wrote {RESULTS / 'bootstrap.json'} and {RESULTS / 'bootstrap.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
