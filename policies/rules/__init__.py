"""The rule registry: every security rule, once, for all three callers.

A rule is a pure function plus metadata. Resource rules take ``(resource, config)`` and stack
rules ``(resources, config)``; both return a list of :class:`Violation`. ``config`` is the rule's
own settings (its schema defaults overlaid with the policy pack config of the stack), so the
same function serves the CrossGuard pack (``policies/__main__.py``), the in-program guard
(``policies/guard.py``) and the audit CLI (``python -m policies.audit``).

A rule whose ``dated`` flag is set also takes the day it judges for (exemption expiry), as a
third argument. Good and bad fixtures for each rule live in ``policies/rules/fixtures/<rule-name>/``.
"""

from __future__ import annotations

import datetime as dt
import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from policies.resource import Resource

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = ("low", "medium", "high", "critical")
Level = Literal["advisory", "mandatory", "disabled"]
Scope = Literal["resource", "stack"]
CATEGORIES = ("pod-security", "workload", "network", "edge-install", "stack", "policy")
FIXTURES = Path(__file__).parent / "fixtures"
_MODULES = ("pod_security", "workload_hygiene", "network", "edge", "stack", "exemptions")
# Targets that match by shape rather than by name: every Kubernetes object, every resource.
ANY_KUBERNETES = "kubernetes:*"
ANY_RESOURCE = "*"


@dataclass(frozen=True, slots=True)
class Violation:
    """One problem a rule found. ``path`` names the property (``spec.template.spec...``);
    ``resource`` is set by stack rules to say which resource it is about (``None``: the stack)."""

    message: str
    path: str = ""
    resource: Resource | None = None


@dataclass(frozen=True)
class Rule:
    name: str
    title: str
    category: str
    severity: Severity
    description: str
    remediation: str
    enforcement: Level
    targets: frozenset[str]
    check: Callable[..., list[Violation]]
    scope: Scope = "resource"
    config_schema: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dated: bool = False

    def defaults(self) -> dict[str, Any]:
        """The rule's config with only schema defaults applied."""
        return {k: v["default"] for k, v in self.config_schema.items() if "default" in v}

    def applies_to(self, resource: Resource) -> bool:
        return self.reads_type(resource.key, resource.type)

    def reads_type(self, key: str, type_: str) -> bool:
        """Whether the rule reads resources of this key (kind, or type token) and type token."""
        return (
            key in self.targets
            or ANY_RESOURCE in self.targets
            or (ANY_KUBERNETES in self.targets and type_.startswith("kubernetes:"))
        )

    def run(self, subject: Any, config: Mapping[str, Any], today: dt.date | None = None) -> list[Violation]:
        """The check on a resource (or, for a stack rule, all resources)."""
        if self.dated:
            return self.check(subject, config, today or dt.date.today())
        return self.check(subject, config)

    @property
    def fixtures(self) -> Path:
        return FIXTURES / self.name


def key_path(base: str, key: str) -> str:
    """``base.key``, or ``base["key"]`` when the key itself has dots or brackets."""
    part = f'["{key}"]' if any(c in key for c in '.[]"') else f".{key}"
    return f"{base}{part}" if base else part.lstrip(".")


_REGISTRY: dict[str, Rule] = {}


def rule(
    *,
    name: str,
    title: str,
    category: str,
    severity: Severity,
    description: str,
    remediation: str,
    targets: frozenset[str] | set[str],
    enforcement: Level | None = None,
    scope: Scope = "resource",
    config_schema: Mapping[str, Mapping[str, Any]] | None = None,
    dated: bool = False,
) -> Callable[[Callable[..., list[Violation]]], Callable[..., list[Violation]]]:
    """Register the decorated check function as a rule.

    The default enforcement level is mandatory for high and critical rules and advisory
    otherwise; a stack's policy config file overrides it.
    """
    if category not in CATEGORIES:
        raise ValueError(f"rule {name}: unknown category {category!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"rule {name}: unknown severity {severity!r}")

    def register(fn: Callable[..., list[Violation]]) -> Callable[..., list[Violation]]:
        if name in _REGISTRY:
            raise ValueError(f"rule {name} is registered twice")
        _REGISTRY[name] = Rule(
            name=name,
            title=title,
            category=category,
            severity=severity,
            description=description,
            remediation=remediation,
            enforcement=enforcement or ("mandatory" if severity in ("high", "critical") else "advisory"),
            targets=frozenset(targets),
            check=fn,
            scope=scope,
            config_schema=dict(config_schema or {}),
            dated=dated,
        )
        return fn

    return register


def all_rules() -> list[Rule]:
    """Every registered rule, in a stable order (category, then name)."""
    for module in _MODULES:
        importlib.import_module(f"policies.rules.{module}")
    return sorted(_REGISTRY.values(), key=lambda r: (CATEGORIES.index(r.category), r.name))


def get_rule(name: str) -> Rule | None:
    all_rules()
    return _REGISTRY.get(name)


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def run_rule(
    rule_: Rule, resources: Sequence[Resource], config: Mapping[str, Any], today: dt.date | None = None
) -> list[tuple[Resource | None, Violation]]:
    """Apply one rule to a set of resources: ``(resource, violation)`` pairs.

    For a stack rule the resource is the one the violation names (``None``: the stack).
    """
    if rule_.scope == "stack":
        return [(v.resource, v) for v in rule_.run(resources, config, today)]
    out: list[tuple[Resource | None, Violation]] = []
    for res in resources:
        if rule_.applies_to(res):
            out.extend((res, v) for v in rule_.run(res, config, today))
    return out
