"""Every rule against its fixtures, the registry against the checked-in list and the pack, and
the preview rule: an unknown value never fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from policies.engine import EXEMPTIONS_POLICY, evaluate
from policies.pack import build_policies
from policies.resource import UNKNOWN, Partial, Resource
from policies.rules import ANY_KUBERNETES, CATEGORIES, SEVERITIES, Rule, all_rules, run_rule
from tests.policy.conftest import REPO, case_id, fixture_cases, load, parse_path, with_value

CASES = fixture_cases()
BAD = [c for c in CASES if c[1].name.startswith("bad")]
KEBAB = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


def test_registry_matches_the_checked_in_list_and_the_pack():
    listed = [
        ln
        for ln in (REPO / "policies" / "expected_rules.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
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
        again = [
            v
            for r, v in run_rule(rule, patched, rule.defaults())
            if v.path == violation.path and r is not None and r.urn == target.urn
        ]
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


POD_RULES = [r for r in all_rules() if ANY_KUBERNETES in r.targets and "Deployment" in r.targets]


def _as_kind(deployment, api: str, kind: str, wrap) -> Resource:
    from policies.sources import k8s_type

    props = {"metadata": dict(deployment.props["metadata"]), "spec": wrap(deployment.props["spec"]["template"])}
    return Resource(k8s_type(api, kind), deployment.name, props)


CARRIERS = {
    "ReplicationController": ("v1", "ReplicationController", lambda t: {"replicas": 1, "template": t}),
    "Argo Rollout": ("argoproj.io/v1alpha1", "Rollout", lambda t: {"replicas": 2, "template": t}),
    "Knative-style nested template": (
        "serving.example.com/v1",
        "Service",
        lambda t: {"template": {"spec": {"revision": t}}},
    ),
    "job template of a CronJob-like CR": (
        "batch.example.com/v1",
        "Schedule",
        lambda t: {"jobTemplate": {"spec": {"template": t}}},
    ),
    "list of templates": (
        "workflows.example.com/v1",
        "Workflow",
        lambda t: {"templates": [{"name": "a", "template": t}]},
    ),
}


@pytest.mark.parametrize("carrier", CARRIERS, ids=str)
@pytest.mark.parametrize("rule", POD_RULES, ids=lambda r: r.name)
def test_pod_rules_read_pod_templates_whatever_kind_carries_them(rule: Rule, carrier: str):
    """Each Deployment bad fixture's pod template, moved into another kind, fails the rule too."""
    api, kind, wrap = CARRIERS[carrier]
    for path in sorted(rule.fixtures.glob("bad*.yaml")):
        deployment = load(path)[0]
        if deployment.kind != "Deployment":
            continue
        res = _as_kind(deployment, api, kind, wrap)
        found = run_rule(rule, [res], rule.defaults())
        assert found, f"{rule.name}/{path.name} in a {carrier}"
        assert all(v.path.startswith("spec.") for _, v in found), [v.path for _, v in found]
        good = (
            _as_kind(load(rule.fixtures / "good.yaml")[0], api, kind, wrap)
            if (rule.fixtures / "good.yaml").exists()
            else None
        )
        if good is not None and good.kind == kind:
            assert not run_rule(rule, [good], rule.defaults()), f"{rule.name}/good.yaml in a {carrier}"


def test_a_custom_resources_pod_template_path_is_reported():
    rule = next(r for r in all_rules() if r.name == "no-host-path-volumes")
    (res,) = load(REPO / "policies/rules/fixtures/no-host-path-volumes/bad-custom-resource-templates.yaml")
    assert [v.path for _, v in run_rule(rule, [res], {})] == [
        "spec.pytorchReplicaSpecs.Worker.template.spec.volumes[0].hostPath"
    ]


def test_a_patch_is_judged_on_what_it_sets():
    """What a patch leaves out stays as the live object has it: no rule fails on it, and what
    it does set is judged like any workload's."""

    (patch,) = load(REPO / "policies/rules/fixtures/no-privileged-containers/good-deployment-patch.yaml")
    assert isinstance(patch.props, Partial)
    assert not evaluate([patch]).findings, [(f.rule.name, f.message) for f in evaluate([patch]).findings]
    container = ["spec", "template", "spec", "containers", 0]
    for path, value, rule in [
        (["securityContext", "runAsUser"], 0, "run-as-non-root"),
        (["securityContext", "allowPrivilegeEscalation"], True, "no-privilege-escalation"),
        (["securityContext", "capabilities", "drop"], ["NET_RAW"], "drop-all-capabilities"),
        (["securityContext", "seccompProfile", "type"], "Unconfined", "seccomp-profile"),
        (["securityContext", "readOnlyRootFilesystem"], False, "read-only-root-filesystem"),
        (["image"], "docker.io/library/nginx:latest", "image-pinned-by-digest"),
        (["env"], [{"name": "API_TOKEN", "value": "abc"}], "no-env-credentials"),
    ]:
        bad = with_value(patch, container + path, value)
        assert rule in {f.rule.name for f in evaluate([bad]).findings}, rule
    host = with_value(patch, ["spec", "template", "spec", "hostPID"], True)
    assert "no-host-namespaces" in {f.rule.name for f in evaluate([host]).findings}
    apparmor = with_value(
        patch,
        ["spec", "template", "metadata", "annotations"],
        {"container.apparmor.security.beta.kubernetes.io/server": "unconfined"},
    )
    (f,) = [f for f in evaluate([apparmor]).findings if f.rule.name == "no-unconfined-apparmor"]
    assert (
        f.violation.path
        == 'spec.template.metadata.annotations["container.apparmor.security.beta.kubernetes.io/server"]'
    )


def test_a_namespace_patch_may_only_tighten_pod_security():
    rule = next(r for r in all_rules() if r.name == "namespace-patch-psa-restricted")
    fixtures = REPO / "policies/rules/fixtures/namespace-patch-psa-restricted"
    (patch,) = load(fixtures / "good-other-labels.yaml")
    for level, fails in [("restricted", False), ("baseline", True), ("privileged", True), (None, True)]:
        res = with_value(patch, ["metadata", "labels", "pod-security.kubernetes.io/enforce"], level)
        assert bool(run_rule(rule, [res], {})) is fails, level
    assert "namespace-psa-labels" not in {f.rule.name for f in evaluate(load(fixtures / "bad.yaml")).findings}


def test_helm_releases_are_refused_unless_allowed_by_name():
    rule = next(r for r in all_rules() if r.name == "no-opaque-helm-release")
    (release,) = load(REPO / "policies/rules/fixtures/no-opaque-helm-release/bad.yaml")
    (message,) = [v.message for _, v in run_rule(rule, [release], rule.defaults())]
    assert (
        message
        == "Release monitoring/node-exporter installs chart prometheus-node-exporter whose objects no policy rule sees"
    )
    assert not run_rule(rule, [release], {"allowedReleases": ["monitoring/node-exporter"]})
    assert run_rule(rule, [release], {"allowedReleases": ["default/node-exporter"]})
    unnamed = with_value(release, ["name"], UNKNOWN)
    assert run_rule(rule, [unnamed], {}) == [], "an auto-name not known yet is judged at update"
