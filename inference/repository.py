"""The model repository: which model versions exist, their state, and loading them.

Layout (the same on disk and in an S3 registry)::

    <root>/<model>/<version>/model.onnx
    <root>/<model>/<version>/config.yaml      # optional

``config.yaml`` keys (all optional)::

    sha256: <64 hex>          # the file must hash to this or the version is not loaded
    intra_op_threads: 1       # onnxruntime threads, see inference.runtime.session_options
    inter_op_threads: 1

A version is LOADING until its file is verified, its session created and a warm-up run done
(then READY), or FAILED with the reason. One version failing never stops the others.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from inference.codec import Signature
from inference.errors import ConfigError
from inference.runtime import SessionTuning, create_session, signature_of, warm_up_feed

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
LOADING, READY, FAILED = "LOADING", "READY", "FAILED"
STATES = (LOADING, READY, FAILED)
_CONFIG_KEYS = {"sha256", "intra_op_threads", "inter_op_threads"}


def version_key(version: str) -> tuple[int, int, str]:
    """Sort key: numeric versions by value and above any non-numeric name, which sort by text."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)


@dataclass
class ModelVersion:
    """One ``<model>/<version>`` and what the server knows about it."""

    model: str
    version: str
    path: Path | None
    expected_sha256: dict[str, str] = field(default_factory=dict)  # source -> digest
    state: str = LOADING
    reason: str = ""
    sha256: str = ""
    session: Any = None
    signature: Signature | None = None

    def fail(self, reason: str) -> None:
        self.state, self.reason, self.session = FAILED, reason, None


@dataclass(frozen=True)
class VersionConfig:
    """A parsed ``config.yaml``."""

    sha256: str | None = None
    tuning: SessionTuning = SessionTuning()


def parse_config(text: str, source: str) -> VersionConfig:
    """Parse a ``config.yaml``; raises :class:`ConfigError` naming the file and the key."""
    fix = f"keys are {', '.join(sorted(_CONFIG_KEYS))}; see inference/repository.py"
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML: {exc}", fix) from None
    if not isinstance(doc, dict):
        raise ConfigError(source, "must be a mapping", fix)
    unknown = sorted(str(k) for k in doc if k not in _CONFIG_KEYS)
    if unknown:
        raise ConfigError(source, f"unknown key(s) {', '.join(unknown)}", fix)
    digest = doc.get("sha256")
    if digest is not None and (not isinstance(digest, str) or not SHA256.match(digest.lower())):
        raise ConfigError(f"{source}: sha256", "must be 64 hex digits, as a quoted string", fix)
    threads = {}
    for key in ("intra_op_threads", "inter_op_threads"):
        value = doc.get(key, 1)
        if type(value) is not int or not 1 <= value <= 64:
            raise ConfigError(f"{source}: {key}", "must be an integer from 1 to 64", fix)
        threads[key] = value
    return VersionConfig(digest.lower() if digest else None, SessionTuning(**threads))


def discover(root: Path) -> list[tuple[str, str, Path]]:
    """Every ``(model, version, directory)`` under ``root`` that holds a ``model.onnx``."""
    found: list[tuple[str, str, Path]] = []
    if not root.is_dir():
        return found
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir() and NAME.match(p.name)):
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and NAME.match(p.name)):
            if (version_dir / MODEL_FILE).is_file():
                found.append((model_dir.name, version_dir.name, version_dir))
    return found


def load_version(mv: ModelVersion, directory: Path) -> None:
    """Verify, load and warm up one version in place; never raises, a problem sets FAILED."""
    try:
        config_path = directory / CONFIG_FILE
        config = parse_config(config_path.read_text(), str(config_path)) if config_path.is_file() else VersionConfig()
        if config.sha256:
            mv.expected_sha256.setdefault(str(config_path), config.sha256)
        model_bytes = (directory / MODEL_FILE).read_bytes()
        digest = hashlib.sha256(model_bytes).hexdigest()
        wrong = {src: want for src, want in mv.expected_sha256.items() if want != digest}
        if wrong:
            mv.fail(
                f"sha256 mismatch: {directory / MODEL_FILE} hashes to {digest}, expected "
                + ", ".join(f"{want} ({src})" for src, want in wrong.items())
            )
            return
        session = create_session(model_bytes, config.tuning)
        signature = signature_of(session)
        session.run(None, warm_up_feed(signature))
    except ConfigError as exc:
        mv.fail(str(exc))
    except Exception as exc:  # onnxruntime raises bare Exception subclasses for bad models
        mv.fail(f"cannot load {directory / MODEL_FILE}: {type(exc).__name__}: {exc}".strip())
    else:
        mv.session, mv.signature, mv.sha256, mv.state = session, signature, digest, READY


class Repository:
    """Model versions by name; safe to read from the event loop while a thread loads them."""

    def __init__(self) -> None:
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self._latest: dict[str, ModelVersion] = {}
        self.discovered = False  # every version is known (some may still be loading)
        self.loaded = False  # every version is READY or FAILED
        self._lock = threading.Lock()
        self.on_change: Callable[[ModelVersion], None] = lambda mv: None

    def add(self, mv: ModelVersion) -> None:
        with self._lock:
            self.models.setdefault(mv.model, {})[mv.version] = mv
        self.changed(mv)

    def changed(self, mv: ModelVersion) -> None:
        """Record a state change of ``mv`` (and which version an unversioned URL means)."""
        versions = self.models.get(mv.model, {})
        ordered = sorted(versions.values(), key=lambda v: version_key(v.version), reverse=True)
        ready = [v for v in ordered if v.state == READY]
        self._latest[mv.model] = ready[0] if ready else ordered[0]
        self.on_change(mv)

    def get(self, model: str, version: str | None) -> ModelVersion | None:
        """The version asked for; with no version, the highest READY one (else the highest)."""
        if version is None:
            return self._latest.get(model)
        versions = self.models.get(model)
        return versions.get(version) if versions else None

    def versions(self, model: str) -> list[str]:
        return sorted(self.models.get(model, {}), key=version_key)

    def all_versions(self) -> list[ModelVersion]:
        return [mv for versions in list(self.models.values()) for mv in list(versions.values())]

    @property
    def ready(self) -> bool:
        """Loading has finished and at least one version can serve."""
        return self.loaded and any(mv.state == READY for mv in self.all_versions())

    def load_directory(
        self,
        root: Path,
        expected: Mapping[tuple[str, str], Mapping[str, str]],
        failures: Mapping[tuple[str, str], str] = {},
        only: Collection[tuple[str, str]] | None = None,
    ) -> None:
        """Discover ``root``, then verify and load each version (call from a loader thread).

        ``expected`` maps ``(model, version)`` to ``{source: sha256}`` digests the file must
        have; ``failures`` lists versions known to be unusable (e.g. refused by the registry);
        ``only``, if given, limits loading to these versions (a cache may hold stale ones).
        """
        pending = []
        for model, version, directory in discover(root):
            if only is not None and (model, version) not in only:
                continue
            mv = ModelVersion(model, version, directory / MODEL_FILE, dict(expected.get((model, version), {})))
            self.add(mv)
            pending.append((mv, directory))
        for (model, version), reason in failures.items():
            if self.get(model, version) is None:
                mv = ModelVersion(model, version, None)
                mv.fail(reason)
                self.add(mv)
        self.discovered = True
        for mv, directory in pending:
            if (mv.model, mv.version) in failures:
                mv.fail(failures[(mv.model, mv.version)])
            else:
                load_version(mv, directory)
            self.changed(mv)
        self.loaded = True
