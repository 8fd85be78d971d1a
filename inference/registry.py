"""Model versions from an S3 registry, verified into a local cache before anything loads them.

``s3://bucket/prefix`` holds the repository layout (``<model>/<version>/model.onnx`` and an
optional ``config.yaml``). Every version is verified against the digest the model catalog
declares for it (``--expect-sha256 model:version=<sha256>``), never against the object's own
``x-amz-meta-sha256``: whoever can write the bucket can write that metadata too. A version the
catalog gives no digest for, or whose download does not hash to it, is refused: it never lands
in the cache and its version is reported FAILED.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import ConfigError
from inference.repository import CONFIG_FILE, MODEL_FILE, NAME, SHA256

S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(/(?P<prefix>.*))?$")
EXPECTED_SOURCE = "--expect-sha256"


@dataclass
class SyncResult:
    """What a sync brought into the cache."""

    expected: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    failures: dict[tuple[str, str], str] = field(default_factory=dict)


def parse_registry(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> ``(bucket, "prefix/")``; raises :class:`ConfigError`."""
    match = S3_URI.match(uri)
    if not match:
        raise ConfigError(
            "--registry",
            f"{uri!r} is not an s3://bucket/prefix URI",
            "give e.g. s3://models/fleet (bucket names: lowercase, digits, '.', '-')",
        )
    prefix = (match["prefix"] or "").strip("/")
    return match["bucket"], f"{prefix}/" if prefix else ""


def s3_client(endpoint: str | None) -> Any:
    """A boto3 S3 client; credentials and region come from the usual AWS variables or files."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint or None,
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60),
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sync(uri: str, cache: Path, client: Any, expected: Mapping[tuple[str, str], str]) -> SyncResult:
    """Bring every verified ``model.onnx`` (and its ``config.yaml``) under ``uri`` into ``cache``.

    ``expected`` maps ``(model, version)`` to the catalog's sha256; a version without one is
    refused. A cached file whose digest already matches is kept. Concurrent syncs (one per worker
    process) serialise per version on a lock file, and files only appear by atomic rename.
    """
    bucket, prefix = parse_registry(uri)
    result = SyncResult()
    found: dict[tuple[str, str], set[str]] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            parts = obj["Key"][len(prefix) :].split("/")
            if (
                len(parts) == 3
                and NAME.match(parts[0])
                and NAME.match(parts[1])
                and parts[2] in (MODEL_FILE, CONFIG_FILE)
            ):
                found.setdefault((parts[0], parts[1]), set()).add(parts[2])
    for (model, version), files in sorted(found.items()):
        if MODEL_FILE not in files:
            continue
        key = f"{prefix}{model}/{version}/"
        target = cache / model / version
        target.mkdir(parents=True, exist_ok=True)
        with (target / ".lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            want = expected.get((model, version), "")
            problem = _fetch_version(client, bucket, key, target, CONFIG_FILE in files, want, f"{model}:{version}")
        if want:
            result.expected[(model, version)] = {EXPECTED_SOURCE: want}
        if problem:
            result.failures[(model, version)] = f"refused s3://{bucket}/{key}{MODEL_FILE}: {problem}"
    return result


def _fetch_version(
    client: Any, bucket: str, key: str, target: Path, has_config: bool, want: str, name: str
) -> str | None:
    """Fetch one version into ``target`` if it hashes to ``want``; returns what is wrong."""
    model_path = target / MODEL_FILE
    if not SHA256.match(want):
        _remove(model_path)
        return (
            f"the catalog gives no sha256 for {name} (fix: pass {EXPECTED_SOURCE} {name}=<its sha256 in "
            "models/catalog.yaml>; the object's own x-amz-meta-sha256 is not trusted)"
        )
    if not (model_path.is_file() and file_sha256(model_path) == want):
        got = _download(client, bucket, key + MODEL_FILE, model_path, want)
        if got != want:
            return f"the download hashes to {got}, the catalog expects {want}"
    if has_config:
        _download(client, bucket, key + CONFIG_FILE, target / CONFIG_FILE)
    else:
        _remove(target / CONFIG_FILE)
    return None


def _download(client: Any, bucket: str, key: str, dest: Path, want: str | None = None) -> str:
    """Download ``key`` beside ``dest`` and rename it into place, unless ``want`` is given and
    the digest differs (then ``dest`` is removed too); returns the download's digest."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        client.download_file(bucket, key, tmp)
        digest = file_sha256(Path(tmp))
        if want is not None and digest != want:
            _remove(dest)
        else:
            os.replace(tmp, dest)
        return digest
    finally:
        _remove(Path(tmp))


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
