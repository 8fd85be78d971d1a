"""A model version proven before it ships: sha256, onnxruntime loads it, the declared signature,
and its p99 latency on the site's hardware class within its latency budget."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.catalog.registry import CACHE
from components.catalog.schema import (
    CatalogEntry,
    ModelError,
    Tensor,
    atomic_write,
)
from components.contract import LATENCY_BUDGET_MS, Problem, file_sha256
from components.schema import (
    display_path,
)

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

DEFAULT_VALIDATION_CACHE = CACHE / "model-validation"


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
        atomic_write(cache_file, json.dumps(data, indent=1, sort_keys=True).encode())
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
