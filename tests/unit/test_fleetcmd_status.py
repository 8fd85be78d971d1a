"""Fleet status rows, the OCM-style summary and the three renderings; the health gate's
judgements and its soak (pure, with a fake clock)."""

from __future__ import annotations

import json

from rich.console import Console

from fleet import health
from fleet.status import SiteStatus, render_json, render_markdown, render_plain, render_table, summary, summary_line


def row(name: str, **kw) -> SiteStatus:
    base = {
        "site": name,
        "stack": f"prod.{name}",
        "wave": 1,
        "planned_revision": "a" * 16,
        "distribution": "k3s v1.33.4+k3s1",
        "models": {"predictive-maintenance": "1"},
        "last_kind": "update",
        "last_result": "succeeded",
        "last_start": "2026-12-01T10:00:00",
        "last_duration_s": 42.0,
        "applied_revision": "a" * 16,
        "last_seen": "2026-12-01T10:00:42",
        "connectivity": "online",
        "policy": "ok",
    }
    return SiteStatus(**{**base, **kw})


ROWS = [
    row("ok"),
    row("gone", connectivity="offline", connectivity_reason="no SSH answer"),
    row("old", applied_revision="b" * 16),
    row("broken", last_result="failed"),
    row("drifted", drift="drifted", drifted=["drifted-k3s-install"]),
    row("new", last_kind=None, last_result=None, applied_revision=None, last_seen=None, connectivity="offline"),
    row("resting", skip="maintenance"),
    row("busy", locked=True),
]


def test_each_site_gets_the_most_urgent_state():
    assert [r.state for r in ROWS] == [
        "available",
        "offline",
        "behind",
        "degraded",
        "degraded",
        "offline",
        "maintenance",
        "progressing",
    ]


def test_an_offline_site_is_never_available_even_with_a_successful_last_update():
    gone = ROWS[1]
    assert gone.applied and gone.state == "offline"
    assert "offline (last seen 2026-12-01T10:00:42)" in render_plain([gone])
    assert "offline (last seen never)" in render_plain([ROWS[5]])


def test_a_site_whose_hosts_answer_but_whose_api_does_not_is_degraded_not_available():
    wiped = row("wiped", health=["API unreachable ([Errno 111] Connection refused)"])
    assert wiped.applied and wiped.connectivity == "online" and wiped.state == "degraded"
    assert "health=API unreachable ([Errno 111] Connection refused)" in render_plain([wiped])
    assert row("fine", health=[]).state == "available" and "health=ok" in render_plain([row("fine", health=[])])
    assert "health=-" in render_plain([row("unchecked")]), "not checked is not shown as ok"
    three = row("three", health=["node a is not Ready", "node b is not Ready", "node c is not Ready"])
    assert "health=node a is not Ready; node b is not Ready ..." in render_plain([three])


def test_summary_counts_like_ocm():
    assert summary(ROWS) == {
        "total": 8,
        "applied": 5,
        "available": 1,
        "progressing": 1,
        "degraded": 2,
        "offline": 2,
        "skipped": 1,
    }
    assert summary_line(ROWS).startswith("total 8 / applied 5 / available 1 / progressing 1 / degraded 2 / offline 2")


def test_json_markdown_and_table():
    data = json.loads(render_json(ROWS))
    assert data["summary"]["total"] == 8 and data["sites"][1]["state"] == "offline"
    md = render_markdown(ROWS)
    assert md.splitlines()[2] == f"**{summary_line(ROWS)}**"
    assert "| drifted | 1 | degraded |" in md and "drifted: drifted-k3s-install" in md
    assert len([line for line in md.splitlines() if line.startswith("| ")]) == 1 + len(ROWS)
    console = Console(record=True, width=250)
    render_table(ROWS, console)
    text = console.export_text()
    assert "total 8 / applied 5" in text and "behind (bbbbbbbb)" in text


def test_markdown_cells_cannot_break_the_table():
    md = render_markdown([row("x", policy="1 | 2", connectivity_reason="a\nb")])
    assert "1 \\| 2" in md


# --- health gate --------------------------------------------------------------------------------


def node(name: str, ready: str) -> dict:
    return {"metadata": {"name": name}, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def deployment(
    name: str, available: str = "True", updated: int = 1, replicas: int = 1, gen: int = 1, seen: int = 1
) -> dict:
    return {
        "metadata": {"name": name, "namespace": name, "generation": gen},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": seen,
            "updatedReplicas": updated,
            "conditions": [{"type": "Available", "status": available}],
        },
    }


def api(ready=200, nodes=None, deps=None):
    answers = {
        "/readyz": (ready, "ok"),
        "/api/v1/nodes": (200, {"items": nodes if nodes is not None else [node("n", "True")]}),
        health.WORKLOADS: (200, {"items": deps or []}),
    }
    return lambda path: answers[path]


def test_gate_judgements():
    assert health.problems(api()) == []
    assert health.problems(api(ready=500)) == ["API not ready (/readyz answered 500)"]
    assert health.problems(api(nodes=[])) == ["no node is registered"]
    assert health.problems(api(nodes=[node("a", "True"), node("b", "Unknown")])) == ["node b is not Ready"]
    assert health.problems(api(deps=[deployment("m", available="False")])) == ["deployment m/m is not Available"]
    assert "has not rolled out" in health.problems(api(deps=[deployment("m", gen=2, seen=1)]))[0]
    assert "1/2 updated" in health.problems(api(deps=[deployment("m", updated=1, replicas=2)]))[0]

    def refused(path):
        raise ConnectionRefusedError(111, "Connection refused")

    assert health.problems(refused)[0].startswith("API unreachable")


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_soak_holds_opens_late_or_breaks():
    clock = Clock()
    assert health.hold(list, 60, deadline=1000, clock=clock, sleep=clock.sleep) is None
    assert clock.now >= 60

    clock = Clock()
    answers = iter([["API not ready"]] * 3 + [[]] * 100)
    assert health.hold(lambda: next(answers), 30, deadline=1000, clock=clock, sleep=clock.sleep) is None

    clock = Clock()
    assert "did not open before the progress deadline" in health.hold(
        lambda: ["node a is not Ready"], 30, deadline=20, clock=clock, sleep=clock.sleep
    )

    clock = Clock()
    answers = iter([[], [], ["deployment m/m is not Available"]])
    why = health.hold(lambda: next(answers), 60, deadline=1000, clock=clock, sleep=clock.sleep)
    assert why.startswith("health gate broke 10s into the 60s soak") and "m/m" in why
