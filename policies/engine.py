"""Rule evaluation shared by the pack, the guard and the audit: enforcement settings from a
``--policy-pack-config`` file, annotation exemptions (``policies/exemptions.py``), and findings.

Settings follow the Pulumi CLI's reading of the config file: schema defaults first, then
``"all"``, then each rule's own entry (a level string, or an object with ``enforcementLevel``
and the rule's properties).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.exemptions import PENDING, Exemption, exemption_of
from policies.resource import Resource, UnknownType
from policies.rules import Rule, Violation, all_rules, run_rule, severity_rank

EXEMPTIONS_POLICY = "policy-exemptions"
LEVELS = ("advisory", "mandatory", "remediate", "disabled")
CONFIG_DIR = Path(__file__).parent / "config"


class PolicyConfigError(Exception):
    """A policy config file that cannot be used: names the file, the entry and the fix."""

    def __init__(self, file: Path | str, entry: str, message: str, fix: str):
        self.file, self.entry, self.fix = str(file), entry, fix
        super().__init__(f"{file}: {entry}: {message} (fix: {fix})")


@dataclass(frozen=True)
class Settings:
    """Effective enforcement level and config of every rule for one stack."""

    levels: Mapping[str, str]
    config: Mapping[str, Mapping[str, Any]]
    source: str = "rule defaults"

    def level(self, rule: Rule) -> str:
        level = self.levels.get(rule.name, rule.enforcement)
        return "mandatory" if level == "remediate" else level

    def rule_config(self, rule: Rule) -> dict[str, Any]:
        return {**rule.defaults(), **self.config.get(rule.name, {})}


def default_settings() -> Settings:
    return Settings(levels={}, config={})


def load_settings(path: Path | str | None, rules: Sequence[Rule] | None = None) -> Settings:
    """Settings from a policy pack config file (``None``: every rule at its default)."""
    if path is None:
        return default_settings()
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise PolicyConfigError(path, "file", "does not exist", "pass policies/config/<stack>.json") from None
    except (OSError, ValueError) as e:
        raise PolicyConfigError(path, "file", f"is not readable JSON ({e})", "write a JSON object") from None
    return settings_from_mapping(raw, rules, path)


def settings_from_mapping(raw: Any, rules: Sequence[Rule] | None = None, source: Path | str = "config") -> Settings:
    if not isinstance(raw, dict):
        raise PolicyConfigError(
            source, "file", "is not a JSON object", 'write {"all": "advisory"} or {"rule-name": {...}}'
        )
    rules = list(rules) if rules is not None else all_rules()
    known = {r.name for r in rules} | {EXEMPTIONS_POLICY}
    levels: dict[str, str] = {}
    config: dict[str, dict[str, Any]] = {}
    raw = {k: v for k, v in raw.items() if k != "environments"}
    if "all" in raw:
        if raw["all"] not in LEVELS:
            raise PolicyConfigError(
                source, "all", f"{raw['all']!r} is not an enforcement level", f"use one of {', '.join(LEVELS)}"
            )
        levels = dict.fromkeys(known, raw["all"])
    for name, value in raw.items():
        if name == "all":
            continue
        if name not in known:
            raise PolicyConfigError(
                source, name, "is not a rule of this pack", "check the name against policies/expected_rules.txt"
            )
        if isinstance(value, str):
            value = {"enforcementLevel": value}
        if not isinstance(value, dict):
            raise PolicyConfigError(
                source,
                name,
                "must be a level string or an object",
                'write "mandatory" or {"enforcementLevel": "mandatory", ...}',
            )
        props = dict(value)
        level = props.pop("enforcementLevel", None)
        if level is not None:
            if level not in LEVELS:
                raise PolicyConfigError(
                    source, name, f"{level!r} is not an enforcement level", f"use one of {', '.join(LEVELS)}"
                )
            levels[name] = level
        if props:
            rule_ = next((r for r in rules if r.name == name), None)
            schema = rule_.config_schema if rule_ else {}
            unknown = sorted(set(props) - set(schema))
            if unknown:
                raise PolicyConfigError(
                    source,
                    name,
                    f"has no setting {', '.join(unknown)}",
                    f"settings of {name}: {', '.join(schema) or 'none'}",
                )
            config[name] = props
    return Settings(levels=levels, config=config, source=str(source))


def stack_settings(stack: str, config_path: Path | str | None = None) -> Settings:
    """The settings of a stack: ``config_path`` or ``policies/config/<stack>.json``."""
    return load_settings(config_path if config_path is not None else CONFIG_DIR / f"{stack}.json")


@dataclass(frozen=True)
class Finding:
    """One violation of one rule by one resource (``resource`` None: the stack itself)."""

    rule: Rule
    resource: Resource | None
    violation: Violation
    level: str
    exemption: Exemption | None = None

    @property
    def exempt(self) -> bool:
        """Covered by a valid exemption: reported, never failing."""
        return self.exemption is not None and self.exemption.valid

    @property
    def message(self) -> str:
        text = self.violation.message
        if self.exemption is not None and not self.exemption.valid:
            text += f" ({self.exemption.describe()})"
        return text

    @property
    def severity(self) -> str:
        return self.rule.severity


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    exemptions: list[tuple[Resource, Exemption]] = field(default_factory=list)
    resources: int = 0

    def failing(self, threshold: str = "low") -> list[Finding]:
        rank = severity_rank(threshold)
        return [f for f in self.findings if not f.exempt and severity_rank(f.severity) >= rank]


def judge(
    rule: Rule, resource: Resource | None, violations: Sequence[Violation], level: str, today: dt.date
) -> list[Finding]:
    """Findings for one rule's violations on one resource, with its exemption applied.

    While the resource's exemption annotations are unknown (preview) nothing is exempt: an
    exemption no one can read yet must not turn a preview green.
    """
    if not violations:
        return []
    exemption = exemption_of(resource, today) if resource is not None else None
    if isinstance(exemption, UnknownType):
        return [Finding(rule, resource, v, level, PENDING) for v in violations]
    applies = exemption if exemption is not None and rule.name in exemption.rules else None
    return [Finding(rule, resource, v, level, applies) for v in violations]


def evaluate(
    resources: Sequence[Resource],
    settings: Settings | None = None,
    today: dt.date | None = None,
    rules: Sequence[Rule] | None = None,
) -> Report:
    """Every enabled rule over ``resources``."""
    settings = settings or default_settings()
    today = today or dt.date.today()
    rules = list(rules) if rules is not None else all_rules()
    report = Report(resources=len(resources))
    for rule_ in rules:
        level = settings.level(rule_)
        if level == "disabled":
            continue
        config = settings.rule_config(rule_)
        if rule_.scope == "stack":
            subjects: Sequence[Resource] = resources
        else:
            subjects = [r for r in resources if rule_.applies_to(r)]
        grouped: dict[int, tuple[Resource | None, list[Violation]]] = {}
        for res, violation in run_rule(rule_, subjects, config, today):
            grouped.setdefault(id(res), (res, []))[1].append(violation)
        for res, violations in grouped.values():
            report.findings.extend(judge(rule_, res, violations, level, today))
    for res in resources:
        exemption = exemption_of(res, today)
        if isinstance(exemption, Exemption):
            report.exemptions.append((res, exemption))
    return report
