"""No job a pull request can start holds a prod secret.

A pull request's workflow file and code are the author's: anything a job triggered by
``pull_request`` or ``pull_request_target`` can read, the author can print. Such jobs may use
only the names in ``PR_ALLOWED_SECRETS`` and no prod environment; every job that does use a
secret runs in a protected environment, only from main."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / ".github" / "workflows"
PR_TRIGGERS = {"pull_request", "pull_request_target"}
# GITHUB_TOKEN is scoped by each job's `permissions:`; nothing else is given to pull requests.
PR_ALLOWED_SECRETS = frozenset({"GITHUB_TOKEN"})
SECRET_REF = re.compile(r"secrets\s*(?:\.\s*([A-Za-z_][A-Za-z0-9_]*)|\[\s*['\"]([^'\"]+)['\"]\s*\]|\b)")
PR_HEAD = re.compile(r"github\.event\.pull_request\.head\.|github\.head_ref|refs/pull/")


def load(text: str) -> dict[str, Any]:
    doc = yaml.safe_load(text) or {}
    if True in doc:  # PyYAML reads the bare key `on` as True
        doc["on"] = doc.pop(True)
    return doc


def triggers(doc: dict[str, Any]) -> set[str]:
    on = doc.get("on") or {}
    if isinstance(on, str):
        return {on}
    return set(on)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)


def secret_names(node: Any) -> set[str]:
    """Every secret a piece of workflow names; ``*`` for the whole context (toJSON(secrets),
    ``secrets: inherit``)."""
    names: set[str] = set()
    for text in strings(node):
        for m in SECRET_REF.finditer(text):
            names.add(m.group(1) or m.group(2) or "*")
    if isinstance(node, dict) and node.get("secrets") == "inherit":
        names.add("*")
    return names


def environment_name(job: dict[str, Any]) -> str:
    env = job.get("environment")
    return str(env.get("name", "") if isinstance(env, dict) else env or "")


def pr_violations(doc: dict[str, Any], where: str, workflows: Path = WORKFLOWS) -> list[str]:
    """What a pull request could reach in a workflow it triggers."""
    if not triggers(doc) & PR_TRIGGERS:
        return []
    problems = [
        f"{where}: workflow env: secret {n}" for n in sorted(secret_names(doc.get("env") or {}) - PR_ALLOWED_SECRETS)
    ]
    for name, job in (doc.get("jobs") or {}).items():
        at = f"{where}: jobs.{name}"
        problems += [f"{at}: secret {n}" for n in sorted(secret_names(job) - PR_ALLOWED_SECRETS)]
        if "prod" in environment_name(job).lower() or "matrix" in environment_name(job):
            problems.append(f"{at}: environment {environment_name(job)!r}")
        called = job.get("uses", "")
        if isinstance(called, str) and called.startswith("./.github/workflows/"):
            inner = load((workflows.parent.parent / called[2:]).read_text())
            inner["on"] = doc["on"]  # the caller's trigger reaches every job it calls
            problems += pr_violations(inner, f"{at} -> {called}", workflows)
        if "pull_request_target" in triggers(doc):
            # The target branch's secrets with the pull request's code: never check it out.
            problems += [
                f"{at}: checks out the pull request's head"
                for text in strings(job.get("steps") or [])
                if PR_HEAD.search(text)
            ]
    return problems


def secret_scope_violations(doc: dict[str, Any], where: str) -> list[str]:
    """Jobs that use a secret must get it from a protected environment and run only on main."""
    problems = []
    if secret_names(doc.get("env") or {}) - PR_ALLOWED_SECRETS:
        problems.append(f"{where}: secrets in the workflow-level env reach every job")
    for name, job in (doc.get("jobs") or {}).items():
        if not secret_names(job) - PR_ALLOWED_SECRETS:
            continue
        if not environment_name(job):
            problems.append(f"{where}: jobs.{name}: uses secrets outside a protected environment")
        if job.get("if") != "github.ref == 'refs/heads/main'":
            problems.append(f"{where}: jobs.{name}: uses secrets without `if: github.ref == 'refs/heads/main'`")
    return problems


def workflow_files() -> list[Path]:
    return sorted([*WORKFLOWS.glob("*.yml"), *WORKFLOWS.glob("*.yaml")])


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_no_job_a_pull_request_starts_holds_a_prod_secret(path: Path) -> None:
    assert pr_violations(load(path.read_text()), path.name) == []


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_secrets_live_in_protected_environments_on_main_only(path: Path) -> None:
    assert secret_scope_violations(load(path.read_text()), path.name) == []


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_every_workflow_declares_minimal_permissions(path: Path) -> None:
    doc = load(path.read_text())
    assert doc.get("permissions") == {"contents": "read"}, "the default token may only read the repository"
    for name, job in (doc.get("jobs") or {}).items():
        granted = job.get("permissions", doc["permissions"])
        writes = {scope for scope, level in granted.items() if level == "write"}
        assert writes <= {"pull-requests"}, f"jobs.{name} may write {sorted(writes)}"
        if writes:
            steps = job.get("steps") or []
            assert not any("actions/checkout" in s.get("uses", "") or "run" in s for s in steps), (
                f"jobs.{name} can write to the pull request, so it runs no code and checks out nothing"
            )


def test_the_pull_request_preview_is_dev_only_and_prod_preview_is_protected() -> None:
    pr = load((WORKFLOWS / "preview.yml").read_text())
    assert triggers(pr) == {"pull_request"}
    assert {job.get("env", {}).get("STACK") for job in pr["jobs"].values()} - {None} == {"dev"}
    prod = load((WORKFLOWS / "preview-prod.yml").read_text())
    assert triggers(prod) == {"push", "workflow_dispatch"} and prod["on"]["push"]["branches"] == ["main"]
    (job,) = prod["jobs"].values()
    assert job["environment"] == "prod" and job["env"]["STACK"] == "prod"


HOSTILE = {
    "today's preview": """
