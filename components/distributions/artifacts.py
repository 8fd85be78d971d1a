"""Release files on the host: which one fits a node's architecture, and the lines that verify
them before anything on the host changes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from components.contract import ARTIFACT_NAME, SHA256
from components.distributions.base import Arch, DistributionError
from components.distributions.bash import q


@dataclass(frozen=True)
class UploadedArtifact:
    """A release file already uploaded to the host (``dest``) that must match ``sha256`` before
    use; ``url_or_path`` is where it came from (its name may declare the architecture)."""

    name: str
    url_or_path: str
    sha256: str
    dest: str


_ARCH_HINTS: dict[str, Arch] = {"amd64": "amd64", "x86_64": "amd64", "arm64": "arm64", "aarch64": "arm64"}
UNAME_ARCH: dict[Arch, str] = {"amd64": "x86_64", "arm64": "aarch64"}
IMAGE_ARCHIVE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar.lz4", ".tar.bz2", ".tar")


def artifact_arch(artifact: UploadedArtifact) -> Arch | None:
    """The architecture an artifact's name or path declares, if any (release files carry it,
    e.g. ``k3s-arm64`` or ``k0s-v1.33.4+k0s.0-amd64``)."""
    tokens = re.split(r"[^a-z0-9_]+", f"{artifact.name}/{artifact.url_or_path}".lower())
    found = {_ARCH_HINTS[t] for t in tokens if t in _ARCH_HINTS}
    return found.pop() if len(found) == 1 else None


def for_arch(artifacts: Sequence[UploadedArtifact], arch: Arch) -> list[UploadedArtifact]:
    """Artifacts usable on ``arch``: those declaring it and those declaring none."""
    return [a for a in artifacts if artifact_arch(a) in (arch, None)]


def pick_artifact(artifacts: Sequence[UploadedArtifact], arch: Arch, name: str | None = None) -> UploadedArtifact:
    """The one artifact (named ``name``, if given) for ``arch``; one that declares the
    architecture wins over one that declares none."""
    pool = [a for a in artifacts if name is None or a.name == name]
    exact = [a for a in pool if artifact_arch(a) == arch]
    if len(exact) == 1:
        return exact[0]
    neutral = [a for a in pool if artifact_arch(a) is None]
    if not exact and len(neutral) == 1:
        return neutral[0]
    label = f"{name!r} " if name else ""
    if not exact and not neutral:
        named = f" named {name!r}" if name else ""
        raise DistributionError(
            "artifacts", f"no {label}artifact for {arch}", f"add the {arch} release file{named} to the site's artifacts"
        )
    listed = ", ".join(a.url_or_path for a in (exact or neutral))
    raise DistributionError(
        "artifacts", f"several {label}artifacts fit {arch}: {listed}", "keep one file per name and architecture"
    )


def archive_suffix(artifact: UploadedArtifact) -> str:
    """The container-image archive suffix the runtime recognises, from the file name."""
    base = PurePosixPath(artifact.url_or_path).name
    for suffix in IMAGE_ARCHIVE_SUFFIXES:
        if base.endswith(suffix):
            return suffix
    raise DistributionError(
        f"artifacts[{artifact.name}]",
        f"{base!r} is not an image archive",
        f"use the release's image archive (one of {', '.join(IMAGE_ARCHIVE_SUFFIXES)})",
    )


def check_artifact(artifact: UploadedArtifact) -> None:
    """The name, digest and destination are safe to put into a script."""
    if not ARTIFACT_NAME.fullmatch(artifact.name):
        raise DistributionError(
            f"artifacts[{artifact.name!r}]",
            "not an artifact name",
            "use lowercase letters, digits, '.', '_' and '-' (the name becomes part of a path)",
        )
    if not SHA256.fullmatch(artifact.sha256):
        raise DistributionError(
            f"artifacts[{artifact.name}].sha256",
            f"{artifact.sha256!r} is not a sha256 hex digest",
            "give the 64 lowercase hex characters printed by `sha256sum FILE`",
        )
    if not re.fullmatch(r"(/[A-Za-z0-9._+-]+)+", artifact.dest) or "/../" in f"{artifact.dest}/":
        raise DistributionError(
            f"artifacts[{artifact.name}].dest",
            f"{artifact.dest!r} is not an absolute path",
            "give the absolute path of the file on the host",
        )


def verify_lines(artifacts: Sequence[UploadedArtifact]) -> str:
    """Calls verifying every artifact (the ``verify_artifact`` function must be included)."""
    for a in artifacts:
        check_artifact(a)
    return "".join(f"verify_artifact {q(a.name)} {q(a.dest)} {a.sha256}\n" for a in artifacts)
