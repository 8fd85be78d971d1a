"""kube-score and the audit on the same corpus: the mapping documented in policies/KUBE-SCORE.md
must hold."""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from policies.engine import evaluate
from policies.sources import manifests_from_paths
from tests.policy.conftest import DATA, REPO, built_tool

CORPUS = DATA / "corpus"
ROW = re.compile(r"^\| `([a-z0-9-]+)` \| `([a-z0-9-]+)` \| (same|pack stricter|kube-score stricter) \| `([^`]+)` \|$")


BINARY = built_tool("kube-score", "KUBE_SCORE_VERSION")


@pytest.fixture(autouse=True)
def _kube_score_installed() -> None:
    if BINARY is None:
        pytest.fail("kube-score is not installed (fix: scripts/bootstrap tools)")


def mapping() -> list[tuple[str, str, str, str]]:
    rows = [ROW.match(line.strip()) for line in (REPO / "policies/KUBE-SCORE.md").read_text().splitlines()]
    return [m.groups() for m in rows if m]


@pytest.fixture(scope="module")
def kube_score() -> dict[str, set[str]]:
    """Failing kube-score checks per corpus file."""
    files = sorted(str(p) for p in CORPUS.glob("*.yaml"))
    run = subprocess.run(
        [
            str(BINARY),
            "score",
            "--enable-optional-test",
            "container-seccomp-profile",
            "--output-format",
            "json",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 1), run.stderr
    failing: dict[str, set[str]] = defaultdict(set)
    for obj in json.loads(run.stdout):
        for check in obj["checks"]:
            if not check["skipped"] and check["grade"] < 10:
                failing[Path(obj["file_name"]).name].add(check["check"]["id"])
    return failing


@pytest.fixture(scope="module")
def audit() -> dict[str, set[str]]:
    """Rules the audit reports per corpus file."""
    resources, problems = manifests_from_paths([CORPUS])
    assert not problems
    found: dict[str, set[str]] = defaultdict(set)
    for f in evaluate(resources).findings:
        found[Path(f.resource.source.rsplit(":", 1)[0]).name].add(f.rule.name)
    return found


def test_the_documented_table_is_complete():
    rows = mapping()
    assert len(rows) >= 10
    assert all((CORPUS / shown).is_file() for *_, shown in rows)


@pytest.mark.parametrize("row", mapping(), ids=lambda r: r[0])
def test_mapping_holds(row, kube_score, audit):
    rule, check, relation, shown = row
    files = sorted(p.name for p in CORPUS.glob("*.yaml"))
    ours = {f for f in files if rule in audit.get(f, set())}
    theirs = {f for f in files if check in kube_score.get(f, set())}
    if relation == "same":
        assert ours == theirs and shown in ours
    elif relation == "pack stricter":
        assert theirs <= ours and shown in ours - theirs
    else:
        assert ours <= theirs and shown in theirs - ours


def test_compliant_files_pass_the_audit(audit):
    assert not {f: rules for f, rules in audit.items() if f.startswith("good")}
