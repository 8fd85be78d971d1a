"""Fleet status: one row per site, a summary line in Open Cluster Management's terms, and
three renderings (terminal table, JSON, Markdown). Rendering is pure.

Connectivity is what the preflight saw now: an offline site shows ``offline`` with the time
it was last seen (the end of its last successful update), never a stale ``ok``. Health is
what the site's API says now (the health gate's checks, read once): a site whose hosts answer
but whose cluster or workloads do not is ``degraded``, never ``available``.

Live is what the monitoring core holds of the site (:mod:`fleet.core`; only when the fleet has
a core): latency against the budget, request rate, error ratio, served versions, firing alerts.
A site the core reads as ``silent`` (no sample for longer than the threshold: link down, agent
or cluster stopped) is ``degraded``: its hosts may answer SSH, but nothing it runs reports, which
is a health problem as much as a failing health gate. Latency over budget and firing alerts are
shown but do not change the state: the alerts route them, and a rollout judges by the health
gate. A core that cannot be read says so in every row and changes no state.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from fleet.core import ModelLive, SiteLive


@dataclass(frozen=True)
class SiteStatus:
    site: str
    stack: str
    wave: int
    planned_revision: str
    distribution: str
    models: dict[str, str]
    skip: str | None = None
    last_kind: str | None = None  # update | refresh | destroy ...
    last_result: str | None = None  # succeeded | failed | in-progress | None (never)
    last_start: str | None = None
    last_duration_s: float | None = None
    applied_revision: str | None = None
    last_seen: str | None = None  # end of the last successful update
    connectivity: str = "not-probed"  # online | offline | hostkey-mismatch | not-probed
    connectivity_reason: str = ""
    policy: str = "-"  # ok | N mandatory, M advisory | -
    policy_mandatory: int = 0
    drift: str = "not-checked"  # in-sync | drifted | not-checked | absent
    drifted: list[str] = field(default_factory=list)
    locked: bool = False
    health: list[str] | None = None  # what keeps the site's health gate shut now; None: not checked
    live: SiteLive | None = None  # what the monitoring core holds of the site; None: no core

    @property
    def applied(self) -> bool:
        return self.last_result == "succeeded" and self.applied_revision == self.planned_revision

    @property
    def state(self) -> str:
        """One word per site, from the most to the least urgent."""
        if self.skip:
            return self.skip
        if self.connectivity == "offline":
            return "offline"
        if self.locked or self.last_result == "in-progress":
            return "progressing"
        if self.degraded:
            return "degraded"
        if self.last_result is None:
            return "not-deployed"
        if not self.applied:
            return "behind"
        if self.connectivity == "online":
            return "available"
        return "applied"

    @property
    def degraded(self) -> bool:
        return (
            self.last_result == "failed"
            or self.drift == "drifted"
            or self.policy_mandatory > 0
            or self.connectivity == "hostkey-mismatch"
            or bool(self.health)
            or (self.live is not None and self.live.state == "silent")
        )


def summary(rows: list[SiteStatus]) -> dict[str, int]:
    """OCM's rollout summary plus offline and skipped."""
    return {
        "total": len(rows),
        "applied": sum(r.applied for r in rows),
        "available": sum(r.state == "available" for r in rows),
        "progressing": sum(r.state == "progressing" for r in rows),
        "degraded": sum(r.degraded and not r.skip for r in rows),
        "offline": sum(r.connectivity == "offline" for r in rows),
        "skipped": sum(bool(r.skip) for r in rows),
    }


def summary_line(rows: list[SiteStatus]) -> str:
    s = summary(rows)
    return " / ".join(f"{k} {v}" for k, v in s.items())


def _live(rows: list[SiteStatus]) -> list[SiteLive]:
    return [r.live for r in rows if r.live is not None]


def live_summary(rows: list[SiteStatus]) -> dict[str, int] | None:
    """The fleet's live health by the core; None without a core."""
    live = _live(rows)
    if not live:
        return None
    return {
        "online": sum(x.state == "online" for x in live),
        "silent": sum(x.state == "silent" for x in live),
        "unreachable": sum(x.state == "unreachable" for x in live),
        "over_budget": sum(x.state == "online" and x.over_budget for x in live),
        "alerts_firing": sum(len(x.alerts) for x in live),
    }


def live_line(rows: list[SiteStatus]) -> str | None:
    """``live: 3 online / 1 silent / 1 over budget / 2 alerts firing``, or why the core could not be read."""
    s = live_summary(rows)
    if s is None:
        return None
    failed = next((x.error for x in _live(rows) if x.state == "unreachable"), None)
    if failed is not None:  # one reading of the core for every row: all or none unreachable
        return f"live: {failed or 'core unreachable'}"
    return (
        f"live: {s['online']} online / {s['silent']} silent / {s['over_budget']} over budget / "
        f"{s['alerts_firing']} alerts firing"
    )


def _headline(rows: list[SiteStatus]) -> list[str]:
    return [summary_line(rows), *filter(None, [live_line(rows)])]


def _last_update(r: SiteStatus) -> str:
    if r.last_result is None:
        return "never"
    took = f" in {r.last_duration_s:.0f}s" if r.last_duration_s is not None else ""
    return f"{r.last_kind or 'update'} {r.last_result} {r.last_start or ''}{took}".strip()


