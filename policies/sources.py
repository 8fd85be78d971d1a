"""Reading resources for the rules: Kubernetes YAML, ``pulumi stack export`` files and rule
fixtures. Problems with an input are returned as :class:`InputProblem` (file, line, message),
never raised as tracebacks.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from policies.resource import UNKNOWN, Resource, Secret, neutralize

try:  # libyaml: an order of magnitude faster than the pure-Python loader
    _FastLoader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - PyYAML built without libyaml
    _FastLoader = yaml.SafeLoader

# A line that starts a new YAML document. Column-0 '---' cannot occur inside a block scalar.
_DOC_START = re.compile(r"^---(?=\s|$)", re.MULTILINE)
YAML_SUFFIXES = (".yaml", ".yml")
STACK_TYPE = "pulumi:pulumi:Stack"


@dataclass(frozen=True)
class InputProblem:
    """An input that could not be used, or a part of it that was skipped."""

    file: str
    line: int
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


def k8s_type(api_version: str, kind: str) -> str:
    """The Pulumi type token of a Kubernetes kind (``v1`` is the ``core`` group)."""
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{kind}"


def resource_from_manifest(doc: dict[str, Any], source: str) -> Resource:
    meta: dict[str, Any] = doc["metadata"] if isinstance(doc.get("metadata"), dict) else {}
    name = meta["name"] if isinstance(meta.get("name"), str) else "<unnamed>"
    ns = meta.get("namespace")
    urn = f"{doc['kind']}/{ns + '/' if isinstance(ns, str) and ns else ''}{name}"
    return Resource(k8s_type(str(doc["apiVersion"]), str(doc["kind"])), name, doc, urn=urn, source=source)


def _split_documents(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each YAML document in a multi-document stream."""
    starts = [m.start() for m in _DOC_START.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    starts.append(len(text))
    line = 1
    for begin, end in itertools.pairwise(starts):
        chunk = text[begin:end]
        yield line, chunk
        line += chunk.count("\n")


def _yaml_error(e: yaml.YAMLError, first_line: int) -> tuple[int, str]:
    mark = getattr(e, "problem_mark", None)
    line = first_line + mark.line if mark is not None else first_line
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return line, f"malformed YAML: {problem}{' ' + context if context else ''}"


def parse_yaml(text: str, file: str, loader: type = _FastLoader) -> tuple[list[tuple[int, Any]], list[InputProblem]]:
    """Every non-empty document of a YAML stream with its first line; malformed documents are
    reported and skipped, the others still read."""
    docs: list[tuple[int, Any]] = []
    problems: list[InputProblem] = []
    for line, chunk in _split_documents(text):
        try:
            doc = yaml.load(chunk, Loader=loader)  # safe loaders only
        except yaml.YAMLError as e:
            problems.append(InputProblem(file, *_yaml_error(e, line)))
            continue
        if doc is not None:
            docs.append((line + _leading_lines(chunk), doc))
    return docs, problems


def _leading_lines(chunk: str) -> int:
    """Lines before a document's content (the '---' marker, comments, blanks)."""
    for n, raw in enumerate(chunk.splitlines()):
        stripped = raw.strip()
        if stripped and not stripped.startswith("#") and not _DOC_START.match(raw):
            return n
    return 0


def manifests_from_yaml(text: str, file: str) -> tuple[list[Resource], list[InputProblem]]:
    """Kubernetes objects of one YAML file (``List`` kinds are expanded)."""
    docs, problems = parse_yaml(text, file)
    resources: list[Resource] = []
    for line, doc in docs:
        for obj in _expand_list(doc):
            problem = _manifest_problem(obj)
            if problem:
                problems.append(InputProblem(file, line, problem))
            else:
                resources.append(resource_from_manifest(obj, f"{file}:{line}"))
    return resources, problems


def _expand_list(doc: Any) -> list[Any]:
    items = doc.get("items") if isinstance(doc, dict) else None
    if isinstance(items, list) and isinstance(doc.get("kind"), str) and doc["kind"].endswith("List"):
        return items
    return [doc]


def _manifest_problem(doc: Any) -> str | None:
    if not isinstance(doc, dict):
        return f"not a Kubernetes object (a YAML {type(doc).__name__}, expected a mapping with apiVersion and kind)"
    missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str) or not doc.get(k)]
    if missing:
        return f"not a Kubernetes object: no {' and no '.join(missing)}"
    return None