on: {pull_request: {branches: [main]}}
permissions: {contents: read, pull-requests: write}
jobs:
  preview:
    strategy: {matrix: {stack: [dev, prod]}}
    env:
      PULUMI_CONFIG_PASSPHRASE: ${{ matrix.stack == 'prod' && secrets.PULUMI_CONFIG_PASSPHRASE_PROD
        || secrets.PULUMI_CONFIG_PASSPHRASE_DEV }}
      AWS_SECRET_ACCESS_KEY: ${{ secrets.AWS_SECRET_ACCESS_KEY }}
    steps: [{run: scripts/bootstrap}]
""",
    "bracket syntax": "on: pull_request\njobs: {a: {steps: [{run: \"echo ${{ secrets['SSH_KEY'] }}\"}]}}\n",
    "whole context": 'on: [pull_request]\njobs: {a: {steps: [{run: "echo ${{ toJSON(secrets) }}"}]}}\n',
    "prod environment": "on: pull_request\njobs: {a: {environment: {name: prod}, steps: [{run: 'true'}]}}\n",
    "target with the head": """
on: pull_request_target
jobs:
  a:
    steps: [{uses: actions/checkout@v4, with: {ref: '${{ github.event.pull_request.head.sha }}'}}]
""",
    "workflow env": "on: pull_request\nenv: {T: '${{ secrets.DEPLOY_TOKEN }}'}\njobs: {a: {steps: [{run: 'true'}]}}\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_the_check_finds_what_a_pull_request_could_leak(name: str) -> None:
    assert pr_violations(load(HOSTILE[name]), name)


def test_a_called_workflow_is_checked_with_the_callers_trigger(tmp_path: Path) -> None:
    workflows = tmp_path / ".github" / "workflows"
    workflows.mkdir(parents=True)
    (workflows / "deploy.yml").write_text(
        "on: workflow_call\njobs: {d: {steps: [{run: 'echo ${{ secrets.PROD_KEY }}'}]}}\n"
    )
    caller = load("on: pull_request\njobs: {c: {uses: ./.github/workflows/deploy.yml}}\n")
    assert pr_violations(caller, "caller.yml", workflows) == [
        "caller.yml: jobs.c -> ./.github/workflows/deploy.yml: jobs.d: secret PROD_KEY"
    ]
    inherit = load("on: pull_request\njobs: {c: {uses: octo/x/.github/workflows/y.yml@v1, secrets: inherit}}\n")
    assert pr_violations(inherit, "caller.yml") == ["caller.yml: jobs.c: secret *"]
