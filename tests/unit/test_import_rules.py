"""The direction of imports, read from the source (every import statement, also those inside
functions): the policy pack imports only itself and the shared contract, the contract only the
standard library, the inference server nothing of the program, the renderers not the inventory."""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The repository's own top-level packages: any other import is the standard library or a dependency.
OURS = frozenset({"bench", "components", "fleet", "images", "inference", "lab", "policies", "scripts", "tests"})


def modules_imported(path: Path, root: Path = REPO) -> Iterator[tuple[int, str]]:
    """(line, dotted module) of every import in ``path`` (a file below ``root``, the import root);
    ``from a import b`` yields ``a`` and ``a.b``, since ``b`` may be a module."""
    package = ".".join(path.relative_to(root).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names)


def within(*prefixes: str) -> Callable[[str], bool]:
    return lambda module: any(module == p or module.startswith(p + ".") for p in prefixes)


def breaches(roots: tuple[str, ...], allowed: Callable[[str], bool]) -> list[str]:
    """Every import, in the files under ``roots``, of one of our modules that ``allowed`` refuses."""
    files = [p for r in roots for p in ([REPO / r] if r.endswith(".py") else (REPO / r).rglob("*.py"))]
    return sorted(
        {
            f"{path.relative_to(REPO)}:{line}: imports {module}"
            for path in files
            for line, module in modules_imported(path)
            if module.split(".")[0] in OURS and not allowed(module)
        }
    )


RULES: dict[str, tuple[tuple[str, ...], Callable[[str], bool]]] = {
    # The pack, the guard and the audit CLI run with policies/requirements.txt alone.
    "policies import only policies and components.contract": (("policies",), within("policies", "components.contract")),
    # Every layer may import the contract, so it imports nothing of ours.
    "components.contract imports nothing of ours": (("components/contract.py",), within()),
    # The inference server is built into its own image with its own dependencies.
    "inference imports only inference": (("inference",), within("inference")),
    # The renderers take node specs; reading the inventory is the program's part.
    "components.distributions does not import components.inventory": (
        ("components/distributions",),
        lambda module: not within("components.inventory")(module),
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_import_rule(rule: str) -> None:
    roots, allowed = RULES[rule]
    assert breaches(roots, allowed) == []


def test_the_contract_imports_only_the_standard_library() -> None:
    outside = [
        f"components/contract.py:{line}: imports {module}"
        for line, module in modules_imported(REPO / "components/contract.py")
        if module.split(".")[0] not in sys.stdlib_module_names
    ]
    assert outside == []


def test_the_components_package_imports_nothing() -> None:
    """``import components.contract`` runs ``components/__init__.py`` first: it must pull nothing in."""
    tree = ast.parse((REPO / "components/__init__.py").read_text())
    assert [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))] == []


def test_imports_inside_functions_and_relative_imports_are_seen(tmp_path: Path) -> None:
    module = tmp_path / "pkg" / "sub" / "mod.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "import components.contract\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def late():\n"
        "    from components.inventory import load_inventory\n"
    )
    seen = {m for _, m in modules_imported(module, tmp_path)}
    assert {"components.contract", "pkg.sub.sibling", "pkg.other.thing", "components.inventory.load_inventory"} <= seen
    assert not within("policies", "components.contract")("components.inventory")
    assert within("policies", "components.contract")("components.contract.SHA256")
