"""Where layer contents come from: Debian packages, pinned wheels, a Go build, repository files.

Each source has a fingerprint (what decides its bytes, known before anything is downloaded) and
a fill step that puts its files into a layer's tree. Downloads land in a content-addressed
cache and are checked against the digest the fingerprint names."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from images.oci import sha256_file
from images.spec import ImageError

APT_LISTS = Path("/var/lib/apt/lists")


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    sha256: str
    depends: tuple[tuple[str, ...], ...]  # groups of alternatives, Pre-Depends and Depends


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """RFC 822-style stanzas of ``apt-cache show``; continuation lines are joined."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, last = {}, ""
        elif line[0] in " \t" and last:
            current[last] += "\n" + line.strip()
        else:
            last, _, value = line.partition(":")
            current[last] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_depends(field: str) -> tuple[tuple[str, ...], ...]:
    """``a (>= 1) | b:any, c`` -> ((a, b), (c,)). Versions are not checked: apt's candidates are
    taken from one consistent index, which is what satisfies them."""
    groups = []
    for group in filter(None, (g.strip() for g in field.split(","))):
        names = tuple(re.split(r"[\s(:\[]", alt.strip(), maxsplit=1)[0] for alt in group.split("|"))
        groups.append(names)
    return tuple(groups)


def apt_show(names: Iterable[str]) -> dict[str, DebPackage]:
    """apt's candidate of each name; names that are virtual or unknown are left out."""
    names = sorted(set(names))
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *names], capture_output=True, text=True)
    found = {}
    for stanza in parse_stanzas(proc.stdout):
        depends = parse_depends(", ".join(filter(None, (stanza.get("Pre-Depends"), stanza.get("Depends")))))
        found[stanza["Package"]] = DebPackage(stanza["Package"], stanza["Version"], stanza["SHA256"], depends)
    return found


def resolve(
    roots: list[str], exclude: list[str], where: str, show: Callable[[Iterable[str]], dict[str, DebPackage]] = apt_show
) -> list[DebPackage]:
    """The dependency closure of ``roots`` (first satisfiable alternative of each group), sorted.

    A group with an excluded alternative counts as satisfied: excluded packages serve only
    maintainer scripts, which never run in an image."""
    known: dict[str, DebPackage | None] = {}
    selected: dict[str, DebPackage] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [("(packages)", (root,)) for root in roots]
    while pending:
        wanted = {alt for _, group in pending for alt in group if alt not in known}
        if wanted:
            found = show(wanted)
            known.update({name: found.get(name) for name in wanted})
        next_pending = []
        for parent, group in pending:
            if any(alt in selected or alt in exclude for alt in group):
                continue
            chosen = next((known[alt] for alt in group if known.get(alt)), None)
            if chosen is None:
                raise ImageError(
                    where,
                    "debian.packages",
                    f"{' | '.join(group)} (needed by {parent}) is not a package apt knows",
                    "run apt-get update, or add a real package that provides it",
                )
            selected[chosen.name] = chosen
            next_pending += [(chosen.name, dep) for dep in chosen.depends]
        pending = next_pending
    return sorted(selected.values(), key=lambda p: p.name)


def apt_lists_state() -> str:
    """A digest of apt's package lists: when it changes, candidates may have changed."""
    digest = hashlib.sha256()
    for path in sorted(APT_LISTS.glob("*_Packages*")):
        st = path.stat()
        digest.update(f"{path.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fetch_debs(packages: list[DebPackage], downloads: Path) -> list[Path]:
    """``<sha256>.deb`` of each package in ``downloads``, downloading the missing ones with apt."""
    downloads.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not (downloads / f"{p.sha256}.deb").is_file()]
    if missing:
        with tempfile.TemporaryDirectory(dir=downloads) as tmp:
            proc = subprocess.run(
                ["apt-get", "download", "-q", *(f"{p.name}={p.version}" for p in missing)],
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise ImageError(
                    "apt-get download",
                    "packages",
                    (proc.stderr.strip().splitlines() or ["failed"])[-1],
                    "check the Debian mirror is reachable and run apt-get update",
                )
            by_digest = {sha256_file(path): path for path in Path(tmp).glob("*.deb")}
            for package in missing:
                if package.sha256 not in by_digest:
                    raise ImageError(
                        "apt-get download",
                        package.name,
                        f"no downloaded file has the index's sha256 {package.sha256}",
                        "run apt-get update and build again",
                    )
                by_digest[package.sha256].replace(downloads / f"{package.sha256}.deb")
    return [downloads / f"{p.sha256}.deb" for p in packages]


def extract_debs(debs: list[Path], root: Path) -> None:
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    root.chmod(0o755)
    share = root / "usr/share"
    # Manuals and changelogs are dead weight in an image; copyright files stay (licences).
    for name in ("man", "info", "lintian", "doc-base", "bug"):
        shutil.rmtree(share / name, ignore_errors=True)
    docs = share / "doc"
    for package_doc in sorted(docs.iterdir()) if docs.is_dir() else []:
        if package_doc.is_symlink() or not package_doc.is_dir():
            continue  # a link to another package's folder: that one keeps the copyright
        for doc in package_doc.iterdir():
            if doc.name != "copyright":
                shutil.rmtree(doc) if doc.is_dir() and not doc.is_symlink() else doc.unlink()


@dataclass(frozen=True)
class LockedWheel:
    name: str
    version: str
    sha256: str


def read_lock(path: Path) -> list[LockedWheel]:
    """``name==version --hash=sha256:<hex>`` lines (pip's hash-checking format), sorted by name."""
    wheels = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)\s+--hash=sha256:([0-9a-f]{64})", line)
        if not match:
            raise ImageError(
                path,
                f"line {number}",
                f"{line!r} is not 'name==version --hash=sha256:<hex>'",
                "write one pinned wheel per line with its sha256",
            )
        wheels.append(LockedWheel(match[1].lower(), match[2], match[3]))
    if not wheels:
        raise ImageError(path, "(file)", "no wheels listed", "list the image's wheels with their hashes")
    return sorted(wheels, key=lambda w: w.name)


