"""Stack-level checks on the stack's own outputs."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from policies.resource import UNKNOWN, Resource, Secret
from policies.rules import Violation, key_path, rule

STACK = "pulumi:pulumi:Stack"
SENSITIVE_OUTPUT = re.compile(r"kubeconfig|token", re.IGNORECASE)


def _exposed(value: Any, path: str, sensitive: bool) -> Iterator[str]:
    """Paths of plain (non-secret, known, non-empty) values under a sensitive name."""
    if isinstance(value, Secret) or value is UNKNOWN or value is None or value == "":
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from _exposed(v, key_path(path, str(k)), sensitive or bool(SENSITIVE_OUTPUT.search(str(k))))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _exposed(v, f"{path}[{i}]", sensitive)
    elif sensitive:
        yield path


@rule(
    name="secret-stack-outputs",
    title="Kubeconfig and token outputs are secret",
    category="stack",
    severity="critical",
    description=(
        "Stack outputs that hold a kubeconfig or a token (by name, at any depth) are Pulumi secrets, so `pulumi stack "
        "output` and the state never show them in clear."
    ),
    remediation=(
        "Export the value with pulumi.Output.secret(...) (or pulumi.export(name, pulumi.Output.secret(value)))."
    ),
    targets={STACK},
    scope="stack",
)
def secret_stack_outputs(resources: Sequence[Resource], config: dict[str, Any]) -> list[Violation]:
    out = []
    for res in resources:
        if res.type != STACK:
            continue
        for name, value in res.props.items():
            for path in _exposed(value, key_path("", name), bool(SENSITIVE_OUTPUT.search(name))):
                out.append(Violation(f"stack output {path} is not a secret", path, res))
    return out
