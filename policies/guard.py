"""In-program guard: the pack's resource rules, applied while the program registers resources.

``install_guard("prod")`` registers a stack-wide resource transform. Every resource the
program constructs afterwards is checked against the rules at the stack's enforcement levels
(``policies/config/<stack>.json``): a mandatory violation stops the program with
:class:`PolicyViolationError` naming the resource, the rule and the fix; advisory violations
and exemptions are logged as warnings. Values that are not known yet (unresolved outputs) never
fail; CrossGuard checks them again at update. Stack-level rules run in the CrossGuard pack only.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.rpc import is_rpc_secret, unwrap_rpc_secret

from policies.engine import Finding, Settings, judge, stack_settings
from policies.exemptions import Exemption, exemption_of
from policies.resource import DYNAMIC, UNKNOWN, Resource, Secret, neutralize
from policies.rules import Rule, all_rules
from policies.sdk_patches import on_failed_registrations


class PolicyViolationError(pulumi.RunError):
    """Mandatory policy violations of one resource; one line per violation with its fix."""

    def __init__(self, stack: str, findings: list[Finding]):
        self.stack = stack
        self.findings = findings
        lines = [
            f"{f.resource.label if f.resource else 'stack'} violates {f.rule.name} ({f.rule.severity}, mandatory "
            f"in stack {stack}): {f.message} (fix: {f.rule.remediation})"
            for f in findings
        ]
        super().__init__("policy guard refused the resource:\n  " + "\n  ".join(lines))


async def resolve(value: Any) -> Any:
    """A transform's property value in the neutral model: outputs awaited (they arrive resolved
    from the engine), unknown outputs as UNKNOWN, secret outputs and rpc secrets as Secret."""
    if isinstance(value, pulumi.Output):
        if not await value.is_known():
            return UNKNOWN
        inner = await resolve(await value.future(with_unknowns=True))
        return Secret(inner) if await value.is_secret() else inner
    if is_rpc_secret(value):
        return Secret(await resolve(unwrap_rpc_secret(value)))
    if isinstance(value, Mapping):
        return {str(k): await resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [await resolve(v) for v in value]
    return neutralize(value)


def evaluate_resource(res: Resource, settings: Settings, rules: list[Rule], today: dt.date) -> list[Finding]:
    """Findings of every enabled resource rule that applies to ``res``."""
    findings: list[Finding] = []
    for rule in rules:
        if rule.scope != "resource" or not rule.applies_to(res):
            continue
        level = settings.level(rule)
        if level == "disabled":
            continue
        findings += judge(rule, res, rule.run(res, settings.rule_config(rule), today), level, today)
    return findings


def make_transform(stack: str, settings: Settings, today: dt.date | None = None) -> Callable[[Any], Awaitable[None]]:
    """The resource transform :func:`install_guard` registers (also usable directly)."""
    rules = [r for r in all_rules() if r.scope == "resource"]

    async def guard(args: pulumi.ResourceTransformArgs) -> None:
        key = args.type_.rsplit(":", 1)[-1] if args.type_.startswith("kubernetes:") else args.type_
        if args.type_ != DYNAMIC and not any(r.reads_type(key, args.type_) for r in rules):
            return None
        props = await resolve(args.props or {})
        res = Resource(args.type_, args.name, props, source=f"{args.type_}::{args.name}")
        day = today or dt.date.today()
        findings = evaluate_resource(res, settings, rules, day)
        exemption = exemption_of(res, day)
        if isinstance(exemption, Exemption):
            pulumi.log.warn(f"policy: {res.label}: {exemption.describe()}")
        for f in findings:
            if f.level == "advisory" and not f.exempt:
                pulumi.log.warn(
                    f"policy: {res.label} violates {f.rule.name} ({f.rule.severity}, advisory): "
                    f"{f.message} (fix: {f.rule.remediation})"
                )
        refused = [f for f in findings if f.level == "mandatory" and not f.exempt]
        if refused:
            error = PolicyViolationError(stack, refused)
            _REFUSALS.append(error)
            raise error
        return None

    return guard


_REFUSALS: list[PolicyViolationError] = []


def _first_refusal() -> PolicyViolationError | None:
    """What a failed registration is shown as once the guard refused a resource.

    Raised in a transform, the refusal reaches the engine through the callback server and comes
    back as the failed registration's generic exception, which the language host would print
    with a traceback; the refusal itself is a RunError, shown as its message."""
    return _REFUSALS[0] if _REFUSALS else None


def install_guard(stack: str, config_path: str | Path | None = None) -> None:
    """Check every resource registered from now on against the stack's enforcement file
    (``config_path`` or ``policies/config/<stack>.json``); call it first in the program."""
    on_failed_registrations(_first_refusal)
    pulumi.runtime.register_resource_transform(make_transform(stack, stack_settings(stack, config_path)))
