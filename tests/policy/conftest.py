"""Shared helpers of the policy tests: rule fixtures, property paths, pinned tools, the audit CLI
and a fake Kubernetes API server for it."""

from __future__ import annotations

import copy
import itertools
import json
import re
import shutil
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pytest

from components.contract import cache_dir
from policies.resource import Resource
from policies.rules import Rule, all_rules
from policies.sources import resources_from_fixture

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"
PYTHON = sys.executable
_STEP = re.compile(r'\.?([^.\[\]"]+)|\[(\d+)\]|\["([^"]+)"\]')


def audit(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``python -m policies.audit ARGS`` as a user runs it."""
    return subprocess.run([PYTHON, "-m", "policies.audit", *args], capture_output=True, text=True, cwd=cwd, timeout=60)


class FakeApiServer(BaseHTTPRequestHandler):
    """A Kubernetes API server on loopback that answers list calls from ``objects`` (by path; an
    empty list elsewhere), refuses the paths in ``forbidden`` with 403, and records the
    Authorization header of every request in ``seen_auth``."""

    objects: ClassVar[dict[str, list[dict[str, Any]]]] = {}
    forbidden: ClassVar[frozenset[str]] = frozenset()
    seen_auth: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        path = self.path.split("?")[0]
        if path in self.forbidden:
            self.send_response(403)
            self.end_headers()
            return
        body = json.dumps({"kind": "List", "metadata": {}, "items": self.objects.get(path, [])}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def pinned(variable: str) -> str | None:
    """The version scripts/versions.env pins as ``variable`` (without a leading ``v``)."""
    m = re.search(rf"^{variable}=v?(\S+)$", (REPO / "scripts/versions.env").read_text(), re.M)
    return m[1] if m else None


def built_tool(name: str, variable: str) -> Path | None:
    """The tool scripts/tools.sh built at its pinned version, else the one on PATH."""
    version = pinned(variable)
    built = cache_dir() / "toolchain" / f"{name}-{version}" / name if version else None
    if built is not None and built.is_file():
        return built
    found = shutil.which(name)
    return Path(found) if found else None


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
    for step, nxt in itertools.pairwise(path):
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
