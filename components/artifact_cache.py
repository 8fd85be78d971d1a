"""Artifacts with an ``https://`` source: downloaded on the machine running Pulumi into
``$EDGEFLEET_CACHE/artifacts/<sha256>/<file name>``, verified against the inventory's sha256,
then uploaded to hosts like any local file (hosts need no route to the artifact server).

TLS is always verified: against the system's trust store, or against the CA bundle named by
``EDGEFLEET_CA_BUNDLE`` (a PEM file) for an internal artifact server. A redirect may only
lead to another https URL. The whole download is bounded in time.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from components.contract import cache_dir, file_sha256

CA_BUNDLE_ENV = "EDGEFLEET_CA_BUNDLE"
DEFAULT_TIMEOUT_S = 600
CHUNK = 1 << 20


class DownloadError(Exception):
    """An artifact that could not be downloaded or does not match its sha256."""


def cache_path(url: str, sha256: str) -> Path:
    """Where the verified download of ``url`` lives (the file keeps its published name, which
    carries its architecture and archive type)."""
    name = PurePosixPath(urlsplit(url).path).name or "artifact"
    return cache_dir() / "artifacts" / sha256 / name


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if not newurl.startswith("https://"):
            raise DownloadError(f"the server redirected to {newurl!r}, which is not https")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _tls_context() -> ssl.SSLContext:
    bundle = os.environ.get(CA_BUNDLE_ENV)
    if bundle and not Path(bundle).is_file():
        raise DownloadError(f"{CA_BUNDLE_ENV}={bundle!r} is not a file")
    return ssl.create_default_context(cafile=bundle or None)


def fetch(url: str, sha256: str, *, what: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """The verified local copy of ``url`` (downloaded once; a cached copy is checked again).
    Raises :class:`DownloadError` naming ``what`` (site and artifact), the URL and the fix."""
    dest = cache_path(url, sha256)
    fix = (
        f"check that the URL is reachable from this machine and its server's certificate is trusted "
        f"(set {CA_BUNDLE_ENV} to a PEM bundle for an internal CA), or download the file and give its local path"
    )
    if not url.startswith("https://"):
        raise DownloadError(f"{what}: {url!r} is not an https URL (fix: publish the artifact over https)")
    if dest.is_file():
        if file_sha256(dest) == sha256:
            return dest
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".download-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=_tls_context()), _HttpsOnlyRedirects())
        with os.fdopen(fd, "wb") as out, opener.open(url, timeout=min(60.0, timeout_s)) as response:
            while chunk := response.read(CHUNK):
                if time.monotonic() > deadline:
                    raise DownloadError(f"not complete after {timeout_s:g}s")
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise DownloadError(
                f"{what}: {url} has sha256 {h.hexdigest()}, expected {sha256} "
                "(fix: correct the sha256 in the inventory, or check who serves this file)"
            )
        tmp.chmod(0o644)
        tmp.replace(dest)
        return dest
    except DownloadError as exc:
        if str(exc).startswith(what):
            raise
        raise DownloadError(f"{what}: cannot download {url}: {exc} (fix: {fix})") from None
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DownloadError(f"{what}: cannot download {url}: {reason} (fix: {fix})") from None
    finally:
        tmp.unlink(missing_ok=True)
