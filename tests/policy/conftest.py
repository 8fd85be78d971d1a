"""Shared helpers of the policy tests: rule fixtures and property paths."""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from policies.model import Resource
from policies.rules import Rule, all_rules
from policies.sources import resources_from_fixture

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
PYTHON = sys.executable
_STEP = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\["([^"]+)"\]')


def fixture_cases() -> list[tuple[Rule, Path]]:
    return [(rule, f) for rule in all_rules() for f in sorted(rule.fixtures.glob("*.yaml"))]


def case_id(case: tuple[Rule, Path]) -> str:
    return f"{case[0].name}/{case[1].stem}"


def parse_path(path: str) -> list[str | int]:
    """``a.b[0]["c.d"]`` -> ``["a", "b", 0, "c.d"]`` (the paths rules put in violations)."""
    steps: list[str | int] = []
    for m in _STEP.finditer(path):
        plain, index, quoted = m.groups()
        steps.append(int(index) if index is not None else quoted if quoted is not None else plain)
    return steps


def with_value(res: Resource, path: list[str | int], value: Any) -> Resource:
    """A copy of ``res`` with ``value`` at ``path`` (containers created as needed)."""
    props = copy.deepcopy(dict(res.props))
    cur: Any = props
    for step, nxt in zip(path, path[1:]):
        if isinstance(step, int):
            cur = cur[step]
        else:
            cur = cur.setdefault(step, [] if isinstance(nxt, int) else {})
    if isinstance(path[-1], int):
        cur[path[-1]] = value
    else:
        cur[path[-1]] = value
    return Resource(res.type, res.name, props, urn=res.urn, source=res.source, parent=res.parent, cluster=res.cluster)


@pytest.fixture(scope="session")
def rules() -> list[Rule]:
    return all_rules()


def load(path: Path) -> list[Resource]:
    return resources_from_fixture(path)
