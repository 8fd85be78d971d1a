"""The images scripts/build-images makes, for real: valid OCI archives pinned in images.json,
byte-identical from a fresh cache, and runnable with Debian's runc (read-only root filesystem,
their own non-root users). Needs root (apt-get, runc, umoci) and, on a cold cache, the Debian
mirror and the package index."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from components.contract import cache_dir
from images import oci, sources
from images.build import read_index
from images.spec import image_names, repository

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CACHE = cache_dir()
# Container ids of these tests; the lab's namespaces and containers are ef-*, never touched here.
PREFIX = f"edgefleet-imgtest-{os.getpid()}"


def build_images(cache: Path) -> dict[str, dict]:
    env = {**os.environ, "EDGEFLEET_CACHE": str(cache)}
    proc = subprocess.run([str(REPO / "scripts/build-images")], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    return read_index(cache / "images" / "images.json")


@pytest.fixture(scope="module")
def tools():
    if os.geteuid() != 0:
        pytest.fail("these tests need root: runc, umoci and apt-get (fix: run them as root, like the lab tests)")
    missing = [pkg for pkg, binary in (("runc", "runc"), ("umoci", "umoci")) if not shutil.which(binary)]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def built(tools) -> dict[str, dict]:
    return build_images(CACHE)


def test_images_json_pins_each_archive_by_its_manifest_digest(built):
    assert set(built) >= set(image_names())
    for name in image_names():
        entry = built[name]
        archive = Path(entry["archive"])
        image = oci.read_archive(archive)  # every blob checked against its digest
        assert entry["digest"] == image.manifest_digest
        assert entry["reference"] == f"{repository(name)}@{image.manifest_digest}"
        assert (
            entry["archive_sha256"]
            == oci.sha256_file(archive)
            == (archive.parent / f"{archive.name}.sha256").read_text().split()[0]
        )
        assert image.names == (f"{repository(name)}:latest", entry["reference"])
        assert not archive.is_relative_to(REPO)
    config = {name: oci.read_archive(Path(built[name]["archive"])).config["config"] for name in image_names()}
    assert config["inference"]["User"] == "65532:65532"
    assert config["inference"]["Entrypoint"] == ["python", "-m", "inference"]
    assert config["pause"]["User"] == "65535:65535" and config["pause"]["Entrypoint"] == ["/pause"]
    assert config["client"]["User"] == "65532:65532"


def test_a_fresh_cache_builds_the_same_bytes(built, tmp_path):
    fresh = tmp_path / "cache"
    (fresh / "images").mkdir(parents=True)
    # Downloads are content-addressed and checked: sharing them keeps the network out of the test.
    (fresh / "images/.downloads").symlink_to(CACHE / "images/.downloads")
    again = build_images(fresh)
    for name in image_names():
        assert again[name]["digest"] == built[name]["digest"], name
        assert again[name]["archive_sha256"] == built[name]["archive_sha256"], name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unpack(archive: Path, dest: Path) -> Path:
    """An OCI runtime bundle (rootfs + config.json from the image config), made by umoci."""
    layout = dest / "layout"
    layout.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(layout, filter="data")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:latest", str(dest / "bundle")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    shutil.rmtree(layout)
    return dest / "bundle"


def configure(
    bundle: Path, args: list[str] | None = None, host_network: bool = False, mounts: list[dict] | None = None
) -> dict:
    """Pod-like settings: read-only root, /tmp as a tmpfs (the pod's emptyDir), no terminal."""
    path = bundle / "config.json"
    config = json.loads(path.read_text())
    config["root"]["readonly"] = True
    config["process"]["terminal"] = False
    if args is not None:
        config["process"]["args"] = args
    if host_network:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"]
    config["mounts"].append(
        {
            "destination": "/tmp",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=64m"],
        }
    )
    config["mounts"] += mounts or []
    path.write_text(json.dumps(config))
    return config


class Runc:
    def __init__(self, state: Path) -> None:
        self.state, self.ids = state, []

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["runc", "--root", str(self.state), *args],
            capture_output=True,
            text=True,
            timeout=kw.pop("timeout", 60),
            **kw,
        )

    def start(self, name: str, bundle: Path, log: Path) -> str:
        cid = f"{PREFIX}-{name}"
        with log.open("wb") as out:
            proc = subprocess.run(
                ["runc", "--root", str(self.state), "run", "-d", "--bundle", str(bundle), cid],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                timeout=60,
            )
        assert proc.returncode == 0, log.read_text()
        self.ids.append(cid)
        return cid

    def pid(self, cid: str) -> int:
        return json.loads(self("state", cid).stdout)["pid"]

    def cleanup(self) -> None:
        for cid in self.ids:
            self("kill", cid, "KILL")
            self("delete", "--force", cid)


