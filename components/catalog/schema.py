"""The catalog's schema and loader: ``models/catalog.yaml`` as typed, checked entries."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.contract import S3_URI, Problem
from components.schema import (
    Hints,
    StrictModel,
    checked_name,
    checked_sha256,
    custom_error,
    display_path,
    error_parts,
    exactly_one,
    location,
    yaml_error,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CATALOG = REPO / "models" / "catalog.yaml"

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
LatencyClass = Literal["control", "video", "batch"]

VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,62}$")
CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti|k|M|G|T)?$")
FORMAT_HINT = "see the catalog format in components/catalog/"
HINTS = Hints(
    missing=f"add this field; {FORMAT_HINT}",
    unknown=f"check the spelling; {FORMAT_HINT}",
    correct=f"correct the value; {FORMAT_HINT}",
)

# A model is served in a namespace of its own name, which the stack creates and, when the model
# is dropped, deletes with everything in it. These belong to the cluster, its distribution or
# common add-ons: a model named after one would adopt that namespace and later delete it.
RESERVED_NAMESPACES = frozenset(
    {
        "default",
        "monitoring",
        "observability",
        "logging",
        "cert-manager",
        "ingress-nginx",
        "metallb-system",
        "longhorn-system",
        "gpu-operator",
        "nvidia-gpu-operator",
        "flux-system",
        "argocd",
        "istio-system",
        "velero",
    }
)
RESERVED_NAMESPACE_PREFIXES = ("kube-", "openshift", "k0s-", "cattle-", "calico-", "tigera-", "edgefleet-system")


def reserved_namespace(name: str) -> bool:
    """Whether ``name`` is a namespace the fleet never creates for a model (see above)."""
    return name in RESERVED_NAMESPACES or name.startswith(RESERVED_NAMESPACE_PREFIXES)


class ModelError(Exception):
    """A catalog, artifact or rollout that cannot be used; ``problems`` lists all of it."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --- catalog schema ---------------------------------------------------------------------------


class Tensor(StrictModel):
    """A named input or output tensor in Open Inference Protocol v2 terms."""

    name: Annotated[str, Field(min_length=1)]
    datatype: Datatype
    shape: list[int]

    @field_validator("shape")
    @classmethod
    def _dims(cls, v: list[int]) -> list[int]:
        if any(d == 0 or d < -1 for d in v):
            raise custom_error(
                "shape",
                f"{v} has a dimension that is neither -1 nor positive",
                "write each dimension as a positive size, or -1 where it is dynamic (e.g. the batch)",
            )
        return v


class Resources(StrictModel):
    """What one replica needs, as Kubernetes quantities."""

    cpu: str = "250m"
    memory: str = "256Mi"
    gpu: bool = False

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _number(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v  # `cpu: 1` in YAML

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        if not CPU.match(str(v)):
            raise custom_error(
                "cpu", f"{v!r} is not a CPU quantity", "write millicores like '250m' or cores like '1' or '0.5'"
            )
        return v

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: str) -> str:
        if not MEMORY.match(str(v)):
            raise custom_error("memory", f"{v!r} is not a memory quantity", "write a size like '256Mi' or '1Gi'")
        return v


class ModelVersion(StrictModel):
    uri: str
    sha256: str
    inputs: Annotated[list[Tensor], Field(min_length=1)]
    outputs: Annotated[list[Tensor], Field(min_length=1)]
    latency_class: LatencyClass
    resources: Resources = Resources()

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if v.startswith("s3://"):
            if s3_object(v) is None:
                raise custom_error(
                    "uri",
                    f"{v!r} is not an s3://bucket/key URI",
                    "write s3://BUCKET/PREFIX/NAME/VERSION/model.onnx (scripts/publish-model prints it)",
                )
        elif "://" in v or Path(v).is_absolute() or ".." in Path(v).parts or not v:
            raise custom_error(
                "uri",
                f"{v!r} is neither s3://bucket/key nor a path inside the repository",
                "write a relative path such as models/NAME/VERSION/model.onnx or an s3:// URI",
            )
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        return checked_sha256(v, "model.onnx")


