"""The lab's CRI stand-in (lab/fakecri): its Go tests (every container has its own log file
inside the log directory, pulled images have a size, the runtime reports ready) and vet."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "lab/fakecri"


@pytest.mark.parametrize("command", [["vet", "./..."], ["test", "-count=1", "./..."]], ids=["vet", "test"])
def test_go(command: list[str]) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is not on PATH (fix: install Go, scripts/bootstrap needs it too)")
    env = {**os.environ, "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    proc = subprocess.run([go, *command], cwd=SRC, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_gofmt_clean() -> None:
    gofmt = shutil.which("gofmt")
    if gofmt is None:
        pytest.fail("gofmt is not on PATH (fix: install Go)")
    proc = subprocess.run([gofmt, "-l", "."], cwd=SRC, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
