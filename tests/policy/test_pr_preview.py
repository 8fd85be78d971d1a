"""scripts/pr-preview on output of the real CLI (tests/policy/data/preview-*.json*, recorded from
`pulumi preview --json` with the pack and policies/config/prod.json on a two-site program)."""

from __future__ import annotations

import subprocess

from tests.policy.conftest import DATA, PYTHON, REPO

SCRIPT = REPO / "scripts" / "pr-preview"
EVENTS = DATA / "preview-events.jsonl"
DIGEST = DATA / "preview-digest.json"


def pr_preview(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, str(SCRIPT), *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_comment_from_the_event_stream():
    run = pr_preview("--stack", "prod", str(EVENTS))
    assert run.returncode == 0, run.stderr
    md = run.stdout
    assert md.startswith(
        "<!-- edgefleet-preview:prod -->\n### ❌ Pulumi preview of stack `prod`: 10 mandatory policy violations"
    )
    assert "**Changes:** 8 to create" in md
    assert "| Site | create |" in md and "| plant-1 | 4 |" in md and "| store-7 | 3 |" in md
    assert "- create `kubernetes:apps/v1:Deployment` store-7-counter" in md
    row = next(line for line in md.splitlines() if "`no-privileged-containers`" in line)
    assert row.startswith(
        "| mandatory | critical | `no-privileged-containers` | store-7 | `kubernetes:apps/v1:Deployment` "
        "store-7-counter |"
    )
    assert "container 'server' sets privileged: true" in row and "Remediation:" not in row
    assert row.endswith(
        "| Remove securityContext.privileged or set it to false; grant only the specific capability needed. |"
    )
    stack_row = next(line for line in md.splitlines() if "`secret-stack-outputs`" in line)
    assert "| (fleet-wide) |" in stack_row and "store7Kubeconfig is not a secret" in stack_row
    assert (
        "#### Policy exemptions" in md
        and "exempt from edge-audit-log until 2099-01-01: gateway has no disk for audit logs" in md
    )
    assert "preview failed" in md


def test_digest_alone_says_policy_results_are_missing():
    run = pr_preview("--stack", "prod", str(DIGEST))
    assert run.returncode == 0, run.stderr
    assert "| plant-1 | 4 |" in run.stdout and "Policy results are not part of the preview digest" in run.stdout


def test_digest_and_events_merge_and_stdin_works():
    merged = pr_preview("--stack", "prod", str(DIGEST), str(EVENTS)).stdout
    assert merged == pr_preview("--stack", "prod", str(EVENTS)).stdout
    assert pr_preview("--stack", "prod", stdin=EVENTS.read_text()).stdout == merged


def test_not_preview_json_exits_2():
    for text in ("", "hello", '{"some": "json"}'):
        run = pr_preview(stdin=text)
        assert run.returncode == 2 and run.stderr.startswith("pr-preview: ") and "Traceback" not in run.stderr


def test_the_script_is_executable_with_a_python3_shebang():
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert SCRIPT.stat().st_mode & 0o111
