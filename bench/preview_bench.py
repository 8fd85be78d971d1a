"""`pulumi preview` of the fleet program against the engine's floor, as the fleet grows.

For each size N a prod-like inventory of N sites is generated (about half single-node, 30 %
ha with three servers, 20 % gateways; K3s from https artifacts with sha256 pins; pinned host
keys; addresses in 10.64.0.0/10; one catalog model per site, validated with onnxruntime), and
the real `pulumi preview --non-interactive` of the program runs on it in a temporary copy of
the project with its own file backend and passphrase. Previews open no SSH connection and
the server probe is off, so no address is ever contacted.

The floor is a flat Python program on the same CLI, language host and virtualenv that
registers as many resources as the program's preview counts, each a bare ComponentResource:
engine, language host and SDK costs without any provider or program logic. Program and floor
alternate within each round so that load from other processes hits both alike. At the policy
size (N=100) the preview also runs with the CrossGuard pack (`--policy-pack policies
--policy-pack-config policies/config/dev.json`) on the same stack.

The stack sets ``policyConfig`` as real stacks do, so the in-program guard checks every
resource in all runs; the pack comparison measures CrossGuard on top of it.

A point is the median wall time of its rounds, after one untimed `preview --json` run that
counts the resources, warms caches and samples the CPU time of each process of the preview
(engine, program, providers, pack) to show where the time goes. CPU time (user+sys of the
whole process tree) of the timed runs is recorded too: it moves less than wall time when
other work shares the machine. Targets: program/floor <= 1.2 at N=100, pack/no pack <= 1.3,
growth linear in N.

    .venv/bin/python bench/preview_bench.py [--sizes 10,50,100,200] [--repeats 2]

Writes bench/results/preview.json and bench/results/preview.png.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from fleet.toolchain import cli_dir, isolated_env, project_copy, versions

CLI_DIR = cli_dir()
VERSIONS = versions()
RESULTS = REPO / "bench" / "results"
STACK = "bench"
PASSPHRASE = "preview-bench-passphrase"
IMAGE = "registry.edgefleet.local/edgefleet/inference-server@sha256:" + "3c" * 32
K3S_VERSION = "v1.33.4+k3s1"
POLICY_SIZE = 100
POLICY_CONFIG = "policies/config/dev.json"
TARGETS = {"program_over_floor_at_100": 1.2, "pack_over_no_pack_at_100": 1.3}
MAX_SIZE, MAX_REPEATS = 500, 10
PREVIEW_TIMEOUT_S = 1800


# --- inventories -------------------------------------------------------------------------


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("/".join(map(str, parts)).encode()).digest()


def fake_host_key(host: str) -> str:
    """A well-formed ed25519 public key (OpenSSH wire format) derived from the host name."""
    blob = b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + _digest("hostkey", host)
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def topology_of(i: int) -> str:
    """Half single-node, 30 % ha, 20 % gateways, interleaved so every prefix is mixed."""
    return (
        "single-node",
        "ha",
        "single-node",
        "gateway",
        "single-node",
        "ha",
        "single-node",
        "gateway",
        "single-node",
        "ha",
    )[i % 10]


def site(i: int) -> dict:
    topology = topology_of(i)
    name = f"site-{i:04d}"
    net = f"10.{64 + i // 256}.{i % 256}"
    n_servers = 3 if topology == "ha" else 1
    hosts = [
        {
            "name": f"{name}-{k + 1}",
            "address": f"{net}.{11 + k}",
            "role": "server",
            "ssh": {"host_key": fake_host_key(f"{name}-{k + 1}")},
        }
        for k in range(n_servers)
    ]
    base = f"https://artifacts.edge.example/k3s/{K3S_VERSION}"
    out: dict = {
        "name": name,
        "topology": topology,
        "distribution": {"name": "k3s", "version": K3S_VERSION, "service_manager": "systemd"},
        "hardware_class": {"single-node": "x86-edge", "ha": "x86-server", "gateway": "gateway"}[topology],
        # Stores serve vision (quality-control, video budget); plants and gateways run control loops.
        "latency_class": "video" if topology == "single-node" and i % 2 else "control",
        "wave": i % 4,
        "artifacts": [
            {"name": "k3s", "arch": "amd64", "source": f"{base}/k3s", "sha256": _digest("k3s", K3S_VERSION).hex()},
            {
                "name": "k3s-airgap-images",
                "arch": "amd64",
                "source": f"{base}/k3s-airgap-images-amd64.tar.zst",
                "sha256": _digest("images", K3S_VERSION).hex(),
            },
        ],
        "hosts": hosts,
    }
    if topology == "ha":
        out["registration_address"] = f"{net}.10"
    return out


def workload(s: dict) -> dict:
    if s["latency_class"] == "video":
        return {"model": "quality-control", "version": "1", "replicas": 1, "max_replicas": 2, "clients": ["vision"]}
    if s["topology"] == "gateway":  # one replica, callers from its own namespace only
        return {"model": "predictive-maintenance", "version": "1", "replicas": 1}
    replicas = 2 if s["topology"] == "ha" else 1
    return {
        "model": "predictive-maintenance",
        "version": "1",
        "replicas": replicas,
        "max_replicas": 2 * replicas,
        "clients": ["line-control"],
    }


def inventory(n: int, with_workloads: bool) -> dict:
    """A prod inventory of ``n`` sites (see the module docstring)."""
    sites = [site(i) for i in range(n)]
    if with_workloads:
        for s in sites:
            s["workloads"] = [workload(s)]
    return {
        "fleet": f"bench-{n}",
        "environment": "prod",
        "defaults": {"ssh": {"user": "edgeops", "port": 22, "private_key": {"config": "sshKeyFleet"}}},
        "sites": sites,
    }


# --- running previews --------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float


# Which part of the toolchain a process of a preview is, from its command line.
PROCESS_KINDS = (
    ("pulumi-language-python-exec", "program (python)"),
    ("pulumi.dynamic", "dynamic provider (python)"),
    ("pulumi-resource-kubernetes", "kubernetes providers"),
    ("policies", "policy pack (python)"),
    ("pulumi-analyzer-policy", "policy pack (python)"),
    ("pulumi-language-python", "language host"),
)


def process_kind(cmdline: list[str]) -> str:
    if cmdline and Path(cmdline[0]).name == "pulumi":
        return "engine (pulumi CLI)"
    text = " ".join(cmdline)
    return next((kind for marker, kind in PROCESS_KINDS if marker in text), "other")


def cpu_by_process(proc: subprocess.Popen, interval_s: float = 0.1) -> dict[str, float]:
    """CPU seconds per kind of process in ``proc``'s tree, sampled until it exits (a process
    that ends between two samples loses at most one interval)."""
    import psutil

    root = psutil.Process(proc.pid)
    last: dict[int, tuple[str, float]] = {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in tree:
            try:
                with p.oneshot():
                    times = p.cpu_times()
                    last[p.pid] = (process_kind(p.cmdline()), times.user + times.system)
            except psutil.Error:
                pass
        time.sleep(interval_s)
    totals: dict[str, float] = {}
    for kind, cpu in last.values():
        totals[kind] = round(totals.get(kind, 0.0) + cpu, 2)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


@dataclass
class Project:
    """A Pulumi project directory with one stack on its own file backend."""

    cwd: Path
    env: dict[str, str]

    @classmethod
    def create(cls, cwd: Path, state: Path, config: dict[str, str], secrets: dict[str, str]) -> Project:
        state.mkdir()
        p = cls(cwd, isolated_env(state, PASSPHRASE))
        p.pulumi("stack", "init", STACK, "--non-interactive")
        for key, value in config.items():
            p.pulumi("config", "set", key, value, "--stack", STACK)
        for key, value in secrets.items():
            p.pulumi("config", "set", "--secret", key, "--stack", STACK, input=value)
        return p

    def pulumi(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        proc = subprocess.run(
            ["pulumi", *args], cwd=self.cwd, env=self.env, text=True, capture_output=True, input=input, timeout=timeout
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"pulumi {' '.join(args[:3])} failed ({proc.returncode}) in {self.cwd}:\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
            )
        return proc.stdout

    def survey(self, *extra: str) -> tuple[int, dict[str, float]]:
        """Resources the preview would create and CPU seconds per process kind, from one
        `preview --json` (untimed: it also warms caches for the timed runs)."""
        with tempfile.TemporaryFile("w+") as out:
            proc = subprocess.Popen(
                ["pulumi", "preview", "--non-interactive", "--json", "--stack", STACK, *extra],
                cwd=self.cwd,
                env=self.env,
                text=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                cpu = cpu_by_process(proc)
                proc.wait(timeout=PREVIEW_TIMEOUT_S)
            finally:
                if proc.poll() is None:
                    proc.kill()
            out.seek(0)
            text = out.read()
        if proc.returncode != 0:
            raise RuntimeError(f"pulumi preview failed ({proc.returncode}) in {self.cwd}:\n{text[-3000:]}")
        summary = json.loads(text).get("changeSummary") or {}
        return int(sum(summary.values())), cpu

    def preview(self, *extra: str) -> Run:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        self.pulumi("preview", "--non-interactive", "--stack", STACK, *extra, timeout=PREVIEW_TIMEOUT_S)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return Run(wall, cpu)


FLOOR_PROGRAM = '''\
"""Engine floor: `resources` bare components, flat under the stack."""
import pulumi


class Leaf(pulumi.ComponentResource):
    def __init__(self, name: str) -> None:
        super().__init__("bench:floor:Leaf", name, None, None)


for i in range(pulumi.Config().require_int("resources")):
    Leaf(f"leaf-{i}")
'''


def fleet_project(tmp: Path) -> Project:
    root = project_copy(tmp)
    key = tmp / "id_ed25519"
    # A fresh key no host trusts: previews only put it into the (secret) connection inputs.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=30)
    return Project.create(
        root,
        tmp / "state",
        config={
            "inventory": "sites/bench.yaml",
            "policyConfig": POLICY_CONFIG,
            "inferenceImage": IMAGE,
            "probeServers": "false",
            "validateModels": "true",
        },
        secrets={"fleetSecret": "f" * 64, "sshKeyFleet": key.read_text()},
    )


def floor_project(tmp: Path) -> Project:
    root = tmp / "floor"
    root.mkdir()
    (root / "Pulumi.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "preview-floor",
                "runtime": {"name": "python", "options": {"toolchain": "pip", "virtualenv": str(REPO / ".venv")}},
            }
        )
    )
    (root / "__main__.py").write_text(FLOOR_PROGRAM)
    return Project.create(root, tmp / "floor-state", config={"resources": "0"}, secrets={})


def median(runs: list[Run]) -> tuple[float, float]:
    return statistics.median(r.wall_s for r in runs), statistics.median(r.cpu_s for r in runs)


def linear_fit(xs: list[float], ys: list[float]) -> dict | None:
    """Least-squares line with R^2; None with fewer than three points."""
    import numpy as np

    if len(xs) < 3:
        return None
    slope, intercept = np.polyfit(xs, ys, 1)
    predicted = np.polyval([slope, intercept], xs)
    ss_res = float(np.sum((np.asarray(ys) - predicted) ** 2))
    ss_tot = float(np.sum((np.asarray(ys) - np.mean(ys)) ** 2))
    return {
        "slope_s_per_site": float(slope),
        "intercept_s": float(intercept),
        "r2": 1.0 - ss_res / ss_tot if ss_tot else 1.0,
    }


def measure_size(n: int, fleet: Project, floor: Project, repeats: int, with_workloads: bool) -> dict:
    (fleet.cwd / "sites/bench.yaml").write_text(yaml.safe_dump(inventory(n, with_workloads), sort_keys=False))
    resources, program_cpu = fleet.survey()
    floor.pulumi("config", "set", "resources", str(resources - 1), "--stack", STACK)  # + the stack itself
    floor_resources, floor_cpu = floor.survey()
    program_runs: list[Run] = []
    floor_runs: list[Run] = []
    for _ in range(repeats):
        program_runs.append(fleet.preview())
        floor_runs.append(floor.preview())
    (pw, pc), (fw, fc) = median(program_runs), median(floor_runs)
    row = {
        "sites": n,
        "resources": resources,
        "floor_resources": floor_resources,
        "runs": repeats,
        "program_wall_s": pw,
        "program_cpu_s": pc,
        "floor_wall_s": fw,
        "floor_cpu_s": fc,
        "ratio_wall": pw / fw,
        "ratio_cpu": pc / fc,
        "program_cpu_s_by_process": program_cpu,
        "floor_cpu_s_by_process": floor_cpu,
        "program_wall_s_all": [r.wall_s for r in program_runs],
        "floor_wall_s_all": [r.wall_s for r in floor_runs],
    }
    print(
        f"{n:>5} {resources:>9} {pw:>10.2f} {fw:>9.2f} {pw / fw:>7.2f} {pc:>10.2f} {fc:>9.2f} {pc / fc:>7.2f}",
        flush=True,
    )
    print(f"{'':>16}CPU s by process: {describe(program_cpu)} | floor: {describe(floor_cpu)}", flush=True)
    return row


def describe(cpu: dict[str, float]) -> str:
    return ", ".join(f"{kind} {seconds:.1f}" for kind, seconds in cpu.items())


def measure_policy(fleet: Project, repeats: int) -> dict:
    """Same stack and inventory, preview with and without the CrossGuard pack, alternating."""
    pack = ("--policy-pack", "policies", "--policy-pack-config", POLICY_CONFIG)
    _, cpu = fleet.survey(*pack)  # also warms the pack's interpreter and bytecode
    without: list[Run] = []
    with_pack: list[Run] = []
    for _ in range(repeats):
        without.append(fleet.preview())
        with_pack.append(fleet.preview(*pack))
    (ww, wc), (pw, pc) = median(without), median(with_pack)
    return {
        "without_pack_wall_s": ww,
        "with_pack_wall_s": pw,
        "ratio_wall": pw / ww,
        "without_pack_cpu_s": wc,
        "with_pack_cpu_s": pc,
        "ratio_cpu": pc / wc,
        "runs": repeats,
        "with_pack_cpu_s_by_process": cpu,
    }


def plot(rows: list[dict], fit: dict | None, policy: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["sites"] for r in rows]
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    ax1.plot(n, [r["program_wall_s"] for r in rows], "o-", label="fleet program")
    ax1.plot(n, [r["floor_wall_s"] for r in rows], "s-", label="floor (same resource count)")
    if fit:
        xs = [0, max(n)]
        ax1.plot(
            xs,
            [fit["intercept_s"] + fit["slope_s_per_site"] * x for x in xs],
            ":",
            color="grey",
            label=f"fit {fit['slope_s_per_site']:.3f} s/site, R²={fit['r2']:.3f}",
        )
    if policy:
        ax1.plot(
            [POLICY_SIZE],
            [policy["with_pack_wall_s"]],
            "^",
            color="red",
            label=f"with policy pack ({policy['ratio_wall']:.2f}x)",
        )
    ax1.set(xlabel="sites", ylabel="preview wall time (s, median)", title="pulumi preview")
    ax1.legend(fontsize=8)
    ax2.plot(n, [r["ratio_wall"] for r in rows], "o-", label="wall")
    ax2.plot(n, [r["ratio_cpu"] for r in rows], "x--", label="CPU")
    ax2.axhline(TARGETS["program_over_floor_at_100"], color="red", linestyle=":", label="target at 100 sites")
    ax2.set(xlabel="sites", ylabel="program / floor", title="overhead over the engine floor")
    ax2.set_ylim(bottom=0)
    ax2.legend(fontsize=8)
    kinds = sorted({k for r in rows for k in (*r["program_cpu_s_by_process"], *r["floor_cpu_s_by_process"])})
    labels = [str(x) for x in n]
    for offset, key, hatch in ((-0.2, "program_cpu_s_by_process", ""), (0.2, "floor_cpu_s_by_process", "//")):
        bottom = [0.0] * len(rows)
        for i, kind in enumerate(kinds):
            values = [r[key].get(kind, 0.0) for r in rows]
            ax3.bar(
                [x + offset for x in range(len(rows))],
                values,
                0.38,
                bottom=bottom,
                color=f"C{i}",
                hatch=hatch,
                label=kind if offset < 0 else None,
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax3.set_xticks(range(len(rows)), labels)
    ax3.set(
        xlabel="sites (left: program, right hatched: floor)",
        ylabel="CPU seconds (untimed run)",
        title="where the CPU goes",
    )
    ax3.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,100,200", help=f"site counts (each 1..{MAX_SIZE})")
    parser.add_argument("--repeats", type=int, default=2, help=f"timed previews per point (1..{MAX_REPEATS})")
    parser.add_argument("--no-workloads", action="store_true", help="sites without inference workloads")
    parser.add_argument("--no-policy", action="store_true", help=f"skip the policy pack comparison at N={POLICY_SIZE}")
    args = parser.parse_args()
    try:
        sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes {args.sizes!r}: expected comma-separated integers")
    if not sizes or not all(1 <= s <= MAX_SIZE for s in sizes):
        parser.error(f"--sizes: each size must be between 1 and {MAX_SIZE}")
    if not 1 <= args.repeats <= MAX_REPEATS:
        parser.error(f"--repeats: must be between 1 and {MAX_REPEATS}")
    if not (CLI_DIR / "pulumi").exists():
        print(
            f"preview_bench: the Pulumi toolchain is missing at {CLI_DIR} (fix: run scripts/bootstrap)", file=sys.stderr
        )
        return 2

    rows: list[dict] = []
    policy = None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="preview-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        fleet, floor = fleet_project(tmp), floor_project(tmp)
        print(
            f"{'sites':>5} {'resources':>9} {'program_s':>10} {'floor_s':>9} {'ratio':>7} "
            f"{'prog_cpu':>10} {'floor_cpu':>9} {'ratio':>7}"
        )
        for n in sizes:
            rows.append(measure_size(n, fleet, floor, args.repeats, not args.no_workloads))
            if n == POLICY_SIZE and not args.no_policy:
                policy = measure_policy(fleet, args.repeats)
                print(
                    f"policy pack at N={n}: {policy['with_pack_wall_s']:.2f} s "
                    f"vs {policy['without_pack_wall_s']:.2f} s without = {policy['ratio_wall']:.2f}x wall, "
                    f"{policy['ratio_cpu']:.2f}x CPU",
                    flush=True,
                )

    xs = [float(r["sites"]) for r in rows]
    fit = linear_fit(xs, [r["program_wall_s"] for r in rows])
    floor_fit = linear_fit(xs, [r["floor_wall_s"] for r in rows])
    at_policy_size = next((r for r in rows if r["sites"] == POLICY_SIZE), None)
    result = {
        "benchmark": (
            "pulumi preview of the fleet program vs a flat ComponentResource program of the same resource count"
        ),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "toolchain": {"pulumi": VERSIONS["PULUMI_VERSION"], "pulumi_kubernetes": VERSIONS["PULUMI_KUBERNETES_VERSION"]},
        "inventory": {
            "topologies": "50% single-node, 30% ha (3 servers), 20% gateway; k3s " + K3S_VERSION,
            "workloads_per_site": 0 if args.no_workloads else 1,
            "validate_models": True,
        },
        "targets": TARGETS,
        "within_target": {
            "program_over_floor_at_100": None
            if at_policy_size is None
            else at_policy_size["ratio_wall"] <= TARGETS["program_over_floor_at_100"],
            "pack_over_no_pack_at_100": None
            if policy is None
            else policy["ratio_wall"] <= TARGETS["pack_over_no_pack_at_100"],
        },
        "results": rows,
        "program_fit": fit,
        "floor_fit": floor_fit,
        "policy_at_100": policy,
        "elapsed_s": time.perf_counter() - started,
    }
    if fit:
        print(
            f"program: {fit['slope_s_per_site'] * 1000:.1f} ms/site, intercept {fit['intercept_s']:.2f} s, "
            f"R^2 {fit['r2']:.4f}"
        )
    if floor_fit:
        print(
            f"floor:   {floor_fit['slope_s_per_site'] * 1000:.1f} ms/site, intercept {floor_fit['intercept_s']:.2f} s, "
            f"R^2 {floor_fit['r2']:.4f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preview.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(rows, fit, policy, RESULTS / "preview.png")
    print(f"wrote {RESULTS / 'preview.json'} and {RESULTS / 'preview.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
