"""The fleet worker's process tree: when its fleet command dies, the worker takes down
everything below it, including engine plugins that run in process groups of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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
        # Until both sleeps run (the forked child is in bash's group until setsid has run).
        deadline = time.monotonic() + 10
        while True:
            found = descendants(tree.pid)
            comms = [comm(pid) for pid in found]
            if comms == ["sleep", "sleep"]:
                break
            assert time.monotonic() < deadline, (found, comms)
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


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""  # gone meanwhile


def state(pid: int) -> str:
    """The process's state letter (R, S, T, Z, ...), "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def alive(pid: int) -> bool:
    return state(pid) not in ("", "Z")


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
        # Each one stopped (T), or a zombie (Z: it exited before its SIGSTOP, and its stopped
        # parent cannot reap it); a loaded machine may take a moment to deliver the stops.
        deadline = time.monotonic() + 5
        while (states := {pid: state(pid) for pid in frozen}) and not set(states.values()) <= {"T", "Z"}:
            assert time.monotonic() < deadline, states
            time.sleep(0.05)
        for pid in frozen:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while left := [pid for pid in frozen if alive(pid)]:
            assert time.monotonic() < deadline, left
            time.sleep(0.05)
    finally:
        os.killpg(tree.pid, signal.SIGKILL)
        tree.wait(timeout=10)


PARENT = """
import subprocess, sys, threading, time
def start():
    subprocess.Popen([sys.executable, "-c", sys.argv[1]], start_new_session=True)
    time.sleep(60)
threads = [threading.Thread(target=start)] + [threading.Thread(target=time.sleep, args=(60,)) for _ in range(64)]
for t in threads:
    t.start()
time.sleep(60)
"""

CHILD = """
import subprocess, sys, time
from fleet.worker import _die_with_parent
_die_with_parent()
for _ in range(8):
    subprocess.Popen(["setsid", "sleep", "60"])
    subprocess.Popen(["sleep", "60"])
time.sleep(60)
"""


def test_a_worker_whose_many_threaded_parent_is_killed_takes_its_whole_tree_down() -> None:
    # The fleet command starts workers from pool threads and has several threads: when it is
    # SIGKILLed the kernel hands the worker to each remaining thread in turn and sends the
    # parent-death signal every time. The worker must survive the later ones until its engine
    # (here sleeps in sessions of their own and in its group) is stopped.
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, CHILD],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        start_new_session=True,
    )
    tree: list[int] = []
    try:
        deadline = time.monotonic() + 20
        while len(tree := descendants(parent.pid)) < 17:
            assert time.monotonic() < deadline and parent.poll() is None, tree
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while left := [pid for pid in tree if alive(pid)]:
            assert time.monotonic() < deadline, f"outlived their killed parent: {left}"
            time.sleep(0.05)
    finally:
        for pid in descendants(parent.pid) + tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
