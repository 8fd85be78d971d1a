"""Exemptions by annotation: valid ones suppress and are reported, void ones exempt nothing."""

from __future__ import annotations

import datetime as dt

from policies.engine import EXEMPT, EXEMPT_REASON, EXEMPT_UNTIL, evaluate, exemption_of
from policies.model import UNKNOWN
from tests.policy.conftest import REPO, load, with_value

TODAY = dt.date(2026, 6, 1)
PRIVILEGED = REPO / "policies/rules/fixtures/no-privileged-containers/bad.yaml"
SITE = REPO / "policies/rules/fixtures/edge-audit-log/bad.yaml"


def annotate(res, annotations: dict, where=("metadata", "annotations")):
    return with_value(res, list(where), annotations)


def findings(resources, rule):
    return [f for f in evaluate(resources, today=TODAY).findings if f.rule.name == rule]


def test_a_valid_exemption_suppresses_the_rule_and_is_reported():
    res = annotate(load(PRIVILEGED)[0], {EXEMPT: "no-privileged-containers, run-as-non-root", EXEMPT_REASON: "GPU driver installer",
                                         EXEMPT_UNTIL: "2026-06-01"})
    report = evaluate([res], today=TODAY)
    (f,) = [f for f in report.findings if f.rule.name == "no-privileged-containers"]
    assert f.exempt and f not in report.failing("low")
    assert [(e.rules, e.valid) for _, e in report.exemptions] == [(("no-privileged-containers", "run-as-non-root"), True)]
    assert "until 2026-06-01: GPU driver installer" in report.exemptions[0][1].describe()


def test_an_exemption_covers_only_the_rules_it_names():
    res = annotate(load(PRIVILEGED)[0], {EXEMPT: "run-as-non-root", EXEMPT_REASON: "r", EXEMPT_UNTIL: "2027-01-01"})
    (f,) = findings([res], "no-privileged-containers")
    assert not f.exempt and f.exemption is None


def test_missing_reason_voids_the_exemption():
    res = annotate(load(PRIVILEGED)[0], {EXEMPT: "no-privileged-containers", EXEMPT_UNTIL: "2027-01-01"})
    (f,) = findings([res], "no-privileged-containers")
    assert not f.exempt
    assert f"{EXEMPT_REASON} is missing" in f.message and "is void" in f.message


def test_expired_exemption_is_void():
    res = annotate(load(PRIVILEGED)[0], {EXEMPT: "no-privileged-containers", EXEMPT_REASON: "r", EXEMPT_UNTIL: "2026-05-31"})
    (f,) = findings([res], "no-privileged-containers")
    assert not f.exempt and "expired on 2026-05-31" in f.message


def test_invalid_or_missing_date_is_void():
    for until in ("2026-13-01", "tomorrow", "2026-6-1", None):
        annotations = {EXEMPT: "no-privileged-containers", EXEMPT_REASON: "r"}
        if until is not None:
            annotations[EXEMPT_UNTIL] = until
        (f,) = findings([annotate(load(PRIVILEGED)[0], annotations)], "no-privileged-containers")
        assert not f.exempt and EXEMPT_UNTIL in f.message, until


def test_unknown_rule_names_are_reported():
    res = annotate(load(PRIVILEGED)[0], {EXEMPT: "no-such-rule", EXEMPT_REASON: "r", EXEMPT_UNTIL: "2027-01-01"})
    (_, exemption), = evaluate([res], today=TODAY).exemptions
    assert not exemption.valid and "no-such-rule is not a rule of this pack" in exemption.describe()


def test_component_resources_carry_exemptions_in_props_annotations():
    site = load(SITE)[0]
    assert findings([site], "edge-audit-log")
    exempt = annotate(site, {EXEMPT: "edge-audit-log", EXEMPT_REASON: "no disk", EXEMPT_UNTIL: "2026-12-31"}, ("annotations",))
    (f,) = findings([exempt], "edge-audit-log")
    assert f.exempt


def test_unknown_annotations_defer_the_judgement():
    res = annotate(load(PRIVILEGED)[0], UNKNOWN)
    assert exemption_of(res, TODAY) is UNKNOWN
    assert not findings([res], "no-privileged-containers")
