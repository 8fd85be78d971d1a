"""``python -m inference``: parse flags and environment, then serve (one process or several)."""

from __future__ import annotations

import os
import sys

# Numpy's BLAS is not on the request path; one thread keeps it from taking a core per worker.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from inference.config import parse
from inference.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    try:
        settings = parse(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.workers > 1:
        from inference.workers import supervise

        return supervise(settings)
    from inference.server import serve

    return serve(settings)


if __name__ == "__main__":
    sys.exit(main())
