"""Model catalog, canary rollout, validation with onnxruntime, and verified fetch.

``models/catalog.yaml`` lists every model version the fleet may serve::

    models:
      - name: quality-control                 # lowercase letters, digits, '-'
        description: ...
        canary: {version: "2", waves: [0]}    # optional: {version, waves: [..]} or {version, percent: 0-100}
        versions:
          "1":
            uri: models/quality-control/1/model.onnx   # relative to the repository, or s3://bucket/key
            sha256: <64 lowercase hex>
            inputs:  [{name: pixels, datatype: FP32, shape: [-1, 64]}]   # Open Inference Protocol v2
            outputs: [{name: label, datatype: INT64, shape: [-1]}, ...]  # datatypes; -1 = dynamic
            latency_class: control            # control (10 ms) | video (50 ms) | batch (1000 ms)
            resources: {cpu: 250m, memory: 256Mi, gpu: false}            # a hint for the pod

:func:`load_catalog` reports every problem at once as ``file: field: message (fix: ...)``
through :class:`ModelError`. :func:`validate_model` proves an artifact is the one the catalog
names (sha256), loads (onnxruntime), has the declared signature and meets the latency budget of
its class on the site's hardware class. :func:`fetch_verified` brings an artifact from the
repository or S3 into a content-addressed cache and refuses anything whose digest is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from components.contract import LATENCY_BUDGET_MS, S3_URI, SHA256, Problem, cache_dir, file_sha256
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CATALOG = REPO / "models" / "catalog.yaml"
CACHE = cache_dir()
DEFAULT_VALIDATION_CACHE = CACHE / "model-validation"

# Conservative multipliers of the p99 latency measured on the machine running the preview (taken
# as an x86 server core), per site hardware class. They are deliberately pessimistic so a model
# that passes here does not miss its budget on the device; a site that has measured its own
# hardware passes its factor instead (``hardware_factor=``).
HARDWARE_FACTORS: dict[str, float] = {
    "x86-server": 1.0,  # rack server core, same class as the preview machine
    "x86-edge": 2.5,  # Atom / Celeron / NUC-class fanless box
    "arm64-edge": 4.0,  # Jetson / Raspberry Pi-class Cortex-A CPU (CPU execution only)
    "gateway": 8.0,  # constrained gateway, shared with protocol adapters
}

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
LatencyClass = Literal["control", "video", "batch"]

# onnxruntime's tensor type names -> Open Inference Protocol v2 datatypes, and the numpy dtype
# the synthetic inputs use for each.
ORT_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}
NUMPY_DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

VERSION = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]{0,62}$")
CPU = re.compile(r"^(\d+m|\d+(\.\d+)?)$")
MEMORY = re.compile(r"^\d+(Ki|Mi|Gi|Ti|k|M|G|T)?$")
FORMAT_HINT = "see the catalog format in components/catalog.py"
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
# Model catalog: every model version the fleet may serve (format: components/catalog.py).
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
    _atomic_write(path, (CATALOG_HEADER + text).encode())


# --- rollout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteRef:
    """A site as the rollout sees it: its name and rollout wave (0 is the canary wave)."""

    name: str
    wave: int = 1


def canary_bucket(site: str) -> int:
    """A site's stable position in [0, 10000): the first 8 bytes of sha256(site name, UTF-8)
    as a big-endian integer, modulo 10000. A canary of ``percent`` P takes the sites whose
    bucket is below P * 100, so the same sites stay in it across runs and raising P only adds
    sites."""
    return int.from_bytes(hashlib.sha256(site.encode()).digest()[:8], "big") % 10_000


def in_canary(site: SiteRef, canary: Canary) -> bool:
    if canary.waves is not None:
        return site.wave in canary.waves
    assert canary.percent is not None
    return canary_bucket(site.name) < round(canary.percent * 100)


def select_versions(
    model: str, sites: Iterable[SiteRef], pins: Mapping[str, Mapping[str, str]], canary: Canary | None
) -> dict[str, str]:
    """The version of ``model`` each site runs. ``pins`` maps site -> {model: version} (a site's
    workloads); sites that do not pin ``model`` do not run it and are left out. Sites the canary
    selects run the canary version, the others their pin."""
    chosen: dict[str, str] = {}
    for site in sites:
        pinned = pins.get(site.name, {}).get(model)
        if pinned is None:
            continue
        chosen[site.name] = canary.version if canary is not None and in_canary(site, canary) else pinned
    return chosen


# --- files and S3 -----------------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes) -> None:
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


def s3_client(endpoint_url: str | None = None) -> Any:
    """An S3 client with the standard credential chain; ``endpoint_url`` (or AWS_ENDPOINT_URL,
    which boto3 reads itself) selects on-prem S3 or a test server."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or None,
        config=Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}),
    )


