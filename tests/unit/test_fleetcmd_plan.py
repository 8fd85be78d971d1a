"""The fleet plan and the rollout scheduler: waves, budgets, selectors, stops (pure, no engine)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from components.inventory import Inventory, LoadedInventory
from fleet.errors import FleetError
from fleet.plan import Selector, build_plan, catalog_versions, scaled
from fleet.rollout import SiteResult, run_rollout

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG9qK5bO2d1yZ7x3c4v5b6n7m8q9w0e1r2t3y4u5i6o7"
REPO = Path(__file__).resolve().parents[2]


def site(i: int, wave: int, **extra) -> dict:
    return {
        "name": f"s{i}",
        "topology": "single-node",
        "wave": wave,
        "distribution": {"name": "k3s", "version": "v1.33.4+k3s1"},
        "hosts": [
            {
                "name": f"h{i}",
                "address": f"10.0.{i // 200}.{i % 200 + 1}",
                "ssh": {"host_key": KEY, "private_key": {"config": "k"}},
            }
        ],
        **extra,
    }


def inventory(sites: list[dict], rollout: dict | None = None) -> LoadedInventory:
    raw = {"fleet": "f", "environment": "prod", "sites": sites, **({"rollout": rollout} if rollout else {})}
    return LoadedInventory(Path("/x/sites/f.yaml"), Inventory.model_validate(raw))


def fleet(n_per_wave: tuple[int, ...], rollout: dict | None = None, **extra) -> LoadedInventory:
    sites, i = [], 0
    for wave, n in enumerate(n_per_wave):
        for _ in range(n):
            sites.append(site(i, wave, **extra))
            i += 1
    return inventory(sites, rollout)


def test_counts_and_percentages_scale_with_their_rounding():
    assert scaled(3, 10, round_up=True) == 3
    assert scaled("25%", 10, round_up=True) == 3  # concurrency rounds up
    assert scaled("25%", 10, round_up=False) == 2  # failures round down
    assert scaled("10%", 3, round_up=True) == 1  # never zero sites at once
    assert scaled("10%", 5, round_up=False) == 0


def test_waves_in_order_with_budgets_and_the_canary_wave_mandatory():
    plan = build_plan(fleet((1, 4, 10), {"max_concurrency": "50%", "max_failures": "20%"}), "prod")
    assert [w.number for w in plan.waves] == [0, 1, 2]
    assert [(w.max_concurrency, w.max_failures, w.mandatory) for w in plan.waves] == [
        (1, 0, True),
        (2, 0, False),
        (5, 2, False),
    ]
    assert plan.waves[1].sites[0].stack == "prod.s1"


def test_rollout_wide_budget():
    plan = build_plan(fleet((2, 8), {"max_failures": 3, "failure_scope": "rollout", "mandatory_waves": []}), "prod")
    assert plan.max_failures_total == 3 and all(w.max_failures is None for w in plan.waves)


def test_paused_and_maintenance_sites_are_planned_as_skipped():
    inv = inventory([site(0, 0), site(1, 1, paused=True), site(2, 1, maintenance=True), site(3, 1)])
    plan = build_plan(inv, "prod")
    assert [s.name for s in plan.sites] == ["s0", "s3"]
    assert [(s.name, s.skip) for s in plan.skipped] == [("s1", "paused"), ("s2", "maintenance")]


def test_selector_by_names_waves_and_labels():
    inv = inventory(
        [
            site(0, 0, labels={"region": "eu"}),
            site(1, 1, hardware_class="gateway"),
            site(2, 1, labels={"region": "us"}),
            site(3, 2),
        ]
    )

    def names(**kw: list[str]) -> list[str]:
        return [s.name for s in build_plan(inv, "p", selector=Selector.parse(**kw)).sites]

    assert names(sites=["s1,s3"]) == ["s1", "s3"]
    assert names(sites=["s*"], waves=["1"]) == ["s1", "s2"]
    assert names(select=["hardware_class=gateway"]) == ["s1"]
    assert names(select=["region=e*"]) == ["s0"]
    with pytest.raises(FleetError, match="matches no site"):
        names(select=["region=asia"])
    with pytest.raises(FleetError, match="key=value"):
        Selector.parse(select=["region"])


def test_revision_changes_with_the_site_and_the_shared_inputs_only():
    a = build_plan(fleet((2,)), "p", shared_digest="x")
    b = build_plan(fleet((2,)), "p", shared_digest="y")
    assert a.sites[0].revision != b.sites[0].revision
    changed = inventory([site(0, 0), {**site(1, 0), "distribution": {"name": "k3s", "version": "v1.33.5+k3s1"}}])
    c = build_plan(changed, "p", shared_digest="x")
    assert c.sites[0].revision == a.sites[0].revision and c.sites[1].revision != a.sites[1].revision


def test_model_canaries_follow_the_waves(tmp_path: Path):
    catalog = (REPO / "models/catalog.yaml").read_text()
    canaried = catalog.replace(
        "- name: predictive-maintenance\n", "- name: predictive-maintenance\n  canary: {version: '2', waves: [0]}\n", 1
    )
    (tmp_path / "catalog.yaml").write_text(canaried)
    wl = [{"model": "predictive-maintenance", "version": "1"}]
    inv = inventory([site(0, 0, workloads=wl), site(1, 1, workloads=wl), site(2, 2)])
    versions = catalog_versions(inv, tmp_path / "catalog.yaml")
    assert versions == {"s0": {"predictive-maintenance": "2"}, "s1": {"predictive-maintenance": "1"}, "s2": {}}
    plan = build_plan(inv, "p", models=versions)
    assert plan.waves[0].sites[0].models == {"predictive-maintenance": "2"}


# --- the scheduler ---------------------------------------------------------------------------


def runner(outcomes: dict[str, str], seconds: float = 0.0, log: list | None = None, active: list | None = None):
    lock = threading.Lock()

    def run(s):
        with lock:
            if active is not None:
                active.append(1)
                peak.append(len(active))
        time.sleep(seconds)
        with lock:
            if log is not None:
                log.append(s.name)
            if active is not None:
                active.pop()
        return SiteResult(s.name, s.stack, s.wave, outcomes.get(s.name, "succeeded"), outcomes.get(s.name + ":why", ""))

    peak: list[int] = []
    run.peak = peak  # type: ignore[attr-defined]
    return run


def test_everything_succeeds_within_the_concurrency_bound():
    plan = build_plan(fleet((1, 8), {"max_concurrency": 3}), "p")
    run = runner({}, seconds=0.05, active=[])
    result = run_rollout(plan, run)
    assert result.stopped is None and result.count("succeeded") == 9
    assert max(run.peak) == 3


def test_a_canary_failure_stops_the_rollout_and_leaves_later_waves_untouched():
    plan = build_plan(fleet((1, 3, 3), {"max_failures": 1}), "p")
    ran: list[str] = []
    result = run_rollout(plan, runner({"s0": "failed", "s0:why": "tampered artifact"}, log=ran))
    assert ran == ["s0"]
    assert "mandatory wave 0" in result.stopped
    assert [(r.site, r.status) for r in result.results if r.failed] == [("s0", "failed")]
    assert result.count("not-started") == 6


def test_failures_within_the_budget_continue_and_beyond_it_stop():
    plan = build_plan(fleet((1, 5, 2), {"max_failures": 1, "max_concurrency": 1}), "p")
    within = run_rollout(plan, runner({"s2": "offline"}))
    assert within.stopped is None and within.count("offline") == 1 and within.count("succeeded") == 7
    ran: list[str] = []
    beyond = run_rollout(plan, runner({"s2": "offline", "s3": "timeout"}, log=ran))
    assert beyond.stopped.startswith("wave 1: 2 site(s) failed, budget 1")
    assert ran == ["s0", "s1", "s2", "s3"]  # s4, s5 and wave 2 never started
    assert {r.site for r in beyond.results if r.status == "not-started"} == {"s4", "s5", "s6", "s7"}


def test_an_offline_site_never_blocks_the_others():
    plan = build_plan(fleet((1, 4), {"max_failures": 2, "max_concurrency": 4}), "p")
    slow = runner({})

    def run(s):
        if s.name == "s1":
            time.sleep(0.3)  # its dial budget
            return SiteResult(s.name, s.stack, s.wave, "offline", "no SSH answer")
        return slow(s)

    finished: list[tuple[str, float]] = []
    start = time.monotonic()
    run_rollout(plan, run, on_result=lambda r: finished.append((r.site, time.monotonic() - start)))
    order = [name for name, _ in finished]
    assert order.index("s1") == len(order) - 1  # the others finished while it was being dialled


def test_rollout_wide_budget_stops_across_waves():
    plan = build_plan(
        fleet((2, 2, 2), {"max_failures": 1, "failure_scope": "rollout", "mandatory_waves": [], "max_concurrency": 1}),
        "p",
    )
    result = run_rollout(plan, runner({"s1": "failed", "s2": "failed"}))
    assert result.stopped == "rollout: 2 site(s) failed, budget 1" and result.last_wave == 1


def test_skipped_sites_are_reported_never_run():
    inv = inventory([site(0, 0), site(1, 1, maintenance=True)])
    ran: list[str] = []
    result = run_rollout(build_plan(inv, "p"), runner({}, log=ran))
    assert ran == ["s0"] and [(r.site, r.status, r.reason) for r in result.results if r.status == "skipped"] == [
        ("s1", "skipped", "maintenance")
    ]


def test_a_runner_that_raises_is_a_failed_site_not_a_hung_rollout():
    plan = build_plan(fleet((1, 1)), "p")

    def boom(s):
        raise RuntimeError("bug")

    result = run_rollout(plan, boom)
    assert result.results[0].status == "failed" and "bug" in result.results[0].reason and result.stopped
