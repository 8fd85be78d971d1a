"""``python -m fleet``: fleet operations over site stacks (see fleet/__init__.py)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleet import EXIT
from fleet.core import SILENT_AFTER_S, SiteLive, core_url
from fleet.errors import FleetError
from fleet.plan import Plan, Selector, SitePlan, build_plan, catalog_versions
from fleet.rollout import RolloutResult, SiteResult, run_rollout
from fleet.stacks import base_config, project_name, shared_digest, write_site_configs
from fleet.toolchain import toolchain_env

REPO = Path(__file__).resolve().parent.parent
GRACE_S = 30  # after SIGINT at the progress deadline, before SIGKILL
COMMANDS = ("plan", "preview", "up", "refresh", "drift", "status", "destroy", "migrate", "gate")


@dataclass
class Context:
    repo: Path
    base: str
    project: str
    plan: Plan
    env: dict[str, str]
    policy: dict[str, str] | None
    log_dir: Path
    args: argparse.Namespace
    sites: dict[str, SitePlan] = field(default_factory=dict)
    core_url: str | None = None  # the monitoring core's HTTP API (status reads the live view there)
    budgets_ms: dict[str, float] = field(default_factory=dict)  # site -> its latency class's budget


# --- setup --------------------------------------------------------------------------------------


def load_context(args: argparse.Namespace) -> Context:
    from components.inventory import InventoryError, expand_path, load_inventory

    repo = Path(args.project_dir).resolve()
    project = project_name(repo)
    config = base_config(repo, args.stack).get("config") or {}
    inventory_rel = config.get(f"{project}:inventory")
    if not inventory_rel:
        raise FleetError(
            f"Pulumi.{args.stack}.yaml: config {project}:inventory is not set (fix: pulumi config set "
            f"inventory sites/<file>.yaml --stack {args.stack})"
        )
    try:
        inventory = load_inventory(repo / inventory_rel, check_files=False)
    except InventoryError as exc:
        raise FleetError("invalid inventory:\n" + str(exc)) from None
    catalog = repo / str(config.get(f"{project}:modelCatalog") or "models/catalog.yaml")
    models = catalog_versions(inventory, catalog) if catalog.exists() else {}

    def host_key(h) -> str:
        if h.ssh.host_key:
            return h.ssh.host_key
        try:
            return expand_path(h.ssh.host_key_file, inventory.base).read_text().strip()
        except OSError:
            return ""

    selector = Selector.parse(args.site or (), args.wave or (), args.select or ())
    digest = shared_digest(repo, args.stack, [catalog, repo / inventory_rel])
    plan = build_plan(inventory, args.stack, selector=selector, models=models, shared_digest=digest, host_key=host_key)
    plan = _override(plan, args)
    policy_rel = config.get(f"{project}:policyConfig")
    policy = (
        {"pack": str(repo / "policies"), "config": str(repo / policy_rel)}
        if policy_rel and (repo / "policies/PulumiPolicy.yaml").exists() and not args.no_policy
        else None
    )
    env = toolchain_env(repo, inventory.inventory.environment)
    log_dir = Path(args.log_dir) if args.log_dir else repo / ".fleet-logs"
    monitoring = inventory.inventory.monitoring
    return Context(
        repo,
        args.stack,
        project,
        plan,
        env,
        policy,
        log_dir,
        args,
        {s.name: s for w in plan.waves for s in (*w.sites, *w.skipped)},
        core_url(args.core, monitoring.core if monitoring else None),
        {s.name: s.latency_budget_ms for s in inventory.inventory.sites},
    )


def _override(plan: Plan, args: argparse.Namespace) -> Plan:
    """Command-line overrides of the inventory's rollout settings."""
    updates: dict[str, Any] = {}
    if args.preflight_timeout is not None:
        if not 1 <= args.preflight_timeout <= 60:
            raise FleetError(f"--preflight-timeout: {args.preflight_timeout} is not between 1 and 60 seconds")
        updates["preflight_timeout"] = args.preflight_timeout
    if args.no_health:
        updates["health_gate"] = False
    if args.min_success_time is not None:
        updates["min_success_time"] = args.min_success_time
    if not updates:
        return plan
    return replace(plan, rollout=plan.rollout.model_copy(update=updates))