def _connectivity(r: SiteStatus) -> str:
    if r.connectivity == "offline":
        return f"offline (last seen {r.last_seen or 'never'})"
    return r.connectivity


def _health(r: SiteStatus) -> str:
    if r.health is None:
        return "-"
    return "; ".join(r.health[:2]) + (" ..." if len(r.health) > 2 else "") if r.health else "ok"


def _revision(r: SiteStatus) -> str:
    if r.applied_revision is None:
        return "-"
    return "current" if r.applied_revision == r.planned_revision else f"behind ({r.applied_revision[:8]})"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _ms(value: float | None) -> str:
    return _num(value, ".1f" if value is None or value >= 1 else ".2g")


def _model_part(m: ModelLive, budget_ms: float | None, named: bool) -> str:
    over = " OVER" if m.over_budget else ""
    versions = " " + "+".join(f"v{v}" for v in m.versions) if m.versions else ""
    return f"{m.model + ' ' if named else ''}p99 {_ms(m.p99_ms)}/{_num(budget_ms, 'g')}ms{over}{versions}"


def live_cell(live: SiteLive) -> str:
    """Compact: ``p99 3.1/10ms v2 · 12.0 rps err 0.0% · alerts: EdgeInferenceErrorRatio`` (OVER
    after a p99 over the budget); the model's name leads its part when the site has several."""
    if live.state == "unreachable":
        return "core unreachable"
    if live.state == "silent":
        age = live.last_sample_age_s
        parts = [f"silent: last sample {age:.0f}s ago" if age is not None else "silent: no sample"]
    else:
        models = "; ".join(_model_part(m, live.budget_ms, len(live.models) > 1) for m in live.models)
        parts = [models or "no requests", f"{_num(live.rps, '.1f')} rps err {_num(live.error_ratio, '.1%')}"]
    if live.alerts:
        parts.append(f"alerts: {', '.join(live.alerts)}")
    return " · ".join(parts)


def _drift(r: SiteStatus) -> str:
    if r.drift == "drifted":
        return f"drifted: {', '.join(r.drifted[:4])}{' ...' if len(r.drifted) > 4 else ''}" if r.drifted else "drifted"
    return r.drift


COLUMNS = (
    "site",
    "wave",
    "state",
    "last update",
    "revision",
    "distribution",
    "models",
    "policy",
    "connectivity",
    "health",
    "drift",
)


def columns(rows: list[SiteStatus]) -> tuple[str, ...]:
    """The columns: the live one only when the fleet has a core."""
    return (*COLUMNS, "live") if _live(rows) else COLUMNS


def row_cells(r: SiteStatus, live: bool = False) -> list[str]:
    """A row's cells; with ``live``, the live column last (``-`` for a row without)."""
    models = ", ".join(f"{m}:{v}" for m, v in r.models.items()) or "-"
    cells = [
        r.site,
        str(r.wave),
        r.state,
        _last_update(r),
        _revision(r),
        r.distribution,
        models,
        r.policy,
        _connectivity(r),
        _health(r),
        _drift(r),
    ]
    if live:
        cells.append(live_cell(r.live) if r.live is not None else "-")
    return cells


def _rows_cells(rows: list[SiteStatus]) -> list[list[str]]:
    live = bool(_live(rows))
    return [row_cells(r, live) for r in rows]


def _json_site(r: SiteStatus) -> dict[str, Any]:
    site = {**asdict(r), "state": r.state, "applied": r.applied}
    if r.live is None:
        del site["live"]  # no core: the JSON of a fleet without one stays as it was
    else:
        site["live"]["over_budget"] = r.live.over_budget
    return site


def render_json(rows: list[SiteStatus]) -> str:
    live = live_summary(rows)
    head: dict[str, Any] = {"summary": summary(rows)}
    if live is not None:
        head["live"] = {**live, "line": live_line(rows)}
    return json.dumps({**head, "sites": [_json_site(r) for r in rows]}, indent=2)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[SiteStatus], title: str = "Fleet status") -> str:
    cols = columns(rows)
    head, *more = _headline(rows)
    lines = [
        f"### {title}",
        "",
        f"**{head}**",
        "",
        *(x for line in more for x in (_md_cell(line), "")),
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in cells) + " |" for cells in _rows_cells(rows)]
    return "\n".join(lines) + "\n"


STATE_STYLE = {
    "available": "green",
    "applied": "green",
    "offline": "red",
    "degraded": "red",
    "progressing": "yellow",
    "behind": "yellow",
    "not-deployed": "dim",
    "paused": "blue",
    "maintenance": "blue",
}


def render_table(rows: list[SiteStatus], console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    # The live line may carry an error text with brackets (an IPv6 address): not markup.
    table = Table(title=escape("\n".join(_headline(rows))), title_justify="left")
    for col in columns(rows):
        table.add_column(col, overflow="fold")
    for r, cells in zip(rows, _rows_cells(rows), strict=True):
        style = STATE_STYLE.get(r.state, "")
        cells[2] = f"[{style}]{cells[2]}[/]" if style else cells[2]
        table.add_row(*cells)
    console.print(table)


def render_plain(rows: list[SiteStatus]) -> str:
    cols = columns(rows)
    out = _headline(rows)
    out += ["  ".join(f"{k}={v}" for k, v in zip(cols, cells, strict=True)) for cells in _rows_cells(rows)]
    return "\n".join(out) + "\n"
