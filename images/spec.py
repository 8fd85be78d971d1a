"""Image definitions: ``images/<name>/image.yaml``, validated; errors name file, field and fix."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

REGISTRY = "registry.edgefleet.local/edgefleet"
IMAGES_DIR = Path(__file__).resolve().parent
NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


class ImageError(Exception):
    """A definition or build input that cannot make an image; ``str()`` is the user-facing line."""

    def __init__(self, file: str | Path, field: str, message: str, fix: str) -> None:
        super().__init__(f"{file}: {field}: {message} (fix: {fix})")


def _image_path(value: str) -> str:
    """A path inside the image, kept relative (``usr/bin/x``); refuses ``..`` and empty paths."""
    path = PurePosixPath("/" + value.lstrip("/"))
    if ".." in path.parts or str(path) == "/":
        raise ValueError(f"{value!r} is not a path inside the image")
    return str(path).lstrip("/")


ImagePath = Annotated[str, AfterValidator(_image_path)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Debian(_Strict):
    packages: list[str] = Field(min_length=1)
    # Dependencies only maintainer scripts use (debconf, perl, dpkg): nothing runs them in an image.
    exclude: list[str] = []


class Copy(_Strict):
    src: str  # relative to the repository root
    dst: ImagePath


class Dir(_Strict):
    path: ImagePath
    mode: str = "0755"

    @field_validator("mode")
    @classmethod
    def _octal(cls, value: str) -> str:
        if not re.fullmatch(r"0?[0-7]{3,4}", value):
            raise ValueError(f"{value!r} is not an octal mode such as 0755")
        return value


class Symlink(_Strict):
    path: ImagePath
    target: str


class Go(_Strict):
    package: str  # module directory, relative to the repository root
    output: ImagePath


class Wheels(_Strict):
    lock: str  # relative to the repository root: name==version --hash=sha256:... lines
    site_packages: ImagePath


class LayerSpec(_Strict):
    """One layer: everything listed is put into one tree, then written as one tar."""

    debian: Debian | None = None
    wheels: Wheels | None = None
    go: Go | None = None
    copy_: list[Copy] = Field(default=[], alias="copy")
    dirs: list[Dir] = []
    symlinks: list[Symlink] = []
    # Trees whose .py files get bytecode now: a read-only root filesystem cannot cache it later.
    bytecode: list[ImagePath] = []

    @model_validator(mode="after")
    def _not_empty(self) -> LayerSpec:
        if not (self.debian or self.wheels or self.go or self.copy_ or self.dirs or self.symlinks):
            raise ValueError("a layer needs at least one of debian, wheels, go, copy, dirs, symlinks")
        return self


class Config(_Strict):
    user: str
    entrypoint: list[str] = Field(min_length=1)
    cmd: list[str] = []
    env: dict[str, str] = {}
    working_dir: str = "/"
    exposed_ports: list[str] = []

    @field_validator("user")
    @classmethod
    def _numeric(cls, value: str) -> str:
        # Numeric so that runAsNonRoot can check it without an /etc/passwd lookup.
        if not re.fullmatch(r"\d+(:\d+)?", value):
            raise ValueError(f"{value!r} is not numeric uid[:gid]")
        return value


class ImageSpec(_Strict):
    description: str
    tag: str = "latest"
    layers: list[LayerSpec] = Field(min_length=1)
    config: Config


def image_names(images_dir: Path = IMAGES_DIR) -> list[str]:
    return sorted(p.parent.name for p in images_dir.glob("*/image.yaml"))


def load(name: str, images_dir: Path = IMAGES_DIR) -> ImageSpec:
    path = images_dir / name / "image.yaml"
    if not NAME.match(name) or not path.is_file():
        raise ImageError(
            path,
            "name",
            f"no image definition {name!r}",
            f"use one of {', '.join(image_names(images_dir)) or '(none)'}",
        )
    try:
        data = yaml.safe_load(path.read_text())
        return ImageSpec.model_validate(data)
    except yaml.YAMLError as exc:
        raise ImageError(path, "yaml", str(exc).replace("\n", " "), "fix the YAML syntax") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(root)"
        raise ImageError(path, field, first["msg"], "see images/README.md for the fields") from None


def repository(name: str) -> str:
    return f"{REGISTRY}/{name}"


def pinned_reference(name: str, manifest_digest: str) -> str:
    """What a pod spec names: the repository pinned by the manifest digest."""
    return f"{repository(name)}@{manifest_digest}"