def fetch_wheels(lock: Path, downloads: Path) -> list[Path]:
    """The lock's wheels from ``downloads/<sha256>/``, downloading missing ones with pip."""
    wheels = read_lock(lock)
    missing = [w for w in wheels if not any((downloads / w.sha256).glob("*.whl"))]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            request = Path(tmp) / "requirements.txt"
            request.write_text("".join(f"{w.name}=={w.version} --hash=sha256:{w.sha256}\n" for w in missing))
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "-q",
                    "--no-deps",
                    "--only-binary=:all:",
                    "--require-hashes",
                    "-r",
                    str(request),
                    "-d",
                    f"{tmp}/wheels",
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode != 0:
                raise ImageError(
                    lock,
                    "wheels",
                    (proc.stderr.strip().splitlines() or ["pip download failed"])[-1],
                    "check the package index is reachable and the hashes are right",
                )
            for path in Path(tmp, "wheels").glob("*.whl"):
                target = downloads / sha256_file(path)
                target.mkdir(parents=True, exist_ok=True)
                path.replace(target / path.name)
    found = [next((downloads / w.sha256).glob("*.whl"), None) for w in wheels]
    lost = [w.name for w, path in zip(wheels, found, strict=True) if path is None]
    if lost:
        raise ImageError(lock, "wheels", f"pip did not download {', '.join(lost)}", "check the lock's hashes")
    return [path for path in found if path is not None]


def install_wheel(wheel: Path, site_packages: Path) -> None:
    """Unpack a wheel as an installer would for ``python -m`` use: code and metadata only.

    Console scripts (``*.data/scripts``) are left out: the image runs modules, and their
    shebangs would name the builder's interpreter."""
    with zipfile.ZipFile(wheel) as archive:
        for member in sorted(archive.infolist(), key=lambda m: m.filename):
            parts = PurePosixPath(member.filename).parts
            if member.is_dir() or ".." in parts:
                continue
            if parts[0].endswith(".data"):
                if parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            target = site_packages.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            target.chmod(0o755 if (member.external_attr >> 16) & 0o111 else 0o644)


def _skip(path: Path) -> bool:
    return path.name == "__pycache__" or path.suffix == ".pyc"


def tree_fingerprint(path: Path) -> str:
    """sha256 over names, exec bits, link targets and contents below ``path`` (or of one file)."""
    digest = hashlib.sha256()
    entries = (
        [path]
        if not path.is_dir()
        else sorted(
            (p for p in path.rglob("*") if not any(_skip(q) for q in [p, *p.relative_to(path).parents])),
            key=lambda p: p.relative_to(path).as_posix(),
        )
    )
    for entry in entries:
        rel = entry.relative_to(path).as_posix() if entry != path else path.name
        if entry.is_symlink():
            digest.update(f"L {rel} {os.readlink(entry)}\n".encode())
        elif entry.is_file():
            executable = "x" if os.access(entry, os.X_OK) else "-"
            digest.update(f"F {rel} {executable} {sha256_file(entry)}\n".encode())
        elif entry.is_dir():
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a file or tree with normalised modes (0644, or 0755 when executable), no caches."""
    if src.is_symlink():
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(os.readlink(src))
    elif src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        dst.chmod(0o755)
        for child in sorted(src.iterdir()):
            if not _skip(child):
                copy_tree(child, dst / child.name)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        dst.chmod(0o755 if os.access(src, os.X_OK) else 0o644)


def go_version() -> str:
    proc = subprocess.run(["go", "version"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError("go", "version", "the Go toolchain is not on PATH", "run scripts/bootstrap or install Go")
    return proc.stdout.strip()


def go_build(package: Path, output: Path) -> None:
    """A static, reproducible build: no cgo, no paths, no VCS stamp, no build id, no network."""
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOOS": "linux",
        "GOARCH": "amd64",
        "GOTOOLCHAIN": "local",
        "GOPROXY": "off",
        "GOFLAGS": "-buildvcs=false",
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(output), "."],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageError(package, "go build", proc.stderr.strip().replace("\n", "; "), "fix the Go program")


def compile_bytecode(root: Path, tree: str) -> None:
    """Write unchecked-hash .pyc files for ``tree`` inside ``root`` (recorded as ``/tree/...``).

    A fixed hash seed keeps set and frozenset constants in one order, so the bytes repeat."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "compileall",
            "-q",
            "-j",
            "1",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(root),
            "-p",
            "/",
            str(root / tree),
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise ImageError(
            root / tree,
            "bytecode",
            (proc.stdout + proc.stderr).strip().splitlines()[-1],
            "fix the syntax error or leave the tree out of bytecode",
        )