@contextmanager
def runc_session(tmp_path: Path):
    runc = Runc(tmp_path / "runc-state")
    try:
        yield runc
    finally:
        runc.cleanup()


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
        return response.status, json.loads(text) if text else {}


def wait_ready(url: str, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} not ready after {seconds} s; container log:\n{log.read_text()[-3000:]}")


def test_inference_image_serves_under_runc_read_only_as_65532(built, tmp_path):
    bundle = unpack(Path(built["inference"]["archive"]), tmp_path / "inference")
    port = free_port()
    config = configure(
        bundle,
        host_network=True,
        args=[
            "python",
            "-m",
            "inference",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-repository",
            "/opt/app/models",
        ],
    )
    assert config["process"]["user"] == {"uid": 65532, "gid": 65532}  # from the image config, by umoci
    client = unpack(Path(built["client"]["archive"]), tmp_path / "client")
    base = f"http://127.0.0.1:{port}/v2"
    scale = np.array([3, 3, 3, 2, 2, 60, 10, 1500])
    features = (np.random.default_rng(7).normal(size=(4, 8)) * scale).astype(np.float32)
    with runc_session(tmp_path) as runc:
        log = tmp_path / "inference.log"
        cid = runc.start("inference", bundle, log)
        wait_ready(f"{base}/health/ready", log)
        status, answer = http(
            "POST",
            f"{base}/models/predictive-maintenance/infer",
            {"inputs": [{"name": "features", "datatype": "FP32", "shape": [4, 8], "data": features.ravel().tolist()}]},
        )
        assert status == 200
        pid = runc.pid(cid)
        status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        assert {line.split()[1] for line in status_lines if line.startswith(("Uid:", "Gid:"))} == {"65532"}
        assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3] == [b"python", b"-m", b"inference"]
        write = runc("exec", cid, "python", "-c", "open('/opt/app/x', 'w')")
        assert write.returncode != 0 and "Read-only file system" in write.stderr, write.stderr

        # The client image, as its own non-root user, reaches the server over loopback.
        configure(
            client,
            host_network=True,
            args=[
                "/bin/sh",
                "-c",
                f"curl -sf --max-time 10 {base}/health/ready"
                f" && wget -q -O - {base}/models/predictive-maintenance && id -u",
            ],
        )
        client_run = runc("run", "--bundle", str(client), f"{PREFIX}-client", timeout=60, stdin=subprocess.DEVNULL)
        assert client_run.returncode == 0, client_run.stdout + client_run.stderr
        assert "predictive-maintenance" in client_run.stdout and client_run.stdout.rstrip().endswith("65532")

    version = answer["model_version"]
    session = ort.InferenceSession(
        str(REPO / f"models/predictive-maintenance/{version}/model.onnx"), providers=["CPUExecutionProvider"]
    )
    label, probabilities = session.run(["label", "probabilities"], {"features": features})
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == label.tolist()
    assert np.allclose(
        np.asarray(outputs["probabilities"]["data"]).reshape(probabilities.shape), probabilities, rtol=1e-6, atol=1e-7
    )


def zombies_of(pid: int) -> list[int]:
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid) and fields.get("State", "").startswith("Z"):
            found.append(int(status.parent.name))
    return found


def orphan_and_count_zombies(runc: Runc, cid: str) -> list[int]:
    """Leave an orphan in the container (its shell exits first) and list zombies PID 1 left."""
    proc = runc("exec", cid, "/busybox", "sh", "-c", "/busybox sleep 0.2 & exit 0")
    assert proc.returncode == 0, proc.stderr
    time.sleep(1.5)
    return zombies_of(runc.pid(cid))


