"""Exemptions by annotation: valid ones suppress and are reported; anything wrong with one voids
it, exempts nothing and fails rule valid-policy-exemption."""

from __future__ import annotations

import datetime as dt

import pytest

from policies.engine import evaluate
from policies.exemptions import EXEMPT, EXEMPT_REASON, EXEMPT_UNTIL, exemption_of
from policies.resource import UNKNOWN
from tests.policy.conftest import REPO, load, with_value

TODAY = dt.date(2026, 6, 1)
HOST_PATH = REPO / "policies/rules/fixtures/no-host-path-volumes/bad.yaml"
PRIVILEGED = REPO / "policies/rules/fixtures/no-privileged-containers/bad.yaml"
SITE = REPO / "policies/rules/fixtures/edge-audit-log/bad.yaml"
VALIDITY = "valid-policy-exemption"


def annotate(res, annotations, where=("metadata", "annotations")):
    return with_value(res, list(where), annotations)


def exempt(path=HOST_PATH, rules="no-host-path-volumes", reason="GPU driver installer", until="2026-07-01", **extra):
    annotations = {EXEMPT: rules, EXEMPT_REASON: reason, EXEMPT_UNTIL: until, **extra}
    return annotate(load(path)[0], {k: v for k, v in annotations.items() if v is not None})


def findings(resources, rule):
    return [f for f in evaluate(resources, today=TODAY).findings if f.rule.name == rule]


def failing(resources, rule):
    return [f for f in evaluate(resources, today=TODAY).failing() if f.rule.name == rule]


def test_a_valid_exemption_suppresses_the_rule_and_is_reported():
    res = exempt(rules="no-host-path-volumes, run-as-non-root", until="2026-06-01")
    report = evaluate([res], today=TODAY)
    (f,) = [f for f in report.findings if f.rule.name == "no-host-path-volumes"]
    assert f.exempt and f not in report.failing("low")
    assert [(e.rules, e.valid) for _, e in report.exemptions] == [(("no-host-path-volumes", "run-as-non-root"), True)]
    assert "until 2026-06-01: GPU driver installer" in report.exemptions[0][1].describe()
    assert not findings([res], VALIDITY)


def test_an_exemption_covers_only_the_rules_it_names():
    (f,) = findings([exempt(rules="run-as-non-root")], "no-host-path-volumes")
    assert not f.exempt and f.exemption is None


def test_missing_reason_voids_the_exemption():
    res = exempt(reason=None)
    (f,) = findings([res], "no-host-path-volumes")
    assert not f.exempt
    assert f"{EXEMPT_REASON} is missing" in f.message and "is void" in f.message
    (v,) = failing([res], VALIDITY)
    assert v.violation.path == f'metadata.annotations["{EXEMPT_REASON}"]'


def test_expired_exemption_is_void():
    (f,) = findings([exempt(until="2026-05-31")], "no-host-path-volumes")
    assert not f.exempt and "expired on 2026-05-31" in f.message


def test_invalid_or_missing_date_is_void():
    for until in ("2026-13-01", "tomorrow", "2026-6-1", None):
        res = exempt(until=until)
        (f,) = findings([res], "no-host-path-volumes")
        assert not f.exempt and EXEMPT_UNTIL in f.message, until
        assert failing([res], VALIDITY), until


def test_expiry_is_capped_at_90_days():
    (f,) = findings([exempt(until="2026-08-30")], "no-host-path-volumes")
    assert f.exempt, "90 days ahead is allowed"
    res = exempt(until="2026-08-31")
    (f,) = findings([res], "no-host-path-volumes")
    assert not f.exempt
    assert f"{EXEMPT_UNTIL} 2026-08-31 is more than 90 days ahead (at most 2026-08-30)" in f.message
    assert failing([res], VALIDITY)


def test_critical_rules_cannot_be_exempted():
    res = exempt(path=PRIVILEGED, rules="no-privileged-containers")
    (f,) = findings([res], "no-privileged-containers")
    assert not f.exempt and f in evaluate([res], today=TODAY).failing("critical")
    assert "no-privileged-containers is critical and cannot be exempted" in f.message
    (v,) = failing([res], VALIDITY)
    assert v.severity == "critical" and v.violation.path == f'metadata.annotations["{EXEMPT}"]'


def test_one_unknown_rule_name_voids_the_whole_exemption():
    """A misspelt name beside a real one used to leave the real one exempt: the preview went green."""
    res = exempt(rules="no-host-path-volumes, run-as-nonroot")
    (f,) = findings([res], "no-host-path-volumes")
    assert not f.exempt and "run-as-nonroot is not a rule of this pack" in f.message
    (v,) = failing([res], VALIDITY)
    assert "run-as-nonroot is not a rule of this pack" in v.message


@pytest.mark.parametrize(
    "key",
    [
        f"{EXEMPT_UNTIL}l",
        "edgefleet.io/policy-exemption",
        "edgefleet.io/exempt-from",
        "Edgefleet.io/Policy-Exempt-Until",
    ],
)
def test_an_unknown_policy_annotation_fails_loudly(key):
    res = exempt(**{key: "2026-07-01"})
    (f,) = findings([res], "no-host-path-volumes")
    assert not f.exempt and f"{key} is not an exemption annotation" in f.message
    (v,) = failing([res], VALIDITY)
    assert v.violation.path == f'metadata.annotations["{key}"]'


def test_a_stray_policy_annotation_without_an_exemption_fails():
    res = annotate(
        load(REPO / "policies/rules/fixtures/no-privileged-containers/good.yaml")[0],
        {"edgefleet.io/policy-skip": "all"},
    )
    assert [f.message for f in failing([res], VALIDITY)] == [
        f"edgefleet.io/policy-skip is not an exemption annotation (use {EXEMPT}, {EXEMPT_REASON}, {EXEMPT_UNTIL})",
        f"{EXEMPT} names no rule",
        f"{EXEMPT_REASON} is missing",
        f"{EXEMPT_UNTIL} is missing",
    ]


def test_component_resources_carry_exemptions_in_props_annotations():
    site = load(SITE)[0]
    assert findings([site], "edge-audit-log")
    exempted = annotate(
        site, {EXEMPT: "edge-audit-log", EXEMPT_REASON: "no disk", EXEMPT_UNTIL: "2026-08-01"}, ("annotations",)
    )
    (f,) = findings([exempted], "edge-audit-log")
    assert f.exempt
    misspelt = annotate(
        site,
        {EXEMPT: "edge-audit-log", EXEMPT_REASON: "no disk", "edgefleet.io/policy-exempt-till": "2026-08-01"},
        ("annotations",),
    )
    (v, _) = failing([misspelt], VALIDITY)
    assert v.violation.path == 'annotations["edgefleet.io/policy-exempt-till"]'


def test_unknown_annotations_exempt_nothing():
    """At preview an exemption that cannot be read yet does not hide a known violation."""
    res = annotate(load(HOST_PATH)[0], UNKNOWN)
    assert exemption_of(res, TODAY) is UNKNOWN
    (f,) = failing([res], "no-host-path-volumes")
    assert "not known yet" in f.message
    partly = exempt(until=UNKNOWN)
    assert failing([partly], "no-host-path-volumes")
    assert not findings([res, partly], VALIDITY), "an unknown value is never itself a violation"
