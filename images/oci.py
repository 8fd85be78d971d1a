"""A small, deterministic OCI image writer and reader (image-spec v1.0, image layout v1.0).

Every byte written depends only on the inputs: tar entries sorted by path, one fixed mtime,
every entry owned by root (never by the builder's user), no user/group names, gzip without a name or
timestamp, JSON with sorted keys. The same inputs therefore give the same layer, config and
manifest digests, and the same archive bytes."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Protocol

from components.contract import file_sha256

# The project's one file digest; images' callers know it by this name.
sha256_file = file_sha256

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
# containerd (and so K3s' air-gap import) names an imported image after this annotation.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
# 2000-01-01T00:00:00Z: any fixed value would do; zero confuses some tools' "created" display.
EPOCH = 946684800
CREATED = "2000-01-01T00:00:00Z"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class Blob:
    """A content-addressed blob: ``digest`` is ``sha256:<hex>`` of its bytes."""

    media_type: str
    digest: str
    size: int

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str  # sha256 of the uncompressed tar, what the config lists
    created_by: str


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink: _Sink | None) -> None:
        self.sink, self.hash, self.size = sink, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]  # tarfile and gzip write only bytes
        self.hash.update(data)
        self.size += len(data)
        if self.sink is not None:
            self.sink.write(data)
        return len(data)


def _walk(root: Path) -> Iterable[tuple[str, Path]]:
    """(archive name, path) of everything below ``root``, parents first, siblings sorted by bytes."""
    for entry in sorted(os.scandir(root), key=lambda e: os.fsencode(e.name)):
        path = Path(entry.path)
        name = path.relative_to(root).as_posix()
        yield name, path
        if entry.is_dir(follow_symlinks=False):
            for child, child_path in _walk(path):
                yield f"{name}/{child}", child_path


def write_layer_tar(root: Path, out: IO[bytes] | _Hashing) -> None:
    """Write the tree at ``root`` as a layer tar (uncompressed) to ``out``.

    Modes keep their permission, setuid/setgid and sticky bits; hard links inside the tree stay
    hard links; sockets, fifos and devices are refused (a layer built from packages has none)."""
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, path in _walk(root):
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mtime, info.uname, info.gname, info.uid, info.gid = EPOCH, "", "", 0, 0
            info.mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                    tar.addfile(info)
                    continue
                seen[key] = name
                info.size = st.st_size
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                raise ValueError(f"{path}: not a regular file, directory or symlink")


def write_layer(root: Path, blobs: Path, created_by: str) -> Layer:
    """Write the tree at ``root`` as a gzip layer blob into the blob directory ``blobs``."""
    blobs.mkdir(parents=True, exist_ok=True)
    tmp = blobs / f".layer-{os.getpid()}.tmp"
    with tmp.open("wb") as raw:
        compressed = _Hashing(raw)
        # A fixed mtime and no file name keep the gzip header constant; level 6 is gzip's default.
        with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=6, mtime=0) as gz:
            plain = _Hashing(gz)
            write_layer_tar(root, plain)
    digest = compressed.hash.hexdigest()
    tmp.replace(blobs / digest)
    return Layer(
        Blob(MEDIA_LAYER_GZIP, f"sha256:{digest}", compressed.size), f"sha256:{plain.hash.hexdigest()}", created_by
    )


def put_json(blobs: Path, media_type: str, value: object) -> Blob:
    data = canonical_json(value)
    digest = hashlib.sha256(data).hexdigest()
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest).write_bytes(data)
    return Blob(media_type, f"sha256:{digest}", len(data))


@dataclass(frozen=True)
class RuntimeConfig:
    """The image's ``config`` section: what a runtime starts, as whom and where."""

    user: str
    entrypoint: list[str]
    cmd: list[str]
    env: list[str]
    working_dir: str = "/"
    exposed_ports: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def as_oci(self) -> dict:
        config: dict = {
            "User": self.user,
            "Entrypoint": self.entrypoint,
            "Env": self.env,
            "WorkingDir": self.working_dir,
        }
        if self.cmd:
            config["Cmd"] = self.cmd
        if self.exposed_ports:
            config["ExposedPorts"] = {port: {} for port in self.exposed_ports}
        if self.labels:
            config["Labels"] = dict(self.labels)
        return config


def image_config(runtime: RuntimeConfig, layers: list[Layer]) -> dict:
    return {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": runtime.as_oci(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": CREATED, "created_by": layer.created_by} for layer in layers],
    }


def write_image(blobs: Path, runtime: RuntimeConfig, layers: list[Layer]) -> Blob:
    """Write config and manifest blobs; returns the manifest (its digest is what pods pin)."""
    config = put_json(blobs, MEDIA_CONFIG, image_config(runtime, layers))
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.blob.descriptor() for layer in layers],
    }
    return put_json(blobs, MEDIA_MANIFEST, manifest)


def image_index(manifest: Blob, repository: str, tag: str) -> dict:
    """index.json naming the manifest twice: ``repository:tag`` and ``repository@digest``.

    containerd's CRI looks an image up by the exact reference a pod spec gives; importing the
    digest reference too lets a pod pinned by digest start without any registry."""
    platform = {"architecture": "amd64", "os": "linux"}
    return {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            manifest.descriptor(
                platform=platform,
                annotations={ANNOTATION_CONTAINERD_NAME: f"{repository}:{tag}", ANNOTATION_REF_NAME: tag},
            ),
            manifest.descriptor(
                platform=platform, annotations={ANNOTATION_CONTAINERD_NAME: f"{repository}@{manifest.digest}"}
            ),
        ],
    }


