"""Exemption annotations: a resource may be exempted from named rules, with a reason, until a
date at most :data:`MAX_DAYS` ahead.

    edgefleet.io/policy-exempt: no-host-path-volumes, read-only-root-filesystem
    edgefleet.io/policy-exempt-reason: GPU driver installer needs /dev
    edgefleet.io/policy-exempt-until: 2026-08-31

Kubernetes objects carry them in ``metadata.annotations``, the fleet's own components in their
``annotations`` input. Anything wrong with them voids the whole exemption: an unknown rule, a
critical rule (never exemptable), a missing reason, a date that is not ``YYYY-MM-DD``, past or
too far ahead, and any other ``edgefleet.io/policy-*`` key (a misspelt key must not pass for
one that works). A void exemption exempts nothing and is a violation of its own rule.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.resource import Resource, UnknownType, dig, given, reveal
from policies.rules import Rule, all_rules, key_path

PREFIX = "edgefleet.io/policy-"
EXEMPT = "edgefleet.io/policy-exempt"
EXEMPT_REASON = "edgefleet.io/policy-exempt-reason"
EXEMPT_UNTIL = "edgefleet.io/policy-exempt-until"
KEYS = (EXEMPT, EXEMPT_REASON, EXEMPT_UNTIL)
MAX_DAYS = 90


@dataclass(frozen=True)
class Exemption:
    """Exemption annotations found on a resource. ``problems`` void it; ``fields`` names the
    annotation each problem is about."""

    rules: tuple[str, ...]
    reason: str
    until: str
    problems: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        names = ", ".join(self.rules)
        if self.valid:
            return f"exempt from {names} until {self.until}: {self.reason}"
        return f"exemption{' from ' + names if names else ''} is void: {'; '.join(self.problems)}"


# A violation whose resource's exemption annotations are not known yet (preview) is not exempt.
PENDING = Exemption((), "", "", ("its exemption annotations are not known yet",))


def annotations_path(res: Resource) -> str:
    return "metadata.annotations" if res.type.startswith("kubernetes:") else "annotations"


def annotations_of(res: Resource) -> Any:
    # given(): a patch that sets no annotations sets no exemption either.
    if res.type.startswith("kubernetes:"):
        return given(res.props, "metadata", "annotations")
    return dig(res.props, "annotations")


def _ours(key: Any) -> bool:
    """An annotation key meant for the policy engine, spelt right or not."""
    if not isinstance(key, str):
        return False
    domain, _, name = key.lower().partition("/")
    return domain.endswith("edgefleet.io") and (name.startswith("policy") or "exempt" in name)


def exemption_of(
    res: Resource, today: dt.date, rules: Mapping[str, Rule] | None = None
) -> Exemption | UnknownType | None:
    """The resource's exemption; ``None`` if it has no exemption annotation, UNKNOWN if they
    cannot be read yet. ``rules`` (default: the registry) is what rule names are checked against."""
    ann = annotations_of(res)
    if isinstance(ann, UnknownType):
        return ann
    if not isinstance(ann, Mapping):
        return None
    ours = {k: reveal(v) for k, v in ann.items() if _ours(k)}
    if not ours:
        return None
    unknown = next((v for v in ours.values() if isinstance(v, UnknownType)), None)
    if unknown is not None:
        return unknown
    registry = rules if rules is not None else {r.name: r for r in all_rules()}
    problems: list[tuple[str, str]] = []
    for key in sorted(set(ours) - set(KEYS)):
        problems.append((key, f"{key} is not an exemption annotation (use {', '.join(KEYS)})"))
    names, reason, until = (ours.get(k) for k in KEYS)
    if names is not None and not isinstance(names, str):
        problems.append((EXEMPT, f"{EXEMPT} must be a comma-separated list of rule names"))
        names = None
    listed = tuple(n.strip() for n in (names or "").split(",") if n.strip())
    if not listed:
        problems.append((EXEMPT, f"{EXEMPT} names no rule"))
    for name in listed:
        rule = registry.get(name)
        if rule is None:
            problems.append((EXEMPT, f"{name} is not a rule of this pack"))
        elif rule.severity == "critical":
            problems.append((EXEMPT, f"{name} is critical and cannot be exempted"))
    if not isinstance(reason, str) or not reason.strip():
        problems.append((EXEMPT_REASON, f"{EXEMPT_REASON} is missing"))
    problems += [(EXEMPT_UNTIL, p) for p in _expiry_problems(until, today)]
    return Exemption(
        listed,
        str(reason or "").strip(),
        str(until or ""),
        tuple(p for _, p in problems),
        tuple(k for k, _ in problems),
    )


def _expiry_problems(until: Any, today: dt.date) -> list[str]:
    if until is None or until == "":
        return [f"{EXEMPT_UNTIL} is missing"]
    try:
        if not isinstance(until, str) or len(until) != 10:
            raise ValueError
        expiry = dt.date.fromisoformat(until)
    except ValueError:
        return [f"{EXEMPT_UNTIL} {until!r} is not a YYYY-MM-DD date"]
    latest = today + dt.timedelta(days=MAX_DAYS)
    if expiry < today:
        return [f"expired on {until}"]
    if expiry > latest:
        return [f"{EXEMPT_UNTIL} {until} is more than {MAX_DAYS} days ahead (at most {latest.isoformat()})"]
    return []


def problem_paths(res: Resource, exemption: Exemption) -> list[str]:
    """The property path of each problem's annotation, for violations."""
    base = annotations_path(res)
    return [key_path(base, key) for key in exemption.fields]
