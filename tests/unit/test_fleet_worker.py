"""The fleet worker's process tree: when its fleet command dies, the worker takes down
everything below it, including engine plugins that run in process groups of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from fleet.worker import descendants, freeze


def fake_proc(tmp_path: Path, parents: dict[int, int]) -> Path:
    for pid, ppid in parents.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} (odd ) name) S {ppid} {pid} {pid} 0 -1\n")
    (tmp_path / "self").mkdir()  # not a process directory
    return tmp_path


def test_descendants_are_found_through_parents_whatever_the_command_names(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20})
    assert descendants(10, proc) == [11, 13, 12]
    assert descendants(12, proc) == [] and descendants(99, proc) == []


def test_a_child_in_a_session_of_its_own_is_still_found_and_killed() -> None:
    tree = subprocess.Popen(["bash", "-c", "setsid sleep 60 & sleep 60 & wait"], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(found := descendants(tree.pid)) < 2:
            assert time.monotonic() < deadline, found
            time.sleep(0.05)
        groups = {os.getpgid(pid) for pid in found}
        assert len(groups) == 2, "one sleep runs in a process group of its own"
        for pid in found:
            os.kill(pid, signal.SIGKILL)
        tree.wait(timeout=10)
        assert descendants(tree.pid) == []
    finally:
        if tree.poll() is None:
            os.killpg(tree.pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_tree_that_keeps_starting_processes_is_frozen_whole_then_killed() -> None:
    # The inner loop starts a process in a session of its own every 10 ms, as an engine starts
    # plugins: a walk then kill would race it; a frozen tree cannot grow.
    tree = subprocess.Popen(
        ["bash", "-c", "bash -c 'while :; do setsid sleep 60 & sleep 0.01; done' & wait"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while len(descendants(tree.pid)) < 6:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        frozen = freeze(tree.pid)
        time.sleep(0.3)
        assert sorted(descendants(tree.pid)) == sorted(frozen), "nothing new started once frozen"
        assert all(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T" for pid in frozen)
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while left := [pid for pid in frozen if alive(pid)]:
            assert time.monotonic() < deadline, left
            time.sleep(0.05)
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait(timeout=10)