def s3_problem(uri: str, exc: Exception) -> Problem:
    """A boto3/botocore failure as a user-facing problem (never with credentials in it)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return Problem(
            uri,
            "credentials",
            "no usable AWS credentials",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role (the standard boto3 chain)",
        )
    if isinstance(exc, EndpointConnectionError):
        return Problem(
            uri,
            "endpoint",
            f"cannot reach {exc.kwargs.get('endpoint_url', 'the S3 endpoint')}",
            "check --endpoint-url / AWS_ENDPOINT_URL and that the S3 service is running",
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return Problem(uri, "uri", "no such object", "publish it with scripts/publish-model or correct the uri")
        if code == "NoSuchBucket":
            return Problem(uri, "uri", "no such bucket", "create the bucket or correct the uri")
        if code in ("403", "AccessDenied"):
            return Problem(
                uri,
                "credentials",
                "access denied",
                "grant s3:GetObject (and s3:PutObject to publish) on the model prefix to these credentials",
            )
        return Problem(
            uri,
            "uri",
            f"S3 error {code}: {exc.response.get('Error', {}).get('Message', '')}",
            "check the bucket, key and endpoint",
        )
    return Problem(uri, "uri", f"{type(exc).__name__}: {exc}", "check the bucket, key and endpoint")


def fetch_verified(
    uri: str, sha256: str, cache_dir: Path, *, s3_endpoint: str | None = None, repo_root: Path | None = None
) -> Path:
    """The artifact at ``uri`` (a path relative to ``repo_root``, default the repository, or
    s3://bucket/key) as a file in ``cache_dir`` named by its sha256, verified before it is
    moved into place. A digest mismatch raises :class:`ModelError`; no partial file remains."""
    if not SHA256.fullmatch(sha256):
        raise ModelError(
            [
                Problem(
                    uri,
                    "sha256",
                    f"{sha256!r} is not a sha256 hex digest",
                    "pass the catalog's 64-hex-character sha256",
                )
            ]
        )
    cache_dir = Path(cache_dir)
    target = cache_dir / sha256 / Path(uri).name
    if target.is_file():
        if file_sha256(target) == sha256:
            return target
        target.unlink()  # the cache was damaged: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".fetch-", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            if uri.startswith("s3://"):
                bucket, key = parse_s3_uri(uri)
                try:
                    s3_client(s3_endpoint).download_fileobj(bucket, key, out)
                except Exception as exc:  # botocore raises many types; each becomes one problem
                    raise ModelError([s3_problem(uri, exc)]) from None
            else:
                source = (repo_root or REPO) / uri
                try:
                    with open(source, "rb") as src:
                        shutil.copyfileobj(src, out)
                except OSError as exc:
                    raise ModelError(
                        [
                            Problem(
                                uri,
                                "uri",
                                f"cannot read {source}: {exc.strerror}",
                                "run scripts/make-models or correct the uri",
                            )
                        ]
                    ) from None
        actual = file_sha256(tmp)
        if actual != sha256:
            raise ModelError(
                [
                    Problem(
                        uri,
                        "sha256",
                        f"content has sha256 {actual}, expected {sha256}",
                        "the object was changed or corrupted after publishing: republish the catalog's file under a "
                        "new version, or fix the catalog if the new content is intended",
                    )
                ]
            )
        os.chmod(tmp, 0o644)  # the content is public; mkstemp makes 0600
        os.replace(tmp, target)
        return target
    finally:
        tmp.unlink(missing_ok=True)


# --- validation -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationResult:
    """A model version that passed: digest, signature and latency on the site's hardware."""

    model: str
    version: str
    sha256: str
    site: str | None
    p50_ms: float
    p99_ms: float
    runs: int
    hardware_factor: float
    budget_ms: float
    runtime: str  # onnxruntime version that measured
    cached: bool  # measurement came from the cache (no session was opened)

    @property
    def expected_p99_ms(self) -> float:
        return self.p99_ms * self.hardware_factor


def session_signature(session: Any) -> dict[str, list[dict[str, Any]]]:
    """An onnxruntime session's inputs and outputs as catalog tensors (symbolic dims -> -1;
    non-tensor types keep onnxruntime's name so a mismatch shows what the model has)."""

    def tensors(args: list[Any]) -> list[dict[str, Any]]:
        return [
            {
                "name": a.name,
                "datatype": ORT_DATATYPES.get(a.type, a.type),
                "shape": [d if isinstance(d, int) and d > 0 else -1 for d in (a.shape or [])],
            }
            for a in args
        ]

    return {"inputs": tensors(session.get_inputs()), "outputs": tensors(session.get_outputs())}


def open_session(path: Path) -> Any:
    """A single-threaded CPU session: an edge replica gets about one core, and the preview
    machine must not be swamped while it measures."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def signature_problems(
    entry: CatalogEntry, real: Mapping[str, list[dict[str, Any]]], site: str | None = None
) -> list[Problem]:
    """Every difference between the declared and the real inputs/outputs."""
    problems: list[Problem] = []
    fix = (
        "declare the model's real signature (scripts/make-models writes it) or use the artifact built for this "
        "declaration"
    )
    for side in ("inputs", "outputs"):
        kind = side[:-1]
        have = {t["name"]: t for t in real[side]}
        declared: list[Tensor] = getattr(entry.spec, side)
        for j, t in enumerate(declared):
            r = have.get(t.name)
            if r is None:
                names = ", ".join(repr(n) for n in have) or "none"
                problems.append(
                    entry.problem(
                        f"{side}[{j}].name",
                        f"declared {kind} {t.name!r} is not an {kind} of the model (it has {names})",
                        fix,
                        site,
                    )
                )
                continue
            if r["datatype"] != t.datatype:
                problems.append(
                    entry.problem(
                        f"{side}[{j}].datatype",
                        f"{kind} {t.name!r} is declared {t.datatype}, the model has {r['datatype']}",
                        fix,
                        site,
                    )
                )
            if list(r["shape"]) != list(t.shape):
                problems.append(
                    entry.problem(
                        f"{side}[{j}].shape",
                        f"{kind} {t.name!r} is declared {list(t.shape)}, the model has {list(r['shape'])}",
                        fix,
                        site,
                    )
                )
        for name, r in have.items():
            if name not in {t.name for t in declared}:
                problems.append(
                    entry.problem(
                        side,
                        f"the model's {kind} {name!r} ({r['datatype']} {list(r['shape'])}) is not declared",
                        fix,
                        site,
                    )
                )
    return problems


def synthetic_inputs(inputs: Iterable[Tensor], seed: int = 0) -> dict[str, np.ndarray]:
    """A batch of one for each declared input (dynamic dims -> 1), from a fixed seed."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for t in inputs:
        shape = tuple(1 if d == -1 else d for d in t.shape)
        dtype = NUMPY_DTYPES[t.datatype]
        if t.datatype == "BYTES":
            feeds[t.name] = np.full(shape, "x", dtype=object)
        elif t.datatype == "BOOL":
            feeds[t.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif t.datatype.startswith(("INT", "UINT")):
            feeds[t.name] = rng.integers(0, 10, size=shape).astype(dtype)
        else:
            feeds[t.name] = rng.standard_normal(size=shape).astype(dtype)
    return feeds


def _cache_key(sha256: str, runs: int, warmup: int) -> str:
    import onnxruntime as ort

    # Everything the measurement depends on; budget and hardware factor are applied to the
    # cached p99 on every call, so one measurement serves every site.
    return f"{sha256}|onnxruntime-{ort.__version__}|{platform.machine()}|runs={runs}|warmup={warmup}"


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _measure(session: Any, feeds: dict[str, np.ndarray], runs: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        session.run(None, feeds)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter_ns()
        session.run(None, feeds)
        times[i] = (time.perf_counter_ns() - start) / 1e6
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def validate_model(
    entry: CatalogEntry,
    artifact_path: Path,
    *,
    budget_ms: float | None = None,
    hardware_factor: float = 1.0,
    runs: int = 200,
    warmup: int = 20,
    cache_dir: Path | None = None,
    site: str | None = None,
) -> ValidationResult:
    """Check an artifact against its catalog entry: sha256, loadable by onnxruntime, the
    declared signature, and p99 latency (batch 1) times ``hardware_factor`` within
    ``budget_ms`` (default: the budget of the entry's latency class). Measurements are cached
    by sha256 and runtime in ``cache_dir``/results.json. Raises :class:`ModelError`."""
    import onnxruntime as ort

    if runs < 1 or warmup < 0 or hardware_factor <= 0:
        raise ValueError("runs must be >= 1, warmup >= 0 and hardware_factor > 0")
    budget = LATENCY_BUDGET_MS[entry.spec.latency_class] if budget_ms is None else budget_ms
    artifact_path = Path(artifact_path)
    try:
        actual = file_sha256(artifact_path)
    except OSError as exc:
        raise ModelError(
            [
                entry.problem(
                    "uri",
                    f"cannot read {artifact_path}: {exc.strerror}",
                    "fetch the artifact (fetch_verified) or run scripts/make-models",
                    site,
                )
            ]
        ) from None
    if actual != entry.spec.sha256:
        raise ModelError(
            [
                entry.problem(
                    "sha256",
                    f"{display_path(artifact_path)} has sha256 {actual}, the catalog declares {entry.spec.sha256}",
                    "use the artifact the catalog names; if this file is the intended new model, give it a new "
                    "version with its sha256",
                    site,
                )
            ]
        )
    cache_file = (cache_dir or DEFAULT_VALIDATION_CACHE) / "results.json"
    key = _cache_key(actual, runs, warmup)
    hit = _read_cache(cache_file).get(key)
    if isinstance(hit, dict) and {"signature", "p50_ms", "p99_ms"} <= hit.keys():
        signature, p50, p99, cached = hit["signature"], float(hit["p50_ms"]), float(hit["p99_ms"]), True
    else:
        try:
            session = open_session(artifact_path)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                [
                    entry.problem(
                        "uri",
                        f"{display_path(artifact_path)} cannot be loaded by onnxruntime {ort.__version__}: "
                        f"{first[:300]}",
                        "rebuild the model (scripts/make-models) or check its opset is supported by this onnxruntime",
                        site,
                    )
                ]
            ) from None
        signature, cached = session_signature(session), False
    problems = signature_problems(entry, signature, site)
    if problems:
        raise ModelError(problems)
    if not cached:
        p50, p99 = _measure(session, synthetic_inputs(entry.spec.inputs), runs, warmup)
        data = _read_cache(cache_file)
        data[key] = {
            "model": entry.model,
            "version": entry.version,
            "signature": signature,
            "p50_ms": p50,
            "p99_ms": p99,
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _atomic_write(cache_file, json.dumps(data, indent=1, sort_keys=True).encode())
    if p99 * hardware_factor > budget:
        raise ModelError(
            [
                entry.problem(
                    "latency_class",
                    f"p99 {p99:.3f} ms x hardware factor {hardware_factor:g} = {p99 * hardware_factor:.3f} ms "
                    f"exceeds the {entry.spec.latency_class!r} budget of {budget:g} ms",
                    "serve a smaller/faster version at this site, move it to a slower latency class, or run it on "
                    "faster hardware (or give the site its measured hardware factor)",
                    site,
                )
            ]
        )
    return ValidationResult(
        entry.model, entry.version, actual, site, p50, p99, runs, hardware_factor, budget, ort.__version__, cached
    )
