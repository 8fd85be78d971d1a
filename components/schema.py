"""What the inventory and the catalog schemas share: a strict pydantic base, validators that say
what is wrong and how to fix it, and pydantic's errors turned into ``field: message (fix: …)``.

A validator raises :func:`custom_error`; :func:`error_parts` reads its message and fix back, and
words every other pydantic error with the document's own hints (:class:`Hints`), so each
document reports every problem in the same shape (:class:`components.contract.Problem`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from components.contract import NAME, SHA256, shown


class StrictModel(BaseModel):
    """A schema node: unknown fields are errors, and a validated value never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def custom_error(kind: str, message: str, fix: str) -> PydanticCustomError:
    """The error a validator raises: ``message`` names the value, ``fix`` says what to write."""
    return PydanticCustomError(kind, "{message} (fix: {fix})", {"message": message, "fix": fix})


def checked_name(value: str, what: str) -> str:
    """``value`` if it is a name (a DNS label: fleet, site, host, model), else the error naming ``what``."""
    if not NAME.fullmatch(value):
        raise custom_error(
            "name",
            f"{shown(value)} is not a valid {what} name",
            "use lowercase letters, digits and '-', at most 63 characters",
        )
    return value


def checked_sha256(value: str, file: str) -> str:
    """``value`` if it is a sha256 hex digest, else the error (``file``: what ``sha256sum`` would be run on)."""
    if not SHA256.fullmatch(value):
        raise custom_error(
            "sha256",
            f"{shown(value)} is not a sha256 hex digest",
            f"write the 64 lowercase hex characters printed by `sha256sum {file}`",
        )
    return value


def exactly_one(node: BaseModel, first: str, second: str, kind: str, fix: str) -> None:
    """Refuse ``node`` unless exactly one of its fields ``first`` and ``second`` is set."""
    if (getattr(node, first) is None) == (getattr(node, second) is None):
        raise custom_error(kind, f"exactly one of {first!r} or {second!r} must be set", fix)


def display_path(path: Path) -> str:
    """The path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def location(loc: Sequence[Any]) -> str:
    """pydantic's location tuple as ``sites[0].hosts[2].address``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


@dataclass(frozen=True)
class Hints:
    """The fix a document's format gives for errors no validator of ours words."""

    missing: str  # a required field is absent
    unknown: str  # a field the schema does not know
    correct: str  # any other value pydantic refuses


def error_parts(err: Mapping[str, Any], hints: Hints) -> tuple[str, str]:
    """One pydantic error as (message, fix)."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if "fix" in ctx:  # our own validators name the value and the fix
        return str(ctx["message"]), str(ctx["fix"])
    if kind == "missing":
        return "is required", hints.missing
    if kind == "extra_forbidden":
        return "is not a known field", hints.unknown
    value = err.get("input")
    text = shown(value) if isinstance(value, str) else repr(value)
    if kind == "literal_error":
        return f"{text} is not allowed", f"use one of {ctx['expected']}"
    prefix = "" if isinstance(value, (dict, list)) else f"{text}: "
    return f"{prefix}{err['msg']}", hints.correct


def yaml_error(exc: yaml.YAMLError) -> tuple[str | None, str]:
    """Where a YAML document is broken (``line L, column C``, if the parser knows) and why."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
    return where, f"invalid YAML: {getattr(exc, 'problem', exc)}"
