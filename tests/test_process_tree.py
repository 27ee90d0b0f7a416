"""Walking and killing process trees, and reaping adopted zombies, with real processes.

Each test runs its tree under a child subreaper of its own (a small Python process), so
the test process itself adopts nothing."""

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from harness import REPO, gone, wait_until

from hiscrm import process_tree

# A subreaper that starts a tree whose members leave its group in every way, and one that
# keeps forking, then writes the pids it knows of and waits.
TREE = r"""
import os, sys, time
from hiscrm import prctl
prctl.set_child_subreaper()
out = sys.argv[1]
read_end, write_end = os.pipe()

def child(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid

def ready_then_sleep():
    os.write(write_end, b"x")
    time.sleep(1000)

def own_session():
    os.setsid()
    ready_then_sleep()

def own_group():
    os.setpgid(0, 0)
    ready_then_sleep()

def daemon():  # fork, exit, the orphan (now the subreaper's child) calls setsid
    if os.fork() == 0:
        os.setsid()
        ready_then_sleep()

def breeder():  # a new child every 5 ms, each sleeping
    os.setsid()
    for n in range(1_000_000):
        child(ready_then_sleep if n == 2 else lambda: time.sleep(1000))
        time.sleep(0.005)

for body in (ready_then_sleep, own_session, own_group, daemon, breeder):
    child(body)
for _ in range(5):  # each has done what it does (the breeder: three children so far)
    os.read(read_end, 1)
with open(out + ".tmp", "w") as f:
    f.write("ready")
os.rename(out + ".tmp", out)
time.sleep(1000)
"""

# A subreaper whose grandchild is orphaned and then exits: a zombie only it can reap.
ADOPT = r"""
import json, os, sys, time
from hiscrm import prctl, process_tree
from hiscrm.worker.adopted import AdoptedZombies
prctl.set_child_subreaper()
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        os.close(write_end)  # so that it ends too if this script dies
        os.read(read_end, 1)  # until told to exit
        os._exit(0)
    os._exit(0)
os.close(read_end)
os.waitpid(middle, 0)
orphan = [str(pid) for pid in process_tree.children(os.getpid())]  # processes come and go
reaper = AdoptedZombies()
first = reaper.reap()  # alive: nothing
os.write(write_end, b"x")
deadline = time.monotonic() + 20
while not process_tree.is_zombie(int(orphan[0])):  # until it has exited
    assert time.monotonic() < deadline, "the orphan did not exit"
    time.sleep(0.01)
second = reaper.reap()  # a zombie now, seen once: not yet
third = reaper.reap()  # seen twice: reaped
print(json.dumps({"orphan": [int(p) for p in orphan], "reaped": [first, second, third], "total": reaper.reaped}))
"""


def run_tree(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    root = subprocess.Popen([sys.executable, "-c", TREE, str(ready)], env=env)
    wait_until(ready.exists, 20, "tree started")
    return root, ready


def kill_what_is_left(ready: Path) -> None:
    """Every process of the tree still there, by the argument they all carry (a child
    the breeder forked just as its parent was killed escapes a kill from above)."""
    for process in psutil.process_iter(["cmdline"]):
        if str(ready) in (process.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


@pytest.mark.timeout(60)
def test_every_descendant_is_killed_whatever_group_or_session_it_went_to(tmp_path: Path) -> None:
    root, ready = run_tree(tmp_path)
    try:
        before = process_tree.descendants(root.pid)
        sessions = {process_tree.session_of(p) for p in before}
        assert len(sessions) >= 4  # the root's, two setsid() children, the breeder's
        killed = process_tree.kill_descendants(root.pid)
        assert set(before) <= set(killed)
        # Nothing is left but zombies waiting for the root, and nothing new appears.
        wait_until(
            lambda: all(process_tree.is_zombie(p) for p in process_tree.descendants(root.pid)),
            10,
            "every descendant dead",
        )
        assert set(process_tree.descendants(root.pid)) <= set(killed)
        assert not gone(root.pid)
    finally:
        root.kill()
        root.wait(10)
        kill_what_is_left(ready)


@pytest.mark.timeout(60)
def test_a_tree_is_killed_from_above_with_its_root(tmp_path: Path) -> None:
    root, ready = run_tree(tmp_path)
    try:
        everything = [root.pid, *process_tree.descendants(root.pid)]
        killed = process_tree.kill_descendants(root.pid, including_root=True)
        assert killed[0] == root.pid
        assert root.wait(10) == -signal.SIGKILL
        wait_until(lambda: all(gone(p) for p in everything), 5, "the whole tree gone")
    finally:
        if root.poll() is None:
            root.kill()
            root.wait(10)
        kill_what_is_left(ready)


@pytest.mark.timeout(60)
def test_an_adopted_zombie_is_reaped_once_seen_twice() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", ADOPT], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["orphan"]) == 1
    assert report["reaped"] == [[], [], report["orphan"]]
    assert report["total"] == 1