def write_archive(out: Path, blobs: Path, index: dict, digests: list[str]) -> None:
    """Write an OCI image layout as one tar: oci-layout, index.json and the listed blobs."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")

    def entry(tar: tarfile.TarFile, name: str, data: BinaryIO | None, size: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.mtime, info.uname, info.gname, info.uid, info.gid = EPOCH, "", "", 0, 0
        info.type = tarfile.DIRTYPE if data is None else tarfile.REGTYPE
        info.mode, info.size = (0o755, 0) if data is None else (0o644, size)
        tar.addfile(info, data)

    with tmp.open("wb") as raw, tarfile.open(fileobj=raw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        entry(tar, "blobs", None)
        entry(tar, "blobs/sha256", None)
        for digest in sorted(set(digests)):
            hexdigest = digest.removeprefix("sha256:")
            with (blobs / hexdigest).open("rb") as handle:
                entry(tar, f"blobs/sha256/{hexdigest}", handle, (blobs / hexdigest).stat().st_size)
        index_bytes = canonical_json(index)
        entry(tar, "index.json", io.BytesIO(index_bytes), len(index_bytes))
        layout = canonical_json({"imageLayoutVersion": "1.0.0"})
        entry(tar, "oci-layout", io.BytesIO(layout), len(layout))
    tmp.replace(out)


class LayoutError(Exception):
    """An OCI archive that does not hold together (missing blob, digest mismatch, bad JSON)."""


@dataclass(frozen=True)
class ArchiveImage:
    """One image read back from an archive, every blob checked against its digest."""

    names: tuple[str, ...]
    manifest_digest: str
    manifest: dict
    config: dict


def read_archive(path: Path) -> ArchiveImage:
    """Read and verify an OCI layout archive holding one image (one manifest, any names)."""
    with tarfile.open(path) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}

        def read(name: str) -> bytes:
            member = members.get(name)
            handle = tar.extractfile(member) if member else None
            if handle is None:
                raise LayoutError(f"{path}: {name} is missing")
            return handle.read()

        def blob(descriptor: dict) -> bytes:
            algorithm, _, hexdigest = descriptor["digest"].partition(":")
            data = read(f"blobs/{algorithm}/{hexdigest}")
            if algorithm != "sha256" or hashlib.sha256(data).hexdigest() != hexdigest:
                raise LayoutError(f"{path}: blob {descriptor['digest']} does not match its bytes")
            if len(data) != descriptor["size"]:
                raise LayoutError(f"{path}: blob {descriptor['digest']} is {len(data)} bytes, not {descriptor['size']}")
            return data

        if json.loads(read("oci-layout")).get("imageLayoutVersion") != "1.0.0":
            raise LayoutError(f"{path}: oci-layout: imageLayoutVersion is not 1.0.0")
        index = json.loads(read("index.json"))
        found = {d["digest"] for d in index.get("manifests", [])}
        if len(found) != 1:
            raise LayoutError(f"{path}: index.json: expected one manifest, found {sorted(found)}")
        descriptor = index["manifests"][0]
        manifest = json.loads(blob(descriptor))
        config = json.loads(blob(manifest["config"]))
        diff_ids = [_layer_diff_id(path, tar, members, layer) for layer in manifest["layers"]]
        if diff_ids != config["rootfs"]["diff_ids"]:
            raise LayoutError(f"{path}: config rootfs.diff_ids do not match the layers")
        names = tuple(d.get("annotations", {}).get(ANNOTATION_CONTAINERD_NAME, "") for d in index["manifests"])
        return ArchiveImage(names, descriptor["digest"], manifest, config)


class _Tee(io.RawIOBase):
    """Reads ``source``, passing every byte read through ``counted``."""

    def __init__(self, source: IO[bytes], counted: _Hashing) -> None:
        self.source, self.counted = source, counted

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]  # BufferedReader passes memoryviews
        data = self.source.read(len(buffer))
        self.counted.write(data)
        buffer[: len(data)] = data
        return len(data)


def _layer_diff_id(path: Path, tar: tarfile.TarFile, members: dict, descriptor: dict) -> str:
    """Check a layer blob against its digest and size, streaming; return its diff_id."""
    hexdigest = descriptor["digest"].removeprefix("sha256:")
    member = members.get(f"blobs/sha256/{hexdigest}")
    handle = tar.extractfile(member) if member else None
    if handle is None:
        raise LayoutError(f"{path}: layer {descriptor['digest']} is missing")
    counted = _Hashing(None)
    plain = hashlib.sha256()
    broken = None
    try:
        with gzip.GzipFile(fileobj=io.BufferedReader(_Tee(handle, counted), 1 << 20)) as gz:
            for chunk in iter(lambda: gz.read(1 << 20), b""):
                plain.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        broken = exc
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            counted.write(chunk)
    if counted.hash.hexdigest() != hexdigest or counted.size != descriptor["size"]:
        raise LayoutError(f"{path}: layer {descriptor['digest']} does not match its bytes")
    if broken is not None:
        raise LayoutError(f"{path}: layer {descriptor['digest']} is not a gzip stream: {broken}")
    return f"sha256:{plain.hexdigest()}"
