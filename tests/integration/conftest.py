"""Real-engine fixtures: the Pulumi CLI and plugins that scripts/bootstrap built, each test
with its own file backend in a temporary directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from components.contract import cache_dir
from fleet.toolchain import cli_dir, isolated_env, versions

REPO = Path(__file__).resolve().parents[2]


VERSIONS = versions()
CACHE = cache_dir()
TOOLCHAIN = CACHE / "toolchain"
CLI_DIR = cli_dir()


@dataclass
class Pulumi:
    """Runs the real CLI in one working directory against one private backend."""

    cwd: Path
    backend: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.run(
            ["pulumi", *args], cwd=self.cwd, env=env, text=True, capture_output=True, timeout=timeout, input=input
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pulumi {' '.join(args)} exited {proc.returncode}\n"
                f"STDOUT:\n{proc.stdout[-6000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
            )
        return proc

    def json(self, *args: str, **kw) -> object:
        return json.loads(self.run(*args, **kw).stdout)


def pulumi_env(backend: Path, passphrase: str = "integration-test-passphrase") -> dict[str, str]:
    return isolated_env(backend, passphrase)


@pytest.fixture(scope="session", autouse=True)
def _toolchain() -> None:
    if not (CLI_DIR / "pulumi").exists():
        pytest.fail(f"the Pulumi toolchain is missing at {CLI_DIR} (run scripts/bootstrap)")


def processes_of(project: Path) -> list[str]:
    """Processes working in ``project`` or naming it on their command line (an engine, its
    plugins, a program): what a killed run may have left behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if cwd == str(project) or cwd.startswith(f"{project}/") or str(project) in cmd:
            found.append(f"{entry.name} {cmd[:200]}")
    return found


def kill_processes_of(project: Path) -> None:
    """SIGKILL what :func:`processes_of` finds (a killed engine's plugins: they run in process
    groups of their own and some name the project only by their working directory)."""
    for line in processes_of(project):
        try:
            os.kill(int(line.split(" ", 1)[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def make_pulumi(tmp_path: Path):
    """Factory: a Pulumi runner for a project directory (copied into tmp when asked)."""

    def _make(project: Path, *, copy: bool = False, backend: Path | None = None, **envkw) -> Pulumi:
        cwd = project
        if copy:
            cwd = tmp_path / project.name
            shutil.copytree(
                project, cwd, ignore=shutil.ignore_patterns(".venv", ".pulumi", "__pycache__", ".git", ".pytest_cache")
            )
        b = backend or (tmp_path / "state")
        b.mkdir(parents=True, exist_ok=True)
        return Pulumi(cwd=cwd, backend=b, env=pulumi_env(b, **envkw))

    return _make


@pytest.fixture
def moto_s3():
    """moto's S3 server on a free loopback port; yields (endpoint_url, boto3 client)."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, **creds)
    try:
        yield endpoint, client
    finally:
        server.stop()


@dataclass
class Lab:
    """The lab hosts (lab/lab up): addresses from lab/hosts.txt, keys from the cache."""

    dir: Path

    @property
    def key(self) -> Path:
        return self.dir / "ssh/id_ed25519"

    def address(self, host: str) -> str:
        for line in (REPO / "lab/hosts.txt").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == host:
                return parts[1]
        raise KeyError(host)

    def host_key(self, host: str) -> str:
        return (self.dir / "hostkeys" / f"{host}.pub").read_text().strip()


@pytest.fixture(scope="module")
def lab() -> Lab:
    """Brings the lab up for a test module (idempotent: hosts already up stay as they are);
    `lab/lab down` removes it."""
    if os.geteuid() != 0:
        message = "the lab needs root (network namespaces); run the tests as root (CI does)"
        if os.environ.get("CI"):
            pytest.fail(message)  # in CI a skipped lab would hide every end-to-end test
        pytest.skip(message)
    claim = Path(os.environ.get("EDGEFLEET_LAB_DIR") or CACHE / "lab") / "dev-stack"
    if claim.exists():
        # `make up` installed the dev stack on these hosts: the lab tests would reinstall and
        # then uninstall them under it, leaving a stack that claims hosts it no longer has.
        pytest.fail(
            f"the lab hosts run the dev stack of {claim.read_text().strip()} ({claim}) "
            "(fix: run `make down` there first, then the lab tests)"
        )
    proc = subprocess.run([str(REPO / "lab/lab"), "up"], text=True, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return Lab(dir=CACHE / "lab")