def manifests_from_paths(paths: list[Path]) -> tuple[list[Resource], list[InputProblem]]:
    """Kubernetes objects of YAML files and directories (searched recursively)."""
    resources: list[Resource] = []
    problems: list[InputProblem] = []
    for path in paths:
        files = (
            sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file()) if path.is_dir() else [path]
        )
        if path.is_dir() and not files:
            problems.append(InputProblem(str(path), 0, "directory has no .yaml or .yml files"))
        for f in files:
            try:
                text = f.read_text()
            except (OSError, UnicodeDecodeError) as e:
                problems.append(InputProblem(str(f), 0, f"cannot read: {e}"))
                continue
            res, probs = manifests_from_yaml(text, str(f))
            resources += res
            problems += probs
    return resources, problems


def resources_from_stack_export(data: Any, file: str) -> tuple[list[Resource], list[InputProblem]]:
    """Resources of a ``pulumi stack export`` document.

    Resource rules see each resource's inputs, as CrossGuard does at preview; the stack's own
    resource is seen through its outputs (the stack outputs). Providers and resources pending
    deletion are skipped.
    """
    deployment = data.get("deployment") if isinstance(data, dict) else None
    if not isinstance(deployment, dict):
        return [], [InputProblem(file, 0, 'not a `pulumi stack export` file (no "deployment" object)')]
    resources: list[Resource] = []
    for i, raw in enumerate(deployment.get("resources") or []):
        if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or not isinstance(raw.get("urn"), str):
            return resources, [InputProblem(file, 0, f"deployment.resources[{i}] has no type or urn")]
        rtype, urn = raw["type"], raw["urn"]
        if rtype.startswith("pulumi:providers:") or raw.get("delete") or raw.get("pendingReplacement"):
            continue
        props = raw.get("outputs") if rtype == STACK_TYPE else raw.get("inputs")
        provider = str(raw.get("provider") or "")
        resources.append(
            Resource(
                rtype,
                urn.rsplit("::", 1)[-1],
                neutralize(props or {}),
                urn=urn,
                source=urn,
                parent=raw.get("parent") or "",
                cluster=provider.rsplit("::", 1)[0],
            )
        )
    return resources, []


def stack_export_from_file(path: Path) -> tuple[list[Resource], list[InputProblem]]:
    try:
        data = json.loads(path.read_bytes())
    except OSError as e:
        return [], [InputProblem(str(path), 0, f"cannot read: {e}")]
    except ValueError as e:
        return [], [InputProblem(str(path), getattr(e, "lineno", 0), f"not valid JSON: {getattr(e, 'msg', e)}")]
    return resources_from_stack_export(data, str(path))


class FixtureLoader(yaml.SafeLoader):
    """YAML with ``!secret VALUE`` and ``!unknown`` for rule fixtures and tests."""


def _secret(loader: yaml.SafeLoader, node: yaml.ScalarNode | yaml.SequenceNode | yaml.MappingNode) -> Secret:
    if isinstance(node, yaml.MappingNode):
        return Secret(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return Secret(loader.construct_sequence(node, deep=True))
    return Secret(loader.construct_scalar(node))


FixtureLoader.add_constructor("!secret", _secret)
FixtureLoader.add_constructor("!unknown", lambda loader, node: UNKNOWN)


def resources_from_fixture(path: Path) -> list[Resource]:
    """Resources of a fixture file: Kubernetes objects, or ``{type, name, props}`` documents
    for the fleet's own resources and the stack."""
    docs, problems = parse_yaml(path.read_text(), str(path), loader=FixtureLoader)
    if problems:
        raise ValueError("; ".join(map(str, problems)))
    out = []
    for line, doc in docs:
        source = f"{path}:{line}"
        if "type" in doc and "props" in doc:
            out.append(
                Resource(
                    doc["type"],
                    doc.get("name", doc["type"]),
                    doc["props"],
                    urn=f"{doc['type']}::{doc.get('name')}",
                    source=source,
                )
            )
        else:
            out.append(resource_from_manifest(doc, source))
    return out