def test_pause_image_reaps_orphans_and_exits_zero_on_sigterm(built, tmp_path):
    bundle = unpack(Path(built["pause"]["archive"]), tmp_path / "pause")
    client_rootfs = unpack(Path(built["client"]["archive"]), tmp_path / "client") / "rootfs"
    # busybox is bind-mounted in only to make orphans; the image itself is the one static binary.
    busybox = [
        {
            "destination": "/busybox",
            "type": "bind",
            "source": str(client_rootfs / "bin/busybox"),
            "options": ["bind", "ro"],
        }
    ]
    configure(bundle, mounts=busybox)
    assert sorted(p.name for p in (bundle / "rootfs").iterdir()) == ["pause"]
    with runc_session(tmp_path) as runc:
        cid = runc.start("pause", bundle, tmp_path / "pause.log")
        assert orphan_and_count_zombies(runc, cid) == []

        # The check sees zombies when PID 1 does not reap: a plain sleep as PID 1 leaves one.
        control = tmp_path / "control"
        shutil.copytree(bundle, control, symlinks=True)
        configure(control, args=["/busybox", "sleep", "60"], mounts=busybox)
        control_id = runc.start("control", control, tmp_path / "control.log")
        assert len(orphan_and_count_zombies(runc, control_id)) == 1

        # Foreground run: runc's exit status is the container's.
        proc = subprocess.Popen(
            ["runc", "--root", str(runc.state), "run", "--bundle", str(bundle), f"{PREFIX}-fg"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        runc.ids.append(f"{PREFIX}-fg")
        deadline = time.monotonic() + 30
        while runc("state", f"{PREFIX}-fg").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        started = time.monotonic()
        assert runc("kill", f"{PREFIX}-fg", "TERM").returncode == 0
        _, stderr = proc.communicate(timeout=10)
        assert proc.returncode == 0 and "got signal terminated" in stderr, stderr
        assert time.monotonic() - started < 5


def containerd_binaries(dest: Path) -> Path:
    """Debian's containerd and ctr unpacked from the .deb, not installed: installing the package
    would start a system containerd service on hosts with systemd."""
    found = sources.apt_show(["containerd"])
    assert "containerd" in found, "apt knows no containerd package (fix: apt-get update)"
    (deb,) = sources.fetch_debs([found["containerd"]], CACHE / "images/.downloads/debs")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest / "usr/bin"


def test_containerd_imports_each_archive_under_its_tag_and_digest_references(built, tmp_path):
    """What K3s does with agent/images/*.tar: containerd's importer, then lookups by reference."""
    binaries = containerd_binaries(tmp_path / "containerd")
    home = Path(tempfile.mkdtemp(prefix="efimg-"))  # short: a unix socket path has 108 bytes
    socket_path = home / "sock"
    (home / "config.toml").write_text(
        f'version = 2\nroot = "{home}/root"\nstate = "{home}/state"\n'
        f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{socket_path}"\n'
    )
    daemon = subprocess.Popen(
        [str(binaries / "containerd"), "--config", str(home / "config.toml")],
        stdout=subprocess.DEVNULL,
        stderr=(home / "log").open("wb"),
    )
    ctr = [str(binaries / "ctr"), "--address", str(socket_path), "--namespace", "k8s.io"]
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        for name in image_names():
            proc = subprocess.run(
                [*ctr, "images", "import", "--all-platforms", built[name]["archive"]],
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert proc.returncode == 0, proc.stderr
        listed = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True, timeout=60, check=True)
        rows = {line.split()[0]: line.split()[2] for line in listed.stdout.splitlines()[1:]}
        for name in image_names():
            digest = built[name]["digest"]
            assert rows.get(f"{repository(name)}:latest") == digest, listed.stdout
            assert rows.get(built[name]["reference"]) == digest, listed.stdout
        checked = subprocess.run([*ctr, "images", "check"], capture_output=True, text=True, timeout=60, check=True)
        assert all("complete" in line for line in checked.stdout.splitlines()[1:]), checked.stdout
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
