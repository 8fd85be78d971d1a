"""Model artifacts from the repository or S3, fetched into a content-addressed cache and verified."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from components.catalog.schema import (
    REPO,
    ModelError,
    parse_s3_uri,
)
from components.contract import SHA256, Problem, cache_dir, file_sha256

CACHE = cache_dir()


# --- files and S3 -----------------------------------------------------------------------------


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
