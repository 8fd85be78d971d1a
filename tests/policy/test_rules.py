"""Every rule against its fixtures, the registry against the checked-in list and the pack, and
the preview rule: an unknown value never fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies.engine import EXEMPTIONS_POLICY, evaluate
from policies.model import UNKNOWN
from policies.pack import build_policies
from policies.rules import CATEGORIES, SEVERITIES, Rule, all_rules, run_rule
from tests.policy.conftest import REPO, case_id, fixture_cases, load, parse_path, with_value

CASES = fixture_cases()
BAD = [c for c in CASES if c[1].name.startswith("bad")]
KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def test_registry_matches_the_checked_in_list_and_the_pack():
    listed = [ln for ln in (REPO / "policies" / "expected_rules.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    registry = sorted(r.name for r in all_rules())
    pack = sorted(p.name for p in build_policies() if p.name != EXEMPTIONS_POLICY)
    assert listed == sorted(listed), "keep policies/expected_rules.txt sorted"
    assert registry == listed, f"added: {set(registry) - set(listed)}, dropped: {set(listed) - set(registry)}"
    assert pack == registry
    assert len(registry) >= 30


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.name)
def test_rule_metadata_is_complete(rule: Rule):
    assert KEBAB.match(rule.name)
    assert rule.severity in SEVERITIES and rule.category in CATEGORIES
    assert rule.enforcement in ("advisory", "mandatory")
    assert rule.title and rule.description.endswith((".", ")")) and rule.remediation
    assert rule.targets, "a rule must say which resource types it reads"
    names = sorted(p.name for p in rule.fixtures.glob("*.yaml"))
    assert any(n.startswith("good") for n in names) and any(n.startswith("bad") for n in names), names


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fixture(case: tuple[Rule, Path]):
    rule, path = case
    found = run_rule(rule, load(path), rule.defaults())
    if path.name.startswith("bad"):
        assert found, f"{rule.name} does not flag {path.name}"
        for _, v in found:
            assert v.message
    else:
        assert not found, [v.message for _, v in found]


@pytest.mark.parametrize("case", BAD, ids=case_id)
def test_an_unknown_value_is_not_a_violation(case: tuple[Rule, Path]):
    """Replacing the flagged property with an unknown (preview) value clears the violation."""
    rule, path = case
    resources = load(path)
    for res, violation in run_rule(rule, resources, rule.defaults()):
        if not violation.path:
            continue  # stack-wide findings are covered in test_stack_rules_wait_for_unknowns
        target = res if res is not None else resources[0]
        patched = [with_value(r, parse_path(violation.path), UNKNOWN) if r is target else r for r in resources]
        again = [v for r, v in run_rule(rule, patched, rule.defaults()) if v.path == violation.path and r is not None
                 and r.urn == target.urn]
        assert not again, f"{violation.path}: {[v.message for v in again]}"


def test_stack_rules_wait_for_unknowns():
    ns = "policies/rules/fixtures/namespace-default-deny/bad.yaml"
    resources = load(REPO / ns)
    rule = next(r for r in all_rules() if r.name == "namespace-default-deny")
    assert run_rule(rule, resources, {})
    policy = load(REPO / "policies/rules/fixtures/namespace-default-deny/good.yaml")[1]
    unknown_ns = with_value(policy, ["metadata", "namespace"], UNKNOWN)
    assert not run_rule(rule, [*resources, unknown_ns], {})


def test_stack_rules_keep_clusters_apart():
    """Two sites' namespaces of the same name are different namespaces."""
    rule = next(r for r in all_rules() if r.name == "namespace-default-deny")
    good = load(REPO / "policies/rules/fixtures/namespace-default-deny/good.yaml")
    bad = load(REPO / "policies/rules/fixtures/namespace-default-deny/bad.yaml")
    site_a = [with_value(r, ["metadata", "labels", "site"], "a") for r in good]
    site_b = [with_value(r, ["metadata", "labels", "site"], "b") for r in bad]
    assert not run_rule(rule, site_a + site_b, {}), "same cluster: the deny-all covers both"
    from dataclasses import replace

    split = [replace(r, cluster="provider-a") for r in site_a] + [replace(r, cluster="provider-b") for r in site_b]
    found = run_rule(rule, split, {})
    assert [res.cluster for res, _ in found] == ["provider-b"]


def test_good_fixtures_of_workload_rules_pass_every_workload_rule():
    """The compliant deployment the pod-security fixtures start from passes all resource rules."""
    baseline = load(REPO / "policies/rules/fixtures/no-privileged-containers/good.yaml")
    report = evaluate(baseline, rules=[r for r in all_rules() if r.scope == "resource"])
    assert not report.findings, [(f.rule.name, f.message) for f in report.findings]


def test_rules_read_every_workload_kind():
    """The pod spec is found where each kind keeps it."""
    rule = next(r for r in all_rules() if r.name == "no-privileged-containers")
    cron = load(REPO / "policies/rules/fixtures/no-privileged-containers/bad-cronjob.yaml")[0]
    assert run_rule(rule, [cron], {})[0][1].path.startswith("spec.jobTemplate.spec.template.spec.containers[0]")
    deployment = load(REPO / "policies/rules/fixtures/no-privileged-containers/bad.yaml")[0]
    pod_spec = deployment.props["spec"]["template"]["spec"]
    from policies.model import Resource

    for api, kind, props in [
        ("v1", "Pod", {"spec": pod_spec}),
        ("apps/v1", "StatefulSet", {"spec": {"template": {"spec": pod_spec}}}),
        ("apps/v1", "DaemonSet", {"spec": {"template": {"spec": pod_spec}}}),
        ("apps/v1", "ReplicaSet", {"spec": {"template": {"spec": pod_spec}}}),
        ("batch/v1", "Job", {"spec": {"template": {"spec": pod_spec}}}),
    ]:
        from policies.sources import k8s_type

        res = Resource(k8s_type(api, kind), "w", {"metadata": {"name": "w", "namespace": "x"}, **props})
        assert run_rule(rule, [res], {}), kind
