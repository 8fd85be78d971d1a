"""The init container's fetch: the file appears only when its sha256 matches."""

import hashlib
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inference.fetch", *args], cwd=REPO, text=True, capture_output=True, timeout=60
    )


def test_matching_file_is_placed(tmp_path: Path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"model-bytes")
    dest = tmp_path / "models/m/1/model.onnx"
    proc = run("--uri", str(src), "--sha256", hashlib.sha256(b"model-bytes").hexdigest(), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert dest.read_bytes() == b"model-bytes"


def test_tampered_file_is_refused_and_nothing_is_left(tmp_path: Path):
    src = tmp_path / "m.onnx"
    src.write_bytes(b"tampered")
    dest = tmp_path / "models/m/1/model.onnx"
    want = hashlib.sha256(b"model-bytes").hexdigest()
    proc = run("--uri", str(src), "--sha256", want, "--dest", str(dest))
    assert proc.returncode == 1
    assert "does not match the expected" in proc.stderr and want in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_bad_digest_is_a_usage_error(tmp_path: Path):
    proc = run("--uri", "x", "--sha256", "abc", "--dest", str(tmp_path / "d"))
    assert proc.returncode == 2 and "not a sha256" in proc.stderr
