"""Running a plan wave by wave within its budgets.

The scheduler knows nothing of Pulumi: it calls ``run_site(site)`` for each site (from worker
threads, at most the wave's ``max_concurrency`` at once) and counts what comes back. A site
that failed, timed out or was offline counts against the budget (an unreachable site is
unavailable: Rancher Fleet's rule); once the failures of a wave exceed its budget, or those of
the whole rollout exceed the rollout-wide one, no further site starts, the sites already
running finish, and later waves stay untouched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from fleet.plan import Plan, SitePlan, Wave

SUCCESS = ("succeeded", "unchanged")
FAILURE = ("failed", "timeout", "offline")


@dataclass(frozen=True)
class SiteResult:
    site: str
    stack: str
    wave: int
    status: str  # succeeded | unchanged | failed | timeout | offline | skipped | not-started
    reason: str = ""
    duration_s: float = 0.0
    detail: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status in FAILURE


@dataclass
class RolloutResult:
    results: list[SiteResult]
    stopped: str | None = None  # why the rollout stopped early
    last_wave: int | None = None

    @property
    def failures(self) -> list[SiteResult]:
        return [r for r in self.results if r.failed]

    def count(self, *statuses: str) -> int:
        return sum(r.status in statuses for r in self.results)


RunSite = Callable[[SitePlan], SiteResult]
OnResult = Callable[[SiteResult], None]


def _over(failures: int, budget: int | None) -> bool:
    return budget is not None and failures > budget


def _budget_text(wave: Wave, plan: Plan, wave_failures: int, total_failures: int) -> str | None:
    if _over(wave_failures, wave.max_failures):
        kind = "mandatory wave" if wave.mandatory else "wave"
        return f"{kind} {wave.number}: {wave_failures} site(s) failed, budget {wave.max_failures} of {len(wave.sites)}"
    if _over(total_failures, plan.max_failures_total):
        return f"rollout: {total_failures} site(s) failed, budget {plan.max_failures_total}"
    return None


def run_wave(
    wave: Wave, plan: Plan, run_site: RunSite, on_result: OnResult, total_failures: int, cancel: threading.Event
) -> tuple[list[SiteResult], str | None]:
    """One wave: sites in inventory order, at most max_concurrency at once."""
    results: list[SiteResult] = []
    pending: Iterator[SitePlan] = iter(wave.sites)
    running: dict[Future, SitePlan] = {}
    failures = 0
    stopped: str | None = None
    with ThreadPoolExecutor(max_workers=wave.max_concurrency, thread_name_prefix=f"wave{wave.number}") as pool:

        def fill() -> None:
            while stopped is None and not cancel.is_set() and len(running) < wave.max_concurrency:
                site = next(pending, None)
                if site is None:
                    return
                running[pool.submit(run_site, site)] = site

        fill()
        while running:
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                site = running.pop(fut)
                try:
                    result = fut.result()
                except Exception as exc:  # a bug in a runner must not leave the rollout hanging
                    result = SiteResult(site.name, site.stack, site.wave, "failed", f"internal error: {exc!r}")
                results.append(result)
                on_result(result)
                if result.failed:
                    failures += 1
                    if stopped is None:
                        stopped = _budget_text(wave, plan, failures, total_failures + failures)
            if cancel.is_set() and stopped is None:
                stopped = "interrupted"
            fill()
    for site in pending:
        result = SiteResult(site.name, site.stack, site.wave, "not-started", f"rollout stopped ({stopped})")
        results.append(result)
        on_result(result)
    return results, stopped


def run_rollout(
    plan: Plan,
    run_site: RunSite,
    on_result: OnResult = lambda r: None,
    on_wave: Callable[[Wave], None] = lambda w: None,
    cancel: threading.Event | None = None,
) -> RolloutResult:
    """Every wave in order until one exceeds a budget. Skipped sites (paused, maintenance) are
    reported and never run."""
    cancel = cancel or threading.Event()
    out = RolloutResult([])
    total_failures = 0
    for wave in plan.waves:
        for site in wave.skipped:
            result = SiteResult(site.name, site.stack, site.wave, "skipped", site.skip or "")
            out.results.append(result)
            on_result(result)
        if out.stopped is not None:
            for site in wave.sites:
                result = SiteResult(site.name, site.stack, site.wave, "not-started", f"rollout stopped ({out.stopped})")
                out.results.append(result)
                on_result(result)
            continue
        on_wave(wave)
        results, stopped = run_wave(wave, plan, run_site, on_result, total_failures, cancel)
        out.results.extend(results)
        total_failures += sum(r.failed for r in results)
        out.last_wave = wave.number
        out.stopped = stopped
    return out
