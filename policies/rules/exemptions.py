"""The exemption annotations themselves: one that cannot be honoured is a violation."""

from __future__ import annotations

import datetime as dt
from typing import Any

from policies.exemptions import Exemption, exemption_of, problem_paths
from policies.resource import Resource
from policies.rules import ANY_RESOURCE, Violation, rule


@rule(
    name="valid-policy-exemption",
    title="Exemption annotations are valid",
    category="policy",
    severity="critical",
    description=(
        "Exemption annotations (edgefleet.io/policy-exempt, -reason, -until) name known, non-critical rules, give a "
        "reason and a YYYY-MM-DD expiry at most 90 days ahead, and no other edgefleet.io/policy-* key is set; a void "
        "exemption exempts nothing."
    ),
    remediation=(
        "Fix the annotation the message names: list rule names from policies/expected_rules.txt (critical rules cannot "
        "be exempted), add edgefleet.io/policy-exempt-reason, and set edgefleet.io/policy-exempt-until to a date "
        "within 90 days; or remove the exemption and fix the resource."
    ),
    targets={ANY_RESOURCE},
    dated=True,
)
def valid_policy_exemption(res: Resource, config: dict[str, Any], today: dt.date) -> list[Violation]:
    exemption = exemption_of(res, today)
    if not isinstance(exemption, Exemption):
        return []
    paths = problem_paths(res, exemption)
    return [Violation(problem, path) for problem, path in zip(exemption.problems, paths, strict=True)]