class Canary(StrictModel):
    """A version rolled out ahead of the pins: to whole rollout waves, or to a stable
    percentage of sites (see :func:`canary_bucket`)."""

    version: str
    waves: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None

    @model_validator(mode="after")
    def _one_selector(self) -> Canary:
        exactly_one(
            self,
            "waves",
            "percent",
            "canary",
            "write `canary: {version: '2', waves: [0]}` or `canary: {version: '2', percent: 10}`",
        )
        return self


class CatalogModel(StrictModel):
    name: str
    description: Annotated[str, Field(min_length=1)]
    versions: Annotated[dict[str, ModelVersion], Field(min_length=1)]
    canary: Canary | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        checked_name(v, "model")
        if reserved_namespace(v):
            raise custom_error(
                "name",
                f"{v!r} names a namespace the fleet does not own (a model is served in a namespace of "
                "its own name, which the stack would adopt and later delete)",
                "rename the model, e.g. to a name that says what it predicts",
            )
        return v

    @field_validator("versions")
    @classmethod
    def _version_keys(cls, v: dict[str, ModelVersion]) -> dict[str, ModelVersion]:
        for key in v:
            if not VERSION.match(key):
                raise custom_error(
                    "version",
                    f"{key!r} is not a valid version name",
                    "use letters, digits, '.', '_' or '-', e.g. \"1\" or \"2024.06\"",
                )
        return v


class Catalog(StrictModel):
    models: list[CatalogModel]


@dataclass(frozen=True)
class CatalogEntry:
    """One model version, with where it sits in the catalog (for error messages)."""

    model: str
    version: str
    spec: ModelVersion
    file: str  # the catalog as the user would type it
    field: str  # e.g. models[1].versions.2

    def problem(self, field: str, message: str, fix: str, site: str | None = None) -> Problem:
        where = f"model {self.model!r} version {self.version!r}" + (f" at site {site!r}" if site else "")
        return Problem(self.file, f"{self.field}.{field}", f"{where}: {message}", fix)


@dataclass(frozen=True)
class LoadedCatalog:
    """A validated catalog; relative URIs resolve against ``root`` (the repository)."""

    path: Path
    catalog: Catalog

    @property
    def root(self) -> Path:
        return self.path.parent.parent

    def entries(self) -> list[CatalogEntry]:
        shown = display_path(self.path)
        return [
            CatalogEntry(m.name, v, spec, shown, f"models[{i}].versions.{v}")
            for i, m in enumerate(self.catalog.models)
            for v, spec in m.versions.items()
        ]

    def model(self, name: str) -> CatalogModel:
        for m in self.catalog.models:
            if m.name == name:
                return m
        known = ", ".join(repr(m.name) for m in self.catalog.models) or "none"
        raise ModelError(
            [
                Problem(
                    display_path(self.path),
                    "models",
                    f"no model named {name!r} (the catalog has {known})",
                    "add the model to the catalog (scripts/make-models) or correct the workload's model name",
                )
            ]
        )

    def entry(self, name: str, version: str) -> CatalogEntry:
        model = self.model(name)
        for e in self.entries():
            if e.model == name and e.version == version:
                return e
        raise ModelError(
            [
                Problem(
                    display_path(self.path),
                    "models",
                    f"model {name!r} has no version {version!r} (it has {', '.join(map(repr, model.versions))})",
                    "pin one of the catalog's versions, or add and publish the new version first",
                )
            ]
        )


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """YAML reads ``1:`` as an integer; version names are strings."""
    for m in raw.get("models") or []:
        if isinstance(m, dict):
            if isinstance(m.get("versions"), dict):
                m["versions"] = {str(k): v for k, v in m["versions"].items()}
            if isinstance(m.get("canary"), dict) and isinstance(m["canary"].get("version"), int):
                m["canary"]["version"] = str(m["canary"]["version"])
    return raw


