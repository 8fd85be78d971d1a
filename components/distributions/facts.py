"""Install facts: the hardening a node really gets, as the edge-* policy rules check it.

Each driver's ``install_facts(node)`` reads them from the node's rendered configuration and
command line. A server reports every fact, a node without an API server only
``protectKernelDefaults``; a node without a kubelet does not report that one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

InstallFacts = dict[str, object]

SAFE_FACTS: InstallFacts = {
    "secretsEncryption": True,
    "auditLog": True,
    "anonymousAuth": False,
    "kubeconfigMode": "0600",
    "protectKernelDefaults": True,
}


def combine_facts(per_node: Sequence[Mapping[str, object]]) -> InstallFacts:
    """The site's facts: a fact holds only if it holds on every node that reports it. A fact
    no node reports is unsafe, except kernel protection on a site without kubelets; no
    nodes at all (none could be rendered) means nothing holds."""
    if not per_node:
        return {
            "secretsEncryption": False,
            "auditLog": False,
            "anonymousAuth": True,
            "kubeconfigMode": None,
            "protectKernelDefaults": False,
        }
    out: InstallFacts = {}
    for fact, safe in SAFE_FACTS.items():
        values = [facts[fact] for facts in per_node if fact in facts]
        if fact == "protectKernelDefaults" and not values:
            out[fact] = True
        elif fact == "kubeconfigMode":
            unsafe = sorted({v for v in values if v != safe}, key=str)
            out[fact] = unsafe[0] if unsafe else (safe if values else None)
        else:
            out[fact] = bool(values) and all(v == safe for v in values)
            if fact == "anonymousAuth":
                out[fact] = not out[fact]
    return out


def flag_values(argv: Sequence[str], name: str) -> list[str]:
    """The values of ``--name`` in ``argv`` in order (``--name`` alone counts as "true")."""
    out = []
    for arg in argv:
        if arg == f"--{name}":
            out.append("true")
        elif arg.startswith(f"--{name}="):
            out.append(arg.split("=", 1)[1])
    return out


def options(entries: Sequence[str]) -> dict[str, str]:
    """``["a=1", "--b=2"]`` -> ``{"a": "1", "b": "2"}``; a later entry wins."""
    out: dict[str, str] = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        out[key.lstrip("-")] = value
    return out


def is_true(value: object) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "1"))
