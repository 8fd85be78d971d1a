"""Fetch one model file and verify it before it exists at its destination.

    python -m inference.fetch --uri s3://bucket/key|PATH --sha256 HEX --dest /models/<m>/<v>/model.onnx

Used by the model server's init container: the file appears at ``--dest`` (atomically) only
when its sha256 matches; otherwise the container exits 1 naming the URI, the expected and
the actual digest, and the pod does not start. ``s3://`` objects come through boto3
(``AWS_ENDPOINT_URL`` for on-prem S3); other URIs are paths inside the image.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from inference.registry import _download, file_sha256, s3_client

SHA256 = re.compile(r"^[0-9a-f]{64}$")


def fetch(uri: str, sha256: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and file_sha256(dest) == sha256:
        return
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        got = _download(s3_client(os.environ.get("AWS_ENDPOINT_URL")), bucket, key, dest, sha256)
    else:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
        os.close(fd)
        try:
            shutil.copyfile(uri, tmp)
            got = file_sha256(Path(tmp))
            if got == sha256:
                os.replace(tmp, dest)
        finally:
            Path(tmp).unlink(missing_ok=True)
    if got != sha256:
        raise ValueError(f"{uri}: sha256 {got} does not match the expected {sha256}; refusing it")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m inference.fetch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", required=True)
    ap.add_argument("--sha256", required=True)
    ap.add_argument("--dest", required=True, type=Path)
    args = ap.parse_args(argv)
    if not SHA256.match(args.sha256):
        print(f"inference.fetch: --sha256 {args.sha256!r} is not a sha256 hex digest", file=sys.stderr)
        return 2
    try:
        fetch(args.uri, args.sha256, args.dest)
    except (OSError, ValueError) as exc:
        print(f"inference.fetch: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # boto3/botocore errors: one line, no traceback
        print(f"inference.fetch: {args.uri}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"inference.fetch: {args.dest} verified ({args.sha256})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
