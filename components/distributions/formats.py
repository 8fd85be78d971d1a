"""Configuration file syntax the renderers write: YAML in document order, TOML strings."""

from __future__ import annotations

import yaml

# libyaml's emitter (the pure-Python one is the slowest step of a large preview).
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def yaml_text(data: object) -> str:
    """YAML in document order (the order rendered files are read in)."""
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, default_flow_style=False)


def toml_str(value: str) -> str:
    """A TOML basic string holding ``value`` exactly."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'
