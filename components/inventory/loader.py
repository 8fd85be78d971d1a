"""Loading an inventory: YAML (through libyaml when PyYAML has it), ``defaults``, the schema, then
the cross-checks; every problem found is reported at once as ``file: field: message (fix: …)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from components.contract import Problem
from components.inventory.checks import cross_checks, file_checks
from components.inventory.paths import expand_path
from components.inventory.spec import Inventory
from components.schema import Hints, display_path, error_parts, location, yaml_error


class InventoryError(Exception):
    """An inventory that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class LoadedInventory:
    """A validated inventory and where it came from (paths resolve relative to it)."""

    path: Path
    inventory: Inventory

    @property
    def base(self) -> Path:
        return self.path.parent

    def resolve(self, value: str) -> Path:
        return expand_path(value, self.base)


# The fix each pydantic error without a validator of ours gets (see components.schema).
HINTS = Hints(
    missing="add this field",
    unknown="check the spelling against the inventory format in README.md",
    correct="correct the value; see the inventory format in README.md",
)


def _apply_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """``defaults.ssh`` fills each host's ssh block (host values win)."""
    defaults = raw.pop("defaults", None) or {}
    ssh_defaults = defaults.get("ssh", {}) if isinstance(defaults, dict) else {}
    for site in raw.get("sites") or []:
        if not isinstance(site, dict):
            continue
        for host in site.get("hosts") or []:
            if isinstance(host, dict) and isinstance(ssh_defaults, dict):
                host["ssh"] = {**ssh_defaults, **(host.get("ssh") or {})}
    return raw


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when PyYAML was built with it (a large inventory
    parses several times faster). libyaml words syntax errors more tersely, so a document it
    refuses is parsed again by the pure-Python parser, whose error names the offending token."""
    loader = getattr(yaml, "CSafeLoader", None)
    if loader is None:
        return yaml.safe_load(text)
    try:
        return yaml.load(text, Loader=loader)  # CSafeLoader is the safe loader
    except yaml.YAMLError:
        return yaml.safe_load(text)


def load_inventory(path: str | Path, *, check_files: bool = True) -> LoadedInventory:
    """Load and validate an inventory file; raise :class:`InventoryError` with every problem."""
    path = Path(path)
    shown_path = display_path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        fix = "check the `edgefleet:inventory` config value"
        raise InventoryError([f"{shown_path}: cannot read the inventory: {exc.strerror} (fix: {fix})"]) from None
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        where, message = yaml_error(exc)
        at = f"{where}: " if where else ""
        raise InventoryError([f"{shown_path}: {at}{message} (fix: correct the YAML syntax)"]) from None
    if not isinstance(raw, dict):
        top = Problem(
            shown_path,
            "(top level)",
            "expected a mapping with `fleet`, `environment` and `sites`",
            "see the inventory format in README.md",
        )
        raise InventoryError([str(top)])
    raw = _apply_defaults(raw)
    try:
        inv = Inventory.model_validate(raw)
    except ValidationError as exc:
        refused = [Problem(shown_path, location(e["loc"]), *error_parts(e, HINTS)) for e in exc.errors()]
        raise InventoryError([str(p) for p in refused]) from None
    found = cross_checks(inv) + (file_checks(inv, path.parent) if check_files else [])
    if found:
        raise InventoryError([str(Problem(shown_path, *f)) for f in found])
    return LoadedInventory(path=path.resolve(), inventory=inv)
