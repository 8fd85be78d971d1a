"""Fleet status: one row per site, a summary line in Open Cluster Management's terms, and
three renderings (terminal table, JSON, Markdown). Rendering is pure.

Connectivity is what the preflight saw now: an offline site shows ``offline`` with the time
it was last seen (the end of its last successful update), never a stale ``ok``. Health is
what the site's API says now (the health gate's checks, read once): a site whose hosts answer
but whose cluster or workloads do not is ``degraded``, never ``available``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


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


def row_cells(r: SiteStatus) -> list[str]:
    models = ", ".join(f"{m}:{v}" for m, v in r.models.items()) or "-"
    return [
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


def render_json(rows: list[SiteStatus]) -> str:
    return json.dumps(
        {"summary": summary(rows), "sites": [{**asdict(r), "state": r.state, "applied": r.applied} for r in rows]},
        indent=2,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: list[SiteStatus], title: str = "Fleet status") -> str:
    lines = [
        f"### {title}",
        "",
        f"**{summary_line(rows)}**",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row_cells(r)) + " |" for r in rows]
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
    from rich.table import Table

    table = Table(title=summary_line(rows), title_justify="left")
    for col in COLUMNS:
        table.add_column(col, overflow="fold")
    for r in rows:
        cells = row_cells(r)
        style = STATE_STYLE.get(r.state, "")
        cells[2] = f"[{style}]{cells[2]}[/]" if style else cells[2]
        table.add_row(*cells)
    console.print(table)


def render_plain(rows: list[SiteStatus]) -> str:
    out = [summary_line(rows)]
    out += ["  ".join(f"{k}={v}" for k, v in zip(COLUMNS, row_cells(r), strict=True)) for r in rows]
    return "\n".join(out) + "\n"
