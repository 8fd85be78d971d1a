"""Paths an inventory names: what they may contain, and the file each one means."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import field_validator

from components.contract import CACHE_VAR, cache_dir, shown
from components.schema import custom_error

PATH_MAX = 4096
_VAR = re.compile(r"\$\{([^}]*)\}")


def path_problem(value: str) -> tuple[str, str] | None:
    """Why ``value`` cannot be an inventory path (message, fix), or None. Only ``~`` and ``${EDGEFLEET_CACHE}``
    expand: any other variable could carry a secret of the environment running Pulumi."""
    if not value or len(value) > PATH_MAX or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return (
            f"{shown(value)} is not a usable path",
            f"write a path of at most {PATH_MAX} characters without control characters",
        )
    others = sorted({m.group(1) for m in _VAR.finditer(value)} - {CACHE_VAR})
    if others or "$" in _VAR.sub("", value):
        named = ", ".join("${" + v + "}" for v in others) or "'$'"
        return (
            f"{shown(value)} names {named}; inventory paths may use only ~ and ${{{CACHE_VAR}}}",
            f"write the path itself, or put the file under ${{{CACHE_VAR}}}",
        )
    return None


def expand_path(value: str, base: Path) -> Path:
    """``~`` and ``${EDGEFLEET_CACHE}`` expanded (default ~/.cache/edgefleet); relative paths
    are relative to the inventory file. Any other variable is refused (see path_problem)."""
    problem = path_problem(value)
    if problem is not None:
        raise ValueError(f"{problem[0]} (fix: {problem[1]})")
    expanded = Path(os.path.expanduser(value).replace("${" + CACHE_VAR + "}", str(cache_dir())))
    return expanded if expanded.is_absolute() else (base / expanded)


def check_path(value: str | None) -> str | None:
    if value is not None and (problem := path_problem(value)) is not None:
        raise custom_error("path", *problem)
    return value


def path_fields(*fields: str) -> Any:
    """A field validator refusing unusable inventory paths (see path_problem)."""
    return field_validator(*fields)(classmethod(lambda cls, v: check_path(v)))
