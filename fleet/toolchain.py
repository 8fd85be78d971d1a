"""The project's offline Pulumi toolchain as a child process sees it: the pinned versions
(scripts/versions.env), the CLI that scripts/bootstrap built, and the environment that
scripts/env.sh sets. The fleet command, the benchmarks and the tests all start the CLI
through these."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from components.contract import cache_dir

REPO = Path(__file__).resolve().parent.parent  # this repository: toolchain versions, virtualenv
OFFLINE = {
    "PULUMI_SKIP_UPDATE_CHECK": "true",
    "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
    "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
    "PULUMI_DIY_BACKEND_NO_LEGACY_WARNING": "true",
}


def versions() -> dict[str, str]:
    """The pins of scripts/versions.env (``NAME=value`` lines)."""
    out = {}
    for line in (REPO / "scripts/versions.env").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip().strip('"')
    return out


def cli_dir() -> Path:
    """Where scripts/bootstrap put the Pulumi CLI and the python language host."""
    return cache_dir() / "toolchain" / f"pulumi-{versions().get('PULUMI_VERSION', '')}"


def toolchain_env(repo: Path, environment: str) -> dict[str, str]:
    """The variables scripts/env.sh sets, for whatever the caller left unset: the project's
    CLI on PATH, its PULUMI_HOME, a file backend in the repo, no update checks. The public dev
    passphrase is given only to a dev inventory (the program refuses it for prod anyway)."""
    cache = cache_dir()
    env = dict(os.environ)
    cli = cli_dir()
    if (cli / "pulumi").exists():
        env["PATH"] = f"{cli}:{REPO / '.venv/bin'}:{env.get('PATH', '')}"
    env.setdefault("PULUMI_HOME", str(cache / "pulumi-home"))
    env.setdefault("PULUMI_BACKEND_URL", f"file://{repo / '.pulumi'}")
    env.setdefault("PULUMI_PYTHON_CMD", str(REPO / ".venv/bin/python"))
    for key, value in OFFLINE.items():
        env.setdefault(key, value)
    if (
        environment == "dev"
        and not env.get("PULUMI_CONFIG_PASSPHRASE")
        and not env.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    ):
        env["PULUMI_CONFIG_PASSPHRASE"] = "edgefleet-dev-lab-only"
    if env["PULUMI_BACKEND_URL"].startswith("file://"):
        Path(env["PULUMI_BACKEND_URL"].removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return env


def isolated_env(backend: Path, passphrase: str) -> dict[str, str]:
    """A CLI environment that shares nothing Pulumi-related with the caller's: none of its
    PULUMI_* variables, a private file backend, this passphrase, plain output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_")}
    env.update(OFFLINE)
    env.update(
        {
            "PATH": f"{cli_dir()}:{REPO / '.venv/bin'}:{env.get('PATH', '')}",
            "PULUMI_HOME": str(cache_dir() / "pulumi-home"),
            "PULUMI_BACKEND_URL": f"file://{backend}",
            "PULUMI_CONFIG_PASSPHRASE": passphrase,
            "PULUMI_PYTHON_CMD": str(REPO / ".venv/bin/python"),
            "NO_COLOR": "1",
        }
    )
    return env


def project_copy(parent: Path, *, skip: tuple[str, ...] = ("bench", "tests")) -> Path:
    """A copy of the project under ``parent`` (its own stacks and inventories), sharing the
    virtualenv; ``skip`` names top-level folders a run does not need."""
    root = parent / "edgefleet"
    shutil.copytree(
        REPO,
        root,
        symlinks=True,
        ignore=shutil.ignore_patterns(
            ".venv",
            ".pulumi",
            ".git",
            "__pycache__",
            ".pytest_cache",
            ".hypothesis",
            ".mypy_cache",
            ".ruff_cache",
            *skip,
        ),
    )
    (root / ".venv").symlink_to(REPO / ".venv")
    return root