def _cross_checks(cat: Catalog, root: Path, check_files: bool) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    seen: dict[str, int] = {}
    for i, m in enumerate(cat.models):
        at = f"models[{i}]"
        if m.name in seen:
            problems.append(
                (
                    f"{at}.name",
                    f"model name {m.name!r} is already used by models[{seen[m.name]}]",
                    "give every model a unique name; versions go under `versions`",
                )
            )
        seen.setdefault(m.name, i)
        if m.canary is not None and m.canary.version not in m.versions:
            problems.append(
                (
                    f"{at}.canary.version",
                    f"{m.canary.version!r} is not a version of {m.name!r} (it has {', '.join(map(repr, m.versions))})",
                    "add the version under `versions` first, or canary an existing one",
                )
            )
        for v, spec in m.versions.items():
            for side in ("inputs", "outputs"):
                names: dict[str, int] = {}
                for j, t in enumerate(getattr(spec, side)):
                    if t.name in names:
                        problems.append(
                            (
                                f"{at}.versions.{v}.{side}[{j}].name",
                                f"tensor name {t.name!r} is already used by {side}[{names[t.name]}]",
                                "tensor names are unique within inputs and within outputs",
                            )
                        )
                    names.setdefault(t.name, j)
            if check_files and not spec.uri.startswith("s3://") and not (root / spec.uri).is_file():
                problems.append(
                    (
                        f"{at}.versions.{v}.uri",
                        f"{spec.uri!r} does not exist under {display_path(root) or '.'}",
                        "run scripts/make-models, or point uri at the published s3:// object",
                    )
                )
    return problems


def load_catalog(path: str | Path = DEFAULT_CATALOG, *, check_files: bool = True) -> LoadedCatalog:
    """Load and validate a catalog; raise :class:`ModelError` with every problem."""
    path = Path(path)
    shown = display_path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ModelError(
            [
                Problem(
                    shown,
                    "(file)",
                    f"cannot read the catalog: {exc.strerror}",
                    "check the path; the default is models/catalog.yaml",
                )
            ]
        ) from None
    except yaml.YAMLError as exc:
        where, message = yaml_error(exc)
        raise ModelError([Problem(shown, where or "(file)", message, "correct the YAML syntax")]) from None
    if not isinstance(raw, dict):
        raise ModelError([Problem(shown, "(top level)", "expected a mapping with `models`", FORMAT_HINT)])
    raw = _normalise(raw)
    try:
        cat = Catalog.model_validate(raw)
    except ValidationError as exc:
        raise ModelError([Problem(shown, location(e["loc"]), *error_parts(e, HINTS)) for e in exc.errors()]) from None
    problems = _cross_checks(cat, path.resolve().parent.parent, check_files)
    if problems:
        raise ModelError([Problem(shown, *p) for p in problems])
    return LoadedCatalog(path=path.resolve(), catalog=cat)


CATALOG_HEADER = """\
# Model catalog: every model version the fleet may serve (format: components/catalog/).
# scripts/make-models writes uri, sha256, inputs and outputs of the versions it builds and keeps
# description, latency_class, resources, canary and published s3:// URIs of unchanged files;
# scripts/publish-model --update-catalog points a version's uri at its S3 object.
"""


class _CatalogDumper(yaml.SafeDumper):
    """Small leaves (tensors, shapes, resources, canary) on one line, the rest as blocks."""


def _flat(value: Any) -> bool:
    return not isinstance(value, (dict, list)) or (
        isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)
    )


def _represent_list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=_flat(value))


def _represent_dict(dumper: yaml.SafeDumper, value: dict[str, Any]) -> yaml.Node:
    small = len(value) <= 4 and all(_flat(v) and not (isinstance(v, str) and len(v) > 40) for v in value.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", value.items(), flow_style=small)


_CatalogDumper.add_representer(list, _represent_list)
_CatalogDumper.add_representer(dict, _represent_dict)


def write_catalog(path: Path, data: dict[str, Any]) -> None:
    """Write catalog data (plain dicts) with the header, atomically."""
    text = yaml.dump(data, Dumper=_CatalogDumper, sort_keys=False, width=110)
    atomic_write(path, (CATALOG_HEADER + text).encode())


# --- files ------------------------------------------------------------------------------------


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def s3_object(uri: str) -> tuple[str, str] | None:
    """(bucket, key) of an ``s3://bucket/key`` URI that names one object, or None."""
    m = S3_URI.fullmatch(uri)
    return (m["bucket"], m["key"]) if m and m["key"] else None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    located = s3_object(uri)
    if located is None:
        raise ModelError([Problem(uri, "uri", "is not an s3://bucket/key URI", "write s3://BUCKET/KEY")])
    return located
