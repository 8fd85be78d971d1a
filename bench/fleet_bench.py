"""Fleet operations at scale: inventory load and plan for 3,500 sites, the fixed cost of one
site stack, and previews of N sites as site stacks (`python -m fleet preview`) against the
single-stack preview of the same N, all in the same run.

1. A generated 3,500-site inventory (bench/preview_bench.py's generator: mixed topologies,
   waves 0-3, one model per site): libyaml's parse of the file (yaml.CSafeLoader), the
   inventory's load + validation (components.inventory.load_inventory), the pure-Python
   parse it used before (yaml.safe_load), and the rollout plan (catalog versions + waves).
   Targets: load <= 5 s and <= 3x the libyaml parse; plan <= 1 s.
2. Fixed cost of one site stack: `pulumi preview` of a 1-site site stack against a 1-resource
   floor stack on the same CLI and virtualenv (CPU per process kind: engine, language host,
   program, providers, pack), and the same preview through the fleet command (worker process +
   Automation API). Target: <= 2x the floor.
3. Preview of N sites (default 10, 50, 200) as N site stacks at concurrency 1, 2, 4 against
   the whole-fleet stack's single preview of the same inventory; wall and CPU (all child
   processes). Site stacks are created by an untimed first run. With the policy pack, as
   `fleet preview` and scripts/stack run it.

    .venv/bin/python bench/fleet_bench.py [--sizes 10,50,200] [--concurrency 1,2,4] [--skip-single-above 200]

Writes bench/results/fleet.json and bench/results/fleet.png (only from a complete run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.preview_bench import (
    POLICY_CONFIG,
    STACK,
    Run,
    cpu_by_process,
    fleet_project,
    floor_project,
    inventory,
    linear_fit,
)
from fleet.toolchain import cli_dir, versions

CLI_DIR = cli_dir()
VERSIONS = versions()
RESULTS = REPO / "bench" / "results"
INVENTORY_SITES = 3500
TARGETS = {"load_s": 5.0, "load_over_libyaml": 3.0, "plan_s": 1.0, "site_stack_over_floor": 2.0}
PACK = ("--policy-pack", "policies", "--policy-pack-config", POLICY_CONFIG)


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def measure_inventory(tmp: Path, repeats: int) -> dict:
    from components.inventory import load_inventory
    from fleet.plan import build_plan, catalog_versions

    path = tmp / "sites-3500.yaml"
    path.write_text(yaml.safe_dump(inventory(INVENTORY_SITES, True), sort_keys=False))
    text = path.read_text()
    libyaml_s, libyaml_runs = timed(lambda: yaml.load(text, Loader=yaml.CSafeLoader), repeats)
    load_s, load_runs = timed(lambda: load_inventory(path), repeats)
    pure_s, _ = timed(lambda: yaml.safe_load(text), 1)
    loaded = load_inventory(path)
    catalog = REPO / "models/catalog.yaml"
    plan_s, plan_runs = timed(lambda: build_plan(loaded, "prod", models=catalog_versions(loaded, catalog)), repeats)
    plan = build_plan(loaded, "prod", models=catalog_versions(loaded, catalog))
    row: dict[str, Any] = {
        "sites": INVENTORY_SITES,
        "bytes": len(text.encode()),
        "libyaml_parse_s": libyaml_s,
        "load_validate_s": load_s,
        "load_over_libyaml": load_s / libyaml_s,
        "pure_python_parse_s": pure_s,
        "plan_s": plan_s,
        "waves": [len(w.sites) for w in plan.waves],
        "runs": {"libyaml": libyaml_runs, "load": load_runs, "plan": plan_runs},
    }
    print(
        f"inventory {INVENTORY_SITES} sites ({row['bytes'] / 1e6:.1f} MB): libyaml parse {libyaml_s:.2f} s, "
        f"load+validate {load_s:.2f} s ({row['load_over_libyaml']:.2f}x), pure-Python parse {pure_s:.2f} s, "
        f"plan {plan_s:.3f} s",
        flush=True,
    )
    return row


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_cmd(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 3600) -> Run:
    before, start = child_cpu(), time.perf_counter()
    proc = subprocess.run(args, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)
    wall, cpu = time.perf_counter() - start, child_cpu() - before
    if proc.returncode not in (0,):
        raise RuntimeError(
            f"{' '.join(args[:6])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return Run(wall, cpu)


def fleet_cmd(project, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fleet",
        *args,
        "--stack",
        STACK,
        "--project-dir",
        str(project.cwd),
        "--log-dir",
        str(project.cwd.parent / "fleet-logs"),
    ]


def median_run(runs: list[Run]) -> tuple[float, float]:
    return statistics.median(r.wall_s for r in runs), statistics.median(r.cpu_s for r in runs)


def survey_cpu(args: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        cpu = cpu_by_process(proc)
        proc.wait()
    return cpu


def measure_fixed(project, floor, repeats: int) -> dict:
    (project.cwd / "sites/bench.yaml").write_text(yaml.safe_dump(inventory(1, True), sort_keys=False))
    env = project.env
    run_cmd(fleet_cmd(project, "preview"), REPO, env)  # creates bench.site-0000 (untimed)
    site_stack = f"{STACK}.site-0000"
    direct = [
        run_cmd(["pulumi", "preview", "--non-interactive", "--stack", site_stack, *PACK], project.cwd, env)
        for _ in range(repeats)
    ]
    bare = [
        run_cmd(["pulumi", "preview", "--non-interactive", "--stack", site_stack], project.cwd, env)
        for _ in range(repeats)
    ]
    via_fleet = [run_cmd(fleet_cmd(project, "preview"), REPO, env) for _ in range(repeats)]
    floor.pulumi("config", "set", "resources", "1", "--stack", STACK)
    floor_runs = [floor.preview() for _ in range(repeats)]
    cpu_site = survey_cpu(["pulumi", "preview", "--non-interactive", "--stack", site_stack, *PACK], project.cwd, env)
    cpu_floor = survey_cpu(["pulumi", "preview", "--non-interactive", "--stack", STACK], floor.cwd, floor.env)
    (dw, dc), (bw, bc), (vw, vc), (fw, fc) = map(median_run, (direct, bare, via_fleet, floor_runs))
    row: dict[str, Any] = {
        "site_stack_wall_s": dw,
        "site_stack_cpu_s": dc,
        "site_stack_no_pack_wall_s": bw,
        "site_stack_no_pack_cpu_s": bc,
        "via_fleet_wall_s": vw,
        "via_fleet_cpu_s": vc,
        "floor_wall_s": fw,
        "floor_cpu_s": fc,
        "ratio_wall": dw / fw,
        "ratio_cpu": dc / fc,
        "ratio_no_pack_wall": bw / fw,
        "cpu_by_process": cpu_site,
        "floor_cpu_by_process": cpu_floor,
        "runs": repeats,
    }
    print(
        f"one site stack: {dw:.2f} s wall / {dc:.2f} s CPU with the pack ({bw:.2f} s without), via fleet {vw:.2f} s; "
        f"floor {fw:.2f} s / {fc:.2f} s: {dw / fw:.2f}x wall ({bw / fw:.2f}x without the pack)",
        flush=True,
    )
    print(f"  CPU by process: {cpu_site} | floor: {cpu_floor}", flush=True)
    return row


def measure_n(project, n: int, concurrencies: list[int], single: bool) -> dict:
    (project.cwd / "sites/bench.yaml").write_text(yaml.safe_dump(inventory(n, True), sort_keys=False))
    env = project.env
    run_cmd(fleet_cmd(project, "preview", "--parallel", str(max(concurrencies))), REPO, env)  # creates the site stacks
    row: dict = {"sites": n, "site_stacks": {}}
    for c in concurrencies:
        r = run_cmd(fleet_cmd(project, "preview", "--parallel", str(c)), REPO, env)
        row["site_stacks"][str(c)] = {"wall_s": r.wall_s, "cpu_s": r.cpu_s}
        print(f"  N={n} site stacks at concurrency {c}: {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU", flush=True)
    if single:
        r = run_cmd(["pulumi", "preview", "--non-interactive", "--stack", STACK, *PACK], project.cwd, env)
        row["single_stack"] = {"wall_s": r.wall_s, "cpu_s": r.cpu_s}
        print(f"  N={n} single stack: {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU", flush=True)
    return row


def extrapolate(rows: list[dict], fixed: dict, cpus: int) -> dict:
    """Per-site cost of site stacks from the measured points, projected to 3,500 sites on k
    runners (each with this machine's cores, concurrency = the best measured)."""
    best = {}
    for r in rows:
        c, v = min(r["site_stacks"].items(), key=lambda kv: kv[1]["wall_s"])
        best[r["sites"]] = (int(c), v["wall_s"], v["cpu_s"])
    xs = [float(n) for n in best]
    fit_wall = linear_fit(xs, [best[n][1] for n in best]) if len(xs) >= 3 else None
    per_site_wall = max(best[n][1] / n for n in best) if best else None
    per_site_cpu = max(best[n][2] / n for n in best) if best else None
    single = [(r["sites"], r["single_stack"]["wall_s"]) for r in rows if "single_stack" in r]
    single_fit = linear_fit([float(n) for n, _ in single], [w for _, w in single]) if len(single) >= 3 else None
    out: dict[str, Any] = {
        "per_site_wall_s_at_best_concurrency": per_site_wall,
        "per_site_cpu_s": per_site_cpu,
        "fit_wall": fit_wall,
        "single_stack_fit": single_fit,
        "cpus_per_runner": cpus,
        "runners": {},
    }
    for k in (1, 10, 50):
        if per_site_wall is not None:
            out["runners"][str(k)] = {"site_stacks_wall_min": INVENTORY_SITES * per_site_wall / k / 60}
    if single_fit is not None:
        out["single_stack_3500_wall_min"] = (
            single_fit["intercept_s"] + single_fit["slope_s_per_site"] * INVENTORY_SITES
        ) / 60
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.5))
    inv = result["inventory"]
    names = ["libyaml parse", "load + validate", "pure-Python parse", "plan"]
    values = [inv["libyaml_parse_s"], inv["load_validate_s"], inv["pure_python_parse_s"], inv["plan_s"]]
    ax1.bar(names, values, color=["C0", "C1", "C7", "C2"])
    ax1.axhline(TARGETS["load_s"], color="red", linestyle=":", label="load target 5 s")
    ax1.set(ylabel="seconds", title=f"{INVENTORY_SITES}-site inventory")
    ax1.tick_params(axis="x", labelrotation=15)
    ax1.legend(fontsize=8)
    fixed = result["fixed_cost"]
    kinds = sorted(set(fixed["cpu_by_process"]) | set(fixed["floor_cpu_by_process"]))
    bottom = [0.0, 0.0]
    for i, kind in enumerate(kinds):
        vals = [fixed["cpu_by_process"].get(kind, 0.0), fixed["floor_cpu_by_process"].get(kind, 0.0)]
        ax2.bar(["1-site stack", "1-resource floor"], vals, bottom=bottom, color=f"C{i}", label=kind)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set(ylabel="CPU seconds", title=f"fixed cost: {fixed['ratio_wall']:.2f}x the floor (wall)")
    ax2.legend(fontsize=7)
    for c in sorted({c for r in result["previews"] for c in r["site_stacks"]}, key=int):
        pts = [(r["sites"], r["site_stacks"][c]["wall_s"]) for r in result["previews"] if c in r["site_stacks"]]
        ax3.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"site stacks, concurrency {c}")
    single = [(r["sites"], r["single_stack"]["wall_s"]) for r in result["previews"] if "single_stack" in r]
    ax3.plot([p[0] for p in single], [p[1] for p in single], "s--", color="black", label="one stack")
    ax3.set(xlabel="sites", ylabel="preview wall time (s)", title="N sites: site stacks vs one stack")
    ax3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--concurrency", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3, help="runs per point of parts 1 and 2 (median)")
    parser.add_argument("--skip-single-above", type=int, default=10_000, help="no single-stack preview above this N")
    parser.add_argument(
        "--max-concurrency-only-above",
        type=int,
        default=10_000,
        help="above this N, only the highest concurrency (a long point; the lower ones scale from it)",
    )
    args = parser.parse_args()
    sizes = sorted({int(s) for s in args.sizes.split(",")})
    concurrencies = sorted({int(c) for c in args.concurrency.split(",")})
    if not (CLI_DIR / "pulumi").exists():
        print(
            f"fleet_bench: the Pulumi toolchain is missing at {CLI_DIR} (fix: run scripts/bootstrap)", file=sys.stderr
        )
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        inv = measure_inventory(tmp, args.repeats)
        project, floor = fleet_project(tmp), floor_project(tmp)
        project.env["CI"] = "true"
        project.env["PYTHONPATH"] = str(REPO)
        plugin = CLI_DIR.parent / f"pulumi-resource-kubernetes-{VERSIONS['PULUMI_KUBERNETES_VERSION']}"
        if not any((Path(project.env["PULUMI_HOME"]) / "plugins").glob("resource-kubernetes-*")) and plugin.is_dir():
            # The bootstrap's last step installs the plugin into PULUMI_HOME; until then the
            # engine finds the same binary on PATH.
            project.env["PATH"] = f"{plugin}:{project.env['PATH']}"
        fixed = measure_fixed(project, floor, args.repeats)
        previews = []
        for n in sizes:
            cs = concurrencies if n <= args.max_concurrency_only_above else [max(concurrencies)]
            previews.append(measure_n(project, n, cs, n <= args.skip_single_above))
    result = {
        "benchmark": "fleet operations: inventory load and plan, site stack fixed cost, N site stacks vs one stack",
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": os.getloadavg(),
        },
        "toolchain": {"pulumi": VERSIONS["PULUMI_VERSION"], "pulumi_kubernetes": VERSIONS["PULUMI_KUBERNETES_VERSION"]},
        "targets": TARGETS,
        "within_target": {
            "load_s": inv["load_validate_s"] <= TARGETS["load_s"],
            "load_over_libyaml": inv["load_over_libyaml"] <= TARGETS["load_over_libyaml"],
            "plan_s": inv["plan_s"] <= TARGETS["plan_s"],
            "site_stack_over_floor": fixed["ratio_wall"] <= TARGETS["site_stack_over_floor"],
        },
        "inventory": inv,
        "fixed_cost": fixed,
        "previews": previews,
        "extrapolation": extrapolate(previews, fixed, os.cpu_count() or 1),
        "elapsed_s": time.perf_counter() - started,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / "fleet.png")
    print(json.dumps(result["within_target"]), json.dumps(result["extrapolation"], indent=1))
    print(f"wrote {RESULTS / 'fleet.json'} and {RESULTS / 'fleet.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
