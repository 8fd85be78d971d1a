"""Build the images of images/*/image.yaml into OCI archives, cached by the digest of their inputs.

Cache (never in the repository), below ``$EDGEFLEET_CACHE/images``:

    <name>/<key>/<name>.oci.tar          the image layout archive (K3s air-gap agent/images/ format)
    <name>/<key>/<name>.oci.tar.sha256   its digest, sha256sum format
    <name>/<key>/image.json              reference, manifest digest, inputs (packages, wheels)
    <name>/layers/<layer key>.json       one built layer (its blob is in <name>/blobs/)
    images.json                          the last build of each image: what the program reads
    .downloads/, .apt/                   .deb and wheel files by sha256; resolved package sets

``key`` is the sha256 of every input: the builder's own code, the layer recipes with the
resolved Debian versions and sha256s, the wheel lock, file contents, the Go version, the
runtime config. Same key, same bytes: a second build only checks the archive's digest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from components.contract import cache_dir
from images import oci, sources
from images.spec import IMAGES_DIR, ImageError, ImageSpec, LayerSpec, load, pinned_reference, repository

REPO = IMAGES_DIR.parent
# The interpreter that writes bytecode must be the image's Python minor (Debian bookworm: 3.11).
BYTECODE_PYTHON = (3, 11)


def cache_root() -> Path:
    return cache_dir() / "images"


def builder_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(IMAGES_DIR.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _digest(value: object) -> str:
    return hashlib.sha256(oci.canonical_json(value)).hexdigest()


@dataclass
class Built:
    name: str
    reference: str
    manifest_digest: str
    archive: Path
    archive_sha256: str
    archive_size: int
    key: str
    cached: bool
    seconds: float

    def index_entry(self) -> dict:
        return {
            "reference": self.reference,
            "repository": repository(self.name),
            "digest": self.manifest_digest,
            "archive": str(self.archive),
            "archive_sha256": self.archive_sha256,
            "archive_size": self.archive_size,
            "key": self.key,
        }


class Builder:
    def __init__(self, cache: Path, log=print, images_dir: Path = IMAGES_DIR, repo: Path = REPO) -> None:
        self.cache, self.log, self.images_dir, self.repo = cache, log, images_dir, repo

    # -- inputs ------------------------------------------------------------------------------

    def resolve_debian(self, where: Path, layer: LayerSpec) -> list[sources.DebPackage]:
        """Resolved once per state of apt's lists: apt-cache is slow, and the answer only
        changes when the lists do."""
        assert layer.debian is not None
        request = {
            "packages": layer.debian.packages,
            "exclude": layer.debian.exclude,
            "lists": sources.apt_lists_state(),
        }
        saved = self.cache / ".apt" / f"{_digest(request)}.json"
        if saved.is_file():
            return [sources.DebPackage(p["name"], p["version"], p["sha256"], ()) for p in json.loads(saved.read_text())]
        packages = sources.resolve(layer.debian.packages, layer.debian.exclude, str(where))
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps([{"name": p.name, "version": p.version, "sha256": p.sha256} for p in packages]))
        return packages

    def layer_inputs(self, where: Path, layer: LayerSpec) -> dict:
        inputs: dict = {"recipe": layer.model_dump(mode="json", by_alias=True, exclude_defaults=True)}
        if layer.debian:
            inputs["debian"] = [f"{p.name}={p.version} sha256:{p.sha256}" for p in self.resolve_debian(where, layer)]
        if layer.wheels:
            inputs["wheels"] = [
                f"{w.name}=={w.version} sha256:{w.sha256}" for w in sources.read_lock(self.repo / layer.wheels.lock)
            ]
        if layer.go:
            inputs["go"] = {
                "version": sources.go_version(),
                "source": sources.tree_fingerprint(self.repo / layer.go.package),
            }
        if layer.copy_:
            missing = [c.src for c in layer.copy_ if not (self.repo / c.src).exists()]
            if missing:
                raise ImageError(
                    where,
                    "layers.copy.src",
                    f"{', '.join(missing)} not found in the repository",
                    "give paths relative to the repository root",
                )
            inputs["copy"] = {c.src: sources.tree_fingerprint(self.repo / c.src) for c in layer.copy_}
        if layer.bytecode:
            inputs["python"] = sys.version
        return inputs

    # -- layers ------------------------------------------------------------------------------

    def fill(self, where: Path, layer: LayerSpec, root: Path) -> None:
        if layer.debian:
            packages = self.resolve_debian(where, layer)
            sources.extract_debs(sources.fetch_debs(packages, self.cache / ".downloads" / "debs"), root)
        if layer.wheels:
            site = root / layer.wheels.site_packages
            for wheel in sources.fetch_wheels(self.repo / layer.wheels.lock, self.cache / ".downloads" / "wheels"):
                sources.install_wheel(wheel, site)
        if layer.go:
            sources.go_build(self.repo / layer.go.package, root / layer.go.output)
        for copy in layer.copy_:
            sources.copy_tree(self.repo / copy.src, root / copy.dst)
        for directory in layer.dirs:
            (root / directory.path).mkdir(parents=True, exist_ok=True)
            (root / directory.path).chmod(int(directory.mode, 8))
        for link in layer.symlinks:
            (root / link.path).parent.mkdir(parents=True, exist_ok=True)
            (root / link.path).symlink_to(link.target)
        if layer.bytecode and sys.version_info[:2] != BYTECODE_PYTHON:
            raise ImageError(
                where,
                "layers.bytecode",
                f"bytecode needs Python {'.'.join(map(str, BYTECODE_PYTHON))}, this is {sys.version.split()[0]}",
                "run scripts/build-images with the repository's .venv",
            )
        for tree in layer.bytecode:
            sources.compile_bytecode(root, tree)

    def layer(self, name: str, where: Path, layer: LayerSpec, position: int, inputs: dict) -> oci.Layer:
        key = _digest({"builder": builder_fingerprint(), "inputs": inputs})
        image_cache = self.cache / name
        meta, blobs = image_cache / "layers" / f"{key}.json", image_cache / "blobs"
        if meta.is_file():
            saved = json.loads(meta.read_text())
            blob = blobs / saved["digest"].removeprefix("sha256:")
            if blob.is_file() and blob.stat().st_size == saved["size"]:
                return oci.Layer(
                    oci.Blob(oci.MEDIA_LAYER_GZIP, saved["digest"], saved["size"]),
                    saved["diff_id"],
                    saved["created_by"],
                )
        created_by = f"build-images {name} layer {position}: " + ", ".join(
            part
            for part in (
                layer.debian and "debian " + " ".join(layer.debian.packages),
                layer.wheels and f"wheels {layer.wheels.lock}",
                layer.go and f"go {layer.go.package}",
                layer.copy_ and "copy " + " ".join(c.src for c in layer.copy_),
                (layer.dirs or layer.symlinks) and "dirs and links",
            )
            if part
        )
        work = image_cache / "work"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            root = Path(tmp) / "rootfs"
            root.mkdir()
            # Directories and files made on the way (parents, __pycache__) get 0755/0644 whatever
            # the caller's umask: the layer's bytes must not depend on it.
            umask = os.umask(0o022)
            try:
                self.fill(where, layer, root)
            finally:
                os.umask(umask)
            built = oci.write_layer(root, blobs, created_by)
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            json.dumps(
                {
                    "digest": built.blob.digest,
                    "size": built.blob.size,
                    "diff_id": built.diff_id,
                    "created_by": created_by,
                    "inputs": inputs,
                },
                indent=1,
                sort_keys=True,
            )
        )
        return built

    # -- images ------------------------------------------------------------------------------

    def build(self, name: str) -> Built:
        started = time.monotonic()
        spec: ImageSpec = load(name, self.images_dir)
        where = self.images_dir / name / "image.yaml"
        runtime = oci.RuntimeConfig(
            user=spec.config.user,
            entrypoint=spec.config.entrypoint,
            cmd=spec.config.cmd,
            env=[f"{k}={v}" for k, v in spec.config.env.items()],
            working_dir=spec.config.working_dir,
            exposed_ports=tuple(spec.config.exposed_ports),
        )
        inputs = [self.layer_inputs(where, layer) for layer in spec.layers]
        key = _digest(
            {
                "builder": builder_fingerprint(),
                "layers": inputs,
                "config": spec.config.model_dump(),
                "tag": spec.tag,
                "repository": repository(name),
            }
        )
        out = self.cache / name / key[:16]
        archive, record = out / f"{name}.oci.tar", out / "image.json"
        if record.is_file() and archive.is_file():
            saved = json.loads(record.read_text())
            digest = oci.sha256_file(archive)
            if saved["archive_sha256"] == digest:
                return Built(
                    name,
                    saved["reference"],
                    saved["digest"],
                    archive,
                    digest,
                    archive.stat().st_size,
                    key,
                    True,
                    time.monotonic() - started,
                )
            self.log(f"{name}: {archive} does not match its recorded sha256, rebuilding")
        layers = [
            self.layer(name, where, layer, position, layer_inputs)
            for position, (layer, layer_inputs) in enumerate(zip(spec.layers, inputs, strict=True), 1)
        ]
        blobs = self.cache / name / "blobs"
        manifest = oci.write_image(blobs, runtime, layers)
        config_digest = json.loads((blobs / manifest.digest.removeprefix("sha256:")).read_text())["config"]["digest"]
        out.mkdir(parents=True, exist_ok=True)
        oci.write_archive(
            archive,
            blobs,
            oci.image_index(manifest, repository(name), spec.tag),
            [manifest.digest, config_digest, *(layer.blob.digest for layer in layers)],
        )
        digest = oci.sha256_file(archive)
        (out / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
        built = Built(
            name,
            pinned_reference(name, manifest.digest),
            manifest.digest,
            archive,
            digest,
            archive.stat().st_size,
            key,
            False,
            time.monotonic() - started,
        )
        record.write_text(
            json.dumps(
                {**built.index_entry(), "layers": [layer.blob.descriptor() for layer in layers], "inputs": inputs},
                indent=1,
                sort_keys=True,
            )
        )
        prune(self.cache, name, keep=out)
        return built


def write_index(path: Path, built: list[Built]) -> None:
    """Merge these builds into ``images.json`` (other images' entries stay), atomically."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    images = {**current.get("images", {}), **{b.name: b.index_entry() for b in built}}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"images": dict(sorted(images.items()))}, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


def read_index(path: Path | None = None) -> dict[str, dict]:
    """The images.json entries by image name (empty when nothing was built yet)."""
    path = path or cache_root() / "images.json"
    return json.loads(path.read_text())["images"] if path.is_file() else {}


def prune(cache: Path, name: str, keep: Path) -> None:
    """Drop this image's older archives and the blobs and layer records nothing kept refers to."""
    image_cache = cache / name
    for old in image_cache.iterdir():
        if old.is_dir() and len(old.name) == 16 and old != keep:
            shutil.rmtree(old)
    wanted = {d["digest"].removeprefix("sha256:") for d in json.loads((keep / "image.json").read_text())["layers"]}
    for meta in (image_cache / "layers").glob("*.json"):
        if json.loads(meta.read_text())["digest"].removeprefix("sha256:") not in wanted:
            meta.unlink()
    for blob in (image_cache / "blobs").iterdir():
        if blob.name not in wanted:
            blob.unlink()
