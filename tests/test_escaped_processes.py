"""Processes a platform starts that leave the worker's process group (``setsid()``,
``setpgid()``, a daemon's double fork) still end within 2 s of their worker: when it is
stopped or restarted, when it is killed (then the master kills them), and when the master
itself is killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import REPO, gone, wait_until

ESCAPING = "testplatforms.behaviours:EscapingChild"
MODES = ("setsid", "setpgid", "daemon")
CTL = [sys.executable, str(REPO / "bin" / "hiscrmctl")]


def escaping_accounts(pid_file: Path, modes: tuple[str, ...] = MODES) -> list[dict[str, Any]]:
    return [
        {
            "id": f"acc-{mode}",
            "platform": ESCAPING,
            "options": {"mode": mode, "pid_file": str(pid_file)},
        }
        for mode in modes
    ]


def pids_in(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def wait_for_pids(path: Path, n: int) -> list[int]:
    wait_until(lambda: len(pids_in(path)) >= n, 20, f"{n} escaping children started")
    return pids_in(path)


def assert_escaped(pids: list[int], worker: int) -> None:
    """They did leave the worker's process group (so a group kill misses them)."""
    for pid in pids:
        assert os.getpgid(pid) != worker, f"{pid} is still in the worker's group"


@pytest.mark.timeout(90)
def test_escaped_children_go_when_their_worker_is_stopped_or_restarted(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped"
    master = start_master(make_config(workers=1, accounts=escaping_accounts(pid_file)))
    worker = master.wait_running("worker1")
    first = wait_for_pids(pid_file, 3)
    assert_escaped(first, worker)

    with master.http() as http:
        stopped = http.post("/workers/worker1/stop")
    assert stopped.status_code == 200, stopped.text
    took = wait_until(lambda: all(gone(p) for p in first), 2.0, "escaped children gone")
    assert took < 2.0
    exited = master.log.find(event="worker exited", worker="worker1")[-1]
    assert exited["reason"] == "stop"

    mark = master.mark()
    started = subprocess.run(
        [*CTL, "--state-dir", str(master.state_dir), "start", "worker1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    worker = master.wait_running("worker1", after=mark)
    second = wait_for_pids(pid_file, 6)[3:]
    assert_escaped(second, worker)

    restarted = subprocess.run(
        [*CTL, "--state-dir", str(master.state_dir), "restart", "worker1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert restarted.returncode == 0, restarted.stderr
    wait_until(lambda: all(gone(p) for p in second), 2.0, "escaped children gone after restart")
    # The worker killed them itself: the master found nothing left behind.
    assert not master.log.find(event="killed processes a dead worker left behind")
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_escaped_children_of_a_killed_worker_are_killed_and_never_pile_up(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped"
    master = start_master(make_config(workers=1, accounts=escaping_accounts(pid_file)))
    worker = master.wait_running("worker1")
    for restart in range(1, 4):
        current = wait_for_pids(pid_file, 3 * restart)[-3:]
        assert_escaped(current, worker)
        mark = master.mark()
        killed_at = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda c=current: all(gone(p) for p in c), 2.0, "escaped children gone")
        assert time.monotonic() - killed_at < 2.0
        cleaned = master.log.wait_for(
            after=mark, event="killed processes a dead worker left behind", timeout=5
        )
        assert cleaned["level"] == "warning"
        assert "python" in cleaned["command"]
        worker = master.wait_running("worker1", after=mark)
        # Only the children of the running worker are alive: nothing accumulates.
        wait_for_pids(pid_file, 3 * restart + 3)
        alive = [p for p in pids_in(pid_file) if not gone(p)]
        assert len(alive) == 3, f"alive after restart {restart}: {alive}"
    killed = master.log.find(event="killed processes a dead worker left behind")
    # (A daemon's first process may still have been on its way out: killed too, then.)
    assert set(pids_in(pid_file)[:9]) <= {p for e in killed for p in e["killed"]}
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_escaped_children_go_within_2s_of_a_master_sigkill(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped"
    accounts = escaping_accounts(pid_file, ("setsid", "daemon", "setpgid"))
    # worker2's loop is blocked once its child runs: only the parent-death signal handler
    # can end its escaped child.
    blocked = tmp_path / "blocked"
    accounts[1]["options"]["blocked_file"] = str(blocked)
    config = make_config(workers=2, accounts=accounts, supervision={"heartbeat_timeout_s": 30.0})
    master = start_master(config)
    workers = master.wait_all_running(["worker1", "worker2"])
    children = wait_for_pids(pid_file, 3)
    wait_until(blocked.exists, 10, "worker2's loop blocked")
    everything = [*workers.values(), *children]

    os.kill(master.pid, signal.SIGKILL)
    took = wait_until(lambda: all(gone(p) for p in everything), 2.0, "workers and children gone")
    assert took < 2.0
    assert master.proc is not None
    assert master.proc.wait(5) == -signal.SIGKILL
    blocked_log = master.worker_log("worker2").read_text()
    assert "the master has died (parent-death signal); killed " in blocked_log
