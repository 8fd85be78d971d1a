"""The files under ``templates/``: bash, systemd units and OpenRC scripts, filled in by name.

A placeholder is ``@@NAME@@`` (capitals, digits and ``_``), which means nothing to bash,
systemd or OpenRC, so shellcheck checks a template in place. A placeholder alone on its line
takes whole lines (empty, or ending in a newline); anywhere else it takes text. Filling a
template fails on a placeholder without a value and on a value without a placeholder.

A template without a shebang is a fragment of a larger script. It starts with a header: comment
lines up to and including ``# shellcheck shell=bash …``, which tell the reader and shellcheck
about the fragment alone (its callers live in other fragments). The header is not part of the text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

TEMPLATES = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"^@@(?P<block>[A-Z][A-Z0-9_]*)@@\n|@@(?P<inline>[A-Z][A-Z0-9_]*)@@", re.M)
_HEADER_END = re.compile(r"# shellcheck shell=\S+.*\n")


@functools.cache
def text(name: str) -> str:
    """The text of template ``name`` without its header."""
    lines = (TEMPLATES / name).read_text().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if not line.startswith("#") or line.startswith("#!"):
            break
        if _HEADER_END.fullmatch(line):
            return "".join(lines[i + 1 :])
    return "".join(lines)


@functools.cache
def placeholders(name: str) -> frozenset[str]:
    return frozenset(m.group("block") or m.group("inline") for m in _PLACEHOLDER.finditer(text(name)))


def fill(name: str, **values: object) -> str:
    """Template ``name`` with every placeholder replaced by its value (``str()`` of it)."""
    wanted = placeholders(name)
    if wanted != set(values):
        missing, unknown = sorted(wanted - set(values)), sorted(set(values) - wanted)
        raise ValueError(f"templates/{name}: no value for {missing}, no placeholder for {unknown}")

    def value(m: re.Match[str]) -> str:
        if m.group("block"):
            lines = str(values[m.group("block")])
            if lines and not lines.endswith("\n"):
                raise ValueError(f"templates/{name}: @@{m.group('block')}@@ takes whole lines, got {lines[-40:]!r}")
            return lines
        return str(values[m.group("inline")])

    return _PLACEHOLDER.sub(value, text(name))
