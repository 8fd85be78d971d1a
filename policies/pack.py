"""The CrossGuard policy pack, built from the rule registry.

Every rule becomes one ``ResourceValidationPolicy`` or ``StackValidationPolicy`` with the same
name, severity, description, remediation, default enforcement level and config schema. One
more advisory policy, ``policy-exemptions``, reports every exemption annotation in every run
(valid ones as a reminder, void ones with the reason; those also fail the rule
``valid-policy-exemption``).

pulumi-policy hands policies their properties with secrets unwrapped, so a policy could not
tell a secret SSH key from a plain one. :func:`keep_secrets_visible` makes the analyzer pass
the engine's properties through :func:`policies.resource.neutralize` instead (through
:mod:`policies.sdk_patches`), which keeps secret and unknown markers; rules then never raise
``UnknownValueError`` and never fail on an unknown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    Policy,
    PolicyConfigSchema,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from policies.engine import EXEMPTIONS_POLICY, Finding, judge
from policies.exemptions import Exemption, exemption_of
from policies.resource import Resource, neutralize
from policies.rules import Rule, Violation, all_rules
from policies.sdk_patches import replace_policy_deserializer

PACK_NAME = "edgefleet-security"


def _props(props: Any) -> dict[str, Any]:
    # Already neutral when keep_secrets_visible() is in force; otherwise unwrap the proxies.
    if isinstance(props, MappingProxyType):
        return dict(props)
    return neutralize(props) if isinstance(props, Mapping) else {}


def resource_from_args(args: ResourceValidationArgs | Any) -> Resource:
    """The neutral resource of a CrossGuard argument bag (or a stack's PolicyResource)."""
    parent = getattr(getattr(args, "opts", None), "parent", None) or ""
    provider = getattr(args, "provider", None)
    return Resource(
        args.resource_type,
        args.name,
        _props(args.props),
        urn=args.urn,
        source=args.urn,
        parent=parent,
        cluster=provider.urn if provider is not None else "",
    )


def _deserialize(props: dict[str, Any], proxy_secrets: bool = False) -> Mapping[str, Any]:
    # A MappingProxyType is not a dict, so the SDK's unknown-checking proxy leaves it alone.
    return MappingProxyType(neutralize(props))


def keep_secrets_visible() -> None:
    """Make the pack's analyzer deserialize properties into the neutral model (idempotent)."""
    replace_policy_deserializer(_deserialize)


def _report(findings: list[Finding], report_violation: Any, stack: bool) -> None:
    for f in findings:
        if f.exempt:
            continue  # reported by policy-exemptions
        # The engine shows the resource beside the message; the remediation goes last, on its
        # own line, where scripts/pr-preview finds it.
        text = f"{f.message}\nRemediation: {f.rule.remediation}"
        if stack:
            report_violation(text, f.resource.urn if f.resource is not None and f.resource.urn else None)
        else:
            report_violation(text)


def _resource_policy(rule: Rule) -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: Any) -> None:
        res = resource_from_args(args)
        if not rule.applies_to(res):
            return
        config = {**rule.defaults(), **dict(args.get_config() or {})}
        today = dt.date.today()
        # The level is applied by the analyzer; findings only need the exemption.
        _report(judge(rule, res, rule.run(res, config, today), "", today), report_violation, stack=False)

    return ResourceValidationPolicy(validate=validate, **_metadata(rule))


def _stack_policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: Any) -> None:
        resources = [resource_from_args(r) for r in args.resources]
        config = {**rule.defaults(), **dict(args.get_config() or {})}
        today = dt.date.today()
        findings: list[Finding] = []
        grouped: dict[int, tuple[Resource | None, list[Violation]]] = {}
        for v in rule.run(resources, config, today):
            grouped.setdefault(id(v.resource), (v.resource, []))[1].append(v)
        for res, violations in grouped.values():
            findings += judge(rule, res, violations, "", today)
        _report(findings, report_violation, stack=True)

    return StackValidationPolicy(validate=validate, **_metadata(rule))


def _metadata(rule: Rule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "description": rule.description,
        "display_name": rule.title,
        "enforcement_level": EnforcementLevel(rule.enforcement),
        "severity": Severity(rule.severity),
        "tags": [rule.category],
        "remediation_steps": rule.remediation,
        "config_schema": PolicyConfigSchema(properties={k: dict(v) for k, v in rule.config_schema.items()})
        if rule.config_schema
        else None,
    }


def _exemptions_policy() -> ResourceValidationPolicy:
    def validate(args: ResourceValidationArgs, report_violation: Any) -> None:
        exemption = exemption_of(resource_from_args(args), dt.date.today())
        if isinstance(exemption, Exemption):
            report_violation(exemption.describe())

    return ResourceValidationPolicy(
        name=EXEMPTIONS_POLICY,
        description="Reports every policy exemption annotation (edgefleet.io/policy-exempt) in every run.",
        display_name="Policy exemptions",
        validate=validate,
        enforcement_level=EnforcementLevel.ADVISORY,
        severity=Severity.LOW,
        tags=["exemptions"],
        remediation_steps=(
            "Fix the resource and remove the exemption before it expires; a void exemption exempts nothing "
            "and fails valid-policy-exemption."
        ),
    )


def build_policies() -> list[Policy]:
    """One CrossGuard policy per registered rule, plus the exemption reporter."""
    rules = all_rules()
    policies: list[Policy] = [_stack_policy(r) if r.scope == "stack" else _resource_policy(r) for r in rules]
    policies.append(_exemptions_policy())
    return policies