# --- running one site -----------------------------------------------------------------------------


def run_worker(
    ctx: Context,
    op: str,
    site: SitePlan,
    *,
    deadline_s: float,
    extra: dict[str, Any] | None = None,
    procs: dict[str, subprocess.Popen] | None = None,
) -> dict[str, Any]:
    """One worker process for one operation on one site stack, stopped at its deadline."""
    req = {
        "op": op,
        "repo": str(ctx.repo),
        "stack": site.stack,
        "site": site.name,
        "message": f"fleet {op} rev={site.revision} wave={site.wave}",
        "log": str(ctx.log_dir / f"{site.stack}.log"),
        "deadline_s": deadline_s,
        "policy": ctx.policy,
        **(extra or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet.worker"],
        cwd=ctx.repo,
        env={**ctx.env, "PYTHONPATH": f"{REPO}:{ctx.repo}"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    if procs is not None:
        procs[site.stack] = proc
    try:
        out, err = proc.communicate(json.dumps(req), timeout=deadline_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        if op in ("up", "refresh", "destroy"):
            # A stack the killed engine left locked must not stay locked past its deadline.
            run_worker(ctx, "unlock", site, deadline_s=60)
        return {"status": "timeout", "reason": f"progress deadline of {deadline_s:.0f}s passed; the update was stopped"}
    finally:
        if procs is not None:
            procs.pop(site.stack, None)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = " | ".join(err.strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        return {"status": "failed", "reason": f"worker failed: {tail[:500]}"}
    return json.loads(lines[-1])


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT lets the engine cancel and write its state; SIGKILL after the grace period, to the
    worker's whole process tree (the engine's plugins run in process groups of their own)."""
    from fleet.worker import descendants

    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        for pid in descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def site_result(site: SitePlan, out: dict[str, Any], seconds: float) -> SiteResult:
    return SiteResult(
        site.name,
        site.stack,
        site.wave,
        out.get("status", "failed"),
        out.get("reason") or "",
        round(seconds, 2),
        {k: v for k, v in out.items() if k not in ("status", "reason")},
    )


def preflight(ctx: Context, site: SitePlan) -> SiteResult | None:
    """None when the site answers; otherwise its result (offline, or a changed host key)."""
    if ctx.args.no_preflight or not site.hosts:
        return None
    from fleet.preflight import check_site

    check = check_site(site, float(ctx.plan.rollout.preflight_timeout))
    if check.state == "online":
        return None
    status = "offline" if check.state == "offline" else "failed"
    return SiteResult(
        site.name, site.stack, site.wave, status, check.reason, round(check.seconds, 2), {"connectivity": check.state}
    )


def up_runner(
    ctx: Context, procs: dict[str, subprocess.Popen], took_over: Callable[[str], bool]
) -> Callable[[SitePlan], SiteResult]:
    rollout = ctx.plan.rollout

    def run(site: SitePlan) -> SiteResult:
        start = time.monotonic()
        offline = preflight(ctx, site)
        if offline is not None:
            return offline
        out = run_worker(
            ctx,
            "up",
            site,
            deadline_s=max(1.0, float(rollout.progress_deadline) - (time.monotonic() - start)),
            procs=procs,
            extra={
                "recover": took_over(site.stack),
                "force": ctx.args.force,
                "refresh": ctx.args.refresh,
                "health": {"enabled": rollout.health_gate, "soak_s": rollout.min_success_time},
            },
        )
        return site_result(site, out, time.monotonic() - start)

    return run


# --- output ---------------------------------------------------------------------------------------


def interactive(stream=None) -> bool:
    """A person watching: a terminal, and not CI (CI=true)."""
    return (stream or sys.stdout).isatty() and os.environ.get("CI", "").lower() not in ("true", "1")


class Progress:
    """Per-wave counts on a terminal (rich), one plain line per site otherwise; on stderr, so
    that stdout carries only the command's result (JSON, Markdown, the summary)."""

    def __init__(self, plan: Plan, op: str):
        self.plan, self.op = plan, op
        self.counts: dict[int, dict[str, int]] = {w.number: {} for w in plan.waves}
        self.lock = threading.Lock()
        self.live = None
        if interactive(sys.stderr):
            from rich.console import Console
            from rich.live import Live

            self.console = Console(stderr=True)
            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.start()

    def _table(self):
        from rich.table import Table

        table = Table(title=f"fleet {self.op}: {self.plan.base_stack}", title_justify="left")
        for col in ("wave", "sites", "done", "unchanged", "failed", "offline", "skipped", "not started"):
            table.add_column(col)
        for w in self.plan.waves:
            c = self.counts[w.number]
            table.add_row(
                f"{w.number}{' (mandatory)' if w.mandatory else ''}",
                str(len(w.sites) + len(w.skipped)),
                str(c.get("succeeded", 0)),
                str(c.get("unchanged", 0)),
                str(c.get("failed", 0) + c.get("timeout", 0)),
                str(c.get("offline", 0)),
                str(c.get("skipped", 0)),
                str(c.get("not-started", 0)),
            )
        return table

    def wave(self, wave) -> None:
        if self.live is None:
            print(
                f"wave {wave.number}: {len(wave.sites)} site(s), concurrency {wave.max_concurrency}, "
                f"failure budget {wave.max_failures if wave.max_failures is not None else 'rollout-wide'}"
                f"{' (mandatory)' if wave.mandatory else ''}",
                file=sys.stderr,
                flush=True,
            )

    def result(self, r: SiteResult) -> None:
        with self.lock:
            c = self.counts.setdefault(r.wave, {})
            c[r.status] = c.get(r.status, 0) + 1
            if self.live is not None:
                self.live.update(self._table())
            else:
                extra = f" ({r.reason})" if r.reason else ""
                changes = r.detail.get("changes")
                print(
                    f"  wave {r.wave} {r.site}: {r.status} in {r.duration_s:.1f}s"
                    f"{f', {changes} change(s)' if changes else ''}{extra}",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def rollout_summary(result: RolloutResult) -> str:
    counts = {
        s: result.count(s) for s in ("succeeded", "unchanged", "failed", "timeout", "offline", "skipped", "not-started")
    }
    lines = ["summary: " + ", ".join(f"{k} {v}" for k, v in counts.items() if v)]
    if result.stopped:
        lines.append(f"rollout STOPPED: {result.stopped}; later waves untouched")
    for r in result.results:
        if r.failed:
            lines.append(f"  {r.status}: {r.site} (wave {r.wave}): {r.reason or 'see ' + r.stack + '.log'}")
    for r in result.results:
        if r.status == "skipped":
            lines.append(f"  skipped: {r.site} (wave {r.wave}): {r.reason}")
    return "\n".join(lines)


def write_result(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    if args.result_file:
        Path(args.result_file).write_text(json.dumps(payload, indent=2) + "\n")


# --- commands -------------------------------------------------------------------------------------


def cmd_plan(ctx: Context) -> int:
    plan = ctx.plan
    if ctx.args.format == "json":
        print(json.dumps(plan.to_dict(), indent=2))
    elif ctx.args.format == "github":
        print(json.dumps(github_matrix(plan)))
    else:
        for w in plan.waves:
            print(
                f"wave {w.number}{' (mandatory)' if w.mandatory else ''}: {len(w.sites)} site(s), concurrency "
                f"{w.max_concurrency}, failure budget {w.max_failures if w.max_failures is not None else '-'}"
            )
            for s in w.sites:
                models = ", ".join(f"{m}:{v}" for m, v in s.models.items()) or "-"
                print(f"  {s.stack}: {s.distribution}; models {models}; rev {s.revision}")
            for s in w.skipped:
                print(f"  {s.stack}: skipped ({s.skip})")
        if plan.max_failures_total is not None:
            print(f"rollout-wide failure budget: {plan.max_failures_total}")
    return EXIT["ok"]


MAX_WORKFLOW_WAVES = 5


def github_matrix(plan: Plan) -> dict[str, Any]:
    """The plan as the fleet workflow's wave jobs read it: slot i is the i-th wave in order."""
    waves = [w for w in plan.waves if w.sites]  # a wave of paused sites only has nothing to run
    if len(waves) > MAX_WORKFLOW_WAVES:
        raise FleetError(
            f"the plan has {len(waves)} waves; .github/workflows/fleet.yml runs at most "
            f"{MAX_WORKFLOW_WAVES} (fix: merge waves in the inventory, or add wave jobs to the workflow)"
        )
    slots = []
    for w in waves:
        slots.append(
            {
                "wave": w.number,
                "sites": [s.name for s in w.sites],
                "run": True,
                "max_parallel": w.max_concurrency,
                "max_failures": w.max_failures if w.max_failures is not None else -1,
                "fail_fast": w.max_failures == 0,
            }
        )
    while len(slots) < MAX_WORKFLOW_WAVES:
        slots.append(
            {"wave": -1, "sites": ["none"], "run": False, "max_parallel": 1, "max_failures": 0, "fail_fast": True}
        )
    return {"stack": plan.base_stack, "waves": slots}


def cmd_up(ctx: Context) -> int:
    from fleet.lock import FleetLock, store_for

    plan = ctx.plan
    write_site_configs(ctx.repo, ctx.base, [s.name for s in plan.sites])
    lock = FleetLock(
        store_for(ctx.env["PULUMI_BACKEND_URL"]), ctx.project, [s.stack for s in plan.sites], f"fleet up {ctx.base}"
    )
    try:
        lock.acquire()
    except FleetError as exc:
        print(f"python -m fleet: {exc}", file=sys.stderr)
        return EXIT["locked"]
    procs: dict[str, subprocess.Popen] = {}
    cancel = threading.Event()
    progress = Progress(plan, "up")
    try:

        def finished(r: SiteResult) -> None:
            progress.result(r)
            lock.release_one(r.stack)  # done (or never to start): no lock, no renewals

        result = run_rollout(
            plan, up_runner(ctx, procs, lock.took_over), on_result=finished, on_wave=progress.wave, cancel=cancel
        )
    except KeyboardInterrupt:
        cancel.set()
        for proc in list(procs.values()):
            _stop(proc)
        raise
    finally:
        progress.close()
        lock.release()
    print(rollout_summary(result))
    write_result(ctx.args, {"stopped": result.stopped, "results": [r.__dict__ for r in result.results]})
    if result.stopped:
        return EXIT["stopped"]
    return EXIT["tolerated"] if result.failures else EXIT["ok"]


def _parallel(
    ctx: Context, op: str, sites: list[SitePlan], extra: dict[str, Any] | None = None, deadline_s: float | None = None
) -> list[SiteResult]:
    progress = Progress(replace(ctx.plan, waves=tuple(w for w in ctx.plan.waves if w.sites)), op)
    deadline = deadline_s or float(ctx.plan.rollout.progress_deadline)

    def one(site: SitePlan) -> SiteResult:
        start = time.monotonic()
        r = site_result(site, run_worker(ctx, op, site, deadline_s=deadline, extra=extra), time.monotonic() - start)
        progress.result(r)
        return r

    try:
        with ThreadPoolExecutor(max_workers=max(1, ctx.args.parallel)) as pool:
            return list(pool.map(one, sites))
    finally:
        progress.close()


def cmd_preview(ctx: Context) -> int:
    write_site_configs(ctx.repo, ctx.base, [s.name for s in ctx.plan.sites])
    results = _parallel(ctx, "preview", ctx.plan.sites, {"refresh": ctx.args.refresh})
    failed = [r for r in results if r.failed]
    print(
        f"preview: {len(results)} site stack(s), {sum(r.detail.get('changes', 0) > 0 for r in results)} with changes, "
        f"{len(failed)} failed"
    )
    for r in failed:
        print(f"  failed: {r.site}: {r.reason}")
    write_result(ctx.args, {"results": [r.__dict__ for r in results]})
    return EXIT["tolerated"] if failed else EXIT["ok"]


def _locked(
    ctx: Context, op: str, sites: list[SitePlan], extra: dict[str, Any] | None = None
) -> tuple[int, list[SiteResult]]:
    from fleet.lock import FleetLock, store_for

    lock = FleetLock(
        store_for(ctx.env["PULUMI_BACKEND_URL"]), ctx.project, [s.stack for s in sites], f"fleet {op} {ctx.base}"
    )
    try:
        lock.acquire()
    except FleetError as exc:
        print(f"python -m fleet: {exc}", file=sys.stderr)
        return EXIT["locked"], []
    try:
        results = _parallel(ctx, op, sites, {**(extra or {})})
    finally:
        lock.release()
    failed = [r for r in results if r.failed]
    write_result(ctx.args, {"results": [r.__dict__ for r in results]})
    print(f"{op}: {len(results)} site stack(s), {len(failed)} failed")
    for r in failed:
        print(f"  failed: {r.site}: {r.reason}")
    return (EXIT["tolerated"] if failed else EXIT["ok"]), results


def cmd_refresh(ctx: Context) -> int:
    write_site_configs(ctx.repo, ctx.base, [s.name for s in ctx.plan.sites])
    code, _ = _locked(ctx, "refresh", ctx.plan.sites)
    return code


def cmd_destroy(ctx: Context) -> int:
    if not ctx.args.yes:
        raise FleetError(
            f"destroy removes everything the {len(ctx.plan.sites)} selected site stack(s) manage "
            "(fix: add --yes to confirm)"
        )
    write_site_configs(ctx.repo, ctx.base, [s.name for s in ctx.plan.sites])
    code, _ = _locked(ctx, "destroy", list(reversed(ctx.plan.sites)))
    return code


def drift_results(ctx: Context) -> list[SiteResult]:
    write_site_configs(ctx.repo, ctx.base, [s.name for s in ctx.plan.sites])
    return _parallel(ctx, "drift", ctx.plan.sites)


def cmd_drift(ctx: Context) -> int:
    results = drift_results(ctx)
    report: list[dict[str, Any]] = []
    for r in results:
        names = [res["urn"].rsplit("::", 1)[-1] for res in r.detail.get("resources", [])]
        report.append({"site": r.site, "stack": r.stack, "status": r.status, "reason": r.reason, "resources": names})
    if ctx.args.format == "json":
        print(json.dumps({"sites": report}, indent=2))
    else:
        for item in report:
            what = f": {', '.join(item['resources'])}" if item["resources"] else ""
            print(f"{item['site']}: {item['status']}{what}{' (' + item['reason'] + ')' if item['reason'] else ''}")
    write_result(ctx.args, {"sites": report})
    if any(r.failed for r in results):
        return EXIT["tolerated"]
    return EXIT["drift"] if any(r.status == "drifted" for r in results) else EXIT["ok"]


def live_view(ctx: Context, sites: list[SitePlan]) -> dict[str, SiteLive]:
    """What the monitoring core holds of ``sites`` now; every site ``unreachable`` (with the
    reason) when it cannot be read, nothing without a core."""
    from fleet.core import fetch, unreachable

    if ctx.core_url is None:
        return {}
    if not ctx.args.silent_after > 0:
        raise FleetError(f"--silent-after: {ctx.args.silent_after} is not a positive number of seconds")
    budgets = {s.name: ctx.budgets_ms[s.name] for s in sites}
    view = fetch(ctx.core_url, budgets, silent_after_s=ctx.args.silent_after)
    return unreachable(budgets, view) if isinstance(view, str) else view


def cmd_status(ctx: Context) -> int:
    from fleet import status as st
    from fleet.lock import stale, store_for
    from fleet.preflight import check_site

    sites = [*ctx.plan.sites, *ctx.plan.skipped]
    sites.sort(key=lambda s: (s.wave, s.name))
    live = live_view(ctx, sites)
    write_site_configs(ctx.repo, ctx.base, [s.name for s in sites])
    store = store_for(ctx.env["PULUMI_BACKEND_URL"])
    drift = {r.site: r for r in drift_results(ctx)} if ctx.args.drift else {}

    def one(site: SitePlan) -> st.SiteStatus:
        out = run_worker(ctx, "status", site, deadline_s=300)
        probe = None if ctx.args.no_preflight else check_site(site, float(ctx.plan.rollout.preflight_timeout))
        last, ok = out.get("last") or {}, out.get("last_ok") or {}
        policy = out.get("policy")
        lock = store.read(f"{ctx.project}/{site.stack}")
        d = drift.get(site.name)
        return st.SiteStatus(
            site=site.name,
            stack=site.stack,
            wave=site.wave,
            planned_revision=site.revision,
            distribution=site.distribution,
            models=site.models,
            skip=site.skip,
            last_kind=last.get("kind"),
            last_result=last.get("result"),
            last_start=(last.get("start") or "")[:19] or None,
            last_duration_s=last.get("duration_s"),
            applied_revision=ok.get("revision") if last.get("result") == "succeeded" else last.get("revision"),
            last_seen=(ok.get("end") or "")[:19] or None,
            connectivity=probe.state if probe else "not-probed",
            connectivity_reason=probe.reason if probe else "",
            policy=(
                "ok"
                if not (policy["mandatory"] or policy["advisory"])
                else f"{policy['mandatory']} mandatory, {policy['advisory']} advisory"
            )
            if policy
            else "-",
            policy_mandatory=policy["mandatory"] if policy else 0,
            drift=(d.status if d.status in ("drifted", "in-sync", "absent") else "error") if d else "not-checked",
            drifted=[res["urn"].rsplit("::", 1)[-1] for res in d.detail.get("resources", [])] if d else [],
            locked=bool(lock and not stale(lock, time.time(), "")),
            health=out.get("health"),
            live=live.get(site.name),
        )

    with ThreadPoolExecutor(max_workers=max(1, ctx.args.parallel)) as pool:
        rows = list(pool.map(one, sites))
    fmt = ctx.args.format
    if fmt == "json":
        text = st.render_json(rows)
    elif fmt == "markdown":
        text = st.render_markdown(rows, f"Fleet status: {ctx.base}")
    elif fmt == "table" and interactive():
        from rich.console import Console

        st.render_table(rows, Console())
        text = None
    else:
        text = st.render_plain(rows)
    if text is not None:
        if ctx.args.output:
            Path(ctx.args.output).write_text(text)
        else:
            sys.stdout.write(text)
    if ctx.args.check and any(r.state not in ("available", "paused", "maintenance") for r in rows):
        return EXIT["unhealthy"]
    return EXIT["ok"]


def cmd_gate(ctx: Context) -> int:
    """A wave's results (the fleet workflow's per-site result files) against its budget."""
    wave = next((w for w in ctx.plan.waves if w.number == ctx.args.gate_wave), None)
    if wave is None:
        raise FleetError(f"--gate-wave {ctx.args.gate_wave}: no such wave in the plan")
    results: dict[str, str] = {}
    for path in Path(ctx.args.results_dir).glob("**/*.json"):
        try:
            for r in json.loads(path.read_text()).get("results", []):
                results[r["site"]] = r["status"]
        except (OSError, ValueError, KeyError, AttributeError):
            continue

    def failed_in(sites: list[SitePlan]) -> list[str]:  # a site without a result did not succeed
        return [s.name for s in sites if results.get(s.name, "failed") in ("failed", "timeout", "offline")]

    failed = failed_in(list(wave.sites))
    missing = [s.name for s in wave.sites if s.name not in results]
    print(
        f"wave {wave.number}: {len(failed)} failed of {len(wave.sites)}"
        + (f": {', '.join(failed)}" if failed else "")
        + (f"; no result from {', '.join(missing)}" if missing else "")
    )
    if wave.max_failures is not None:
        print(f"wave budget {wave.max_failures}{' (mandatory wave)' if wave.mandatory else ''}")
        if len(failed) > wave.max_failures:
            return EXIT["stopped"]
    if ctx.plan.max_failures_total is not None:
        so_far = failed_in([s for w in ctx.plan.waves if w.number <= wave.number for s in w.sites])
        print(f"rollout: {len(so_far)} failed so far, budget {ctx.plan.max_failures_total}")
        if len(so_far) > ctx.plan.max_failures_total:
            return EXIT["stopped"]
    return EXIT["ok"]


def cmd_migrate(ctx: Context) -> int:
    from fleet.migrate import migrate

    if not ctx.args.yes:
        raise FleetError(
            f"migrate moves the state of {len(ctx.plan.sites)} site(s) out of stack {ctx.base} into site "
            "stacks (fix: back up the state with `pulumi stack export`, then add --yes)"
        )
    os.environ.update(ctx.env)  # the CLI this process runs
    migrate(ctx.repo, ctx.base, [s.name for s in ctx.plan.sites], ctx.env)
    print(
        f"migrate: done; stack {ctx.base} now only holds the shared config (siteStacks: true); "
        f"next: python -m fleet preview --stack {ctx.base} shows no changes"
    )
    return EXIT["ok"]


# --- entry ----------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from fleet import __doc__ as doc

    p = argparse.ArgumentParser(
        prog="python -m fleet",
        description=doc.split("\n\n")[0],
        epilog="exit status: " + ", ".join(f"{v} {k}" for k, v in EXIT.items()),
    )
    p.add_argument("command", choices=COMMANDS)
    p.add_argument(
        "--stack",
        default=os.environ.get("EDGEFLEET_STACK", "dev"),
        help="the environment's whole-fleet stack whose config the site stacks share (default dev)",
    )
    p.add_argument("--project-dir", default=str(REPO), help="the Pulumi project (default: this repository)")
    p.add_argument("--site", action="append", help="site names or globs, comma-separated (repeatable)")
    p.add_argument("--wave", action="append", help="wave numbers, comma-separated (repeatable)")
    p.add_argument(
        "--select",
        action="append",
        help="key=value conditions: topology, hardware_class, latency_class, "
        "distribution, wave, name, or a site label (repeatable; all must hold; values accept globs)",
    )
    p.add_argument(
        "--parallel", type=int, default=4, help="site stacks at once for preview, refresh, drift, status, destroy"
    )
    p.add_argument("--format", choices=("table", "json", "markdown", "github", "plain"), default="table")
    p.add_argument("--output", help="write the status rendering to this file")
    p.add_argument("--result-file", help="write the per-site results as JSON to this file")
    p.add_argument("--log-dir", help="engine output per site stack (default .fleet-logs/)")
    p.add_argument("--refresh", action="store_true", help="preview/up: refresh each stack first (heals drift)")
    p.add_argument(
        "--force", action="store_true", help="up: run even where the stack's last update applied this revision"
    )
    p.add_argument("--no-preflight", action="store_true", help="skip the TCP+SSH reachability check")
    p.add_argument("--preflight-timeout", type=int, help="seconds (1-60) within which a site must answer")
    p.add_argument("--no-health", action="store_true", help="up: no health gate after each site")
    p.add_argument("--min-success-time", type=int, help="up: soak seconds (overrides the inventory's rollout)")
    p.add_argument("--no-policy", action="store_true", help="preview/up without the CrossGuard pack")
    p.add_argument("--drift", action="store_true", help="status: also preview-refresh every stack")
    p.add_argument("--check", action="store_true", help="status: exit 5 unless every site is available")
    p.add_argument(
        "--core",
        help="status: the monitoring core's URL, read for the live view (default: the inventory's "
        "monitoring.core, http://ADDRESS:PORT; 'none': no live view)",
    )
    p.add_argument(
        "--silent-after",
        type=float,
        default=SILENT_AFTER_S,
        help=f"status: seconds without a sample at the core after which a site is silent (default "
        f"{SILENT_AFTER_S:g}, the site-silent alert's window)",
    )
    p.add_argument("--yes", action="store_true", help="destroy: confirm")
    p.add_argument("--gate-wave", type=int, help="gate: the wave whose results to judge")
    p.add_argument("--results-dir", default=".", help="gate: directory of per-site result files")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    handlers = {
        "plan": cmd_plan,
        "preview": cmd_preview,
        "up": cmd_up,
        "refresh": cmd_refresh,
        "drift": cmd_drift,
        "status": cmd_status,
        "destroy": cmd_destroy,
        "migrate": cmd_migrate,
        "gate": cmd_gate,
    }
    try:
        ctx = load_context(args)
        return handlers[args.command](ctx)
    except FleetError as exc:
        print(f"python -m fleet: {exc}", file=sys.stderr)
        return EXIT["usage"]
    except KeyboardInterrupt:
        print("python -m fleet: interrupted; rerun the same command to resume", file=sys.stderr)
        return EXIT["interrupted"]
