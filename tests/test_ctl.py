"""hiscrmctl against a live master, as an operator would run it."""

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import REPO, Master, wait_until

CTL = [sys.executable, str(REPO / "bin" / "hiscrmctl")]


def ctl(
    master_or_dir: Master | Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    state = master_or_dir.state_dir if isinstance(master_or_dir, Master) else master_or_dir
    return subprocess.run(
        [*CTL, "--state-dir", str(state), *args], capture_output=True, text=True, timeout=timeout
    )


class Follower:
    """``hiscrmctl logs -f`` in the background, its output collected."""

    def __init__(self, master: Master, worker: str, lines: int = 0) -> None:
        self.proc = subprocess.Popen(
            [*CTL, "--state-dir", str(master.state_dir), "logs", worker, "-f", "-n", str(lines)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(10)
        self._reader.join(5)
        return code


@pytest.mark.timeout(90)
def test_status_restart_stop_start_and_logs_of_a_dead_worker(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])

    status = ctl(master, "status")
    assert status.returncode == 0, status.stderr
    assert re.search(rf"worker1\s+running\s+{pids['worker1']}", status.stdout)
    assert "workers 2/2 running" in status.stdout
    as_json = json.loads(ctl(master, "status", "--json").stdout)
    assert {w["id"]: w["pid"] for w in as_json["workers"]} == pids

    restart = ctl(master, "restart", "worker1")
    assert restart.returncode == 0, restart.stderr
    match = re.search(
        r"worker1: restart done, running, pid (\d+) -> (\d+), took ([\d.]+) s", restart.stdout
    )
    assert match, restart.stdout
    assert int(match.group(1)) == pids["worker1"]
    new_pid = int(match.group(2))
    assert new_pid != pids["worker1"]
    assert master.log.find(event="worker state", worker="worker1", new="running", pid=new_pid)

    stop = ctl(master, "stop", "worker2")
    assert stop.returncode == 0
    assert "worker2: stop done, stopped" in stop.stdout
    logs = ctl(master, "logs", "worker2", "-n", "5")
    assert logs.returncode == 0
    assert len(logs.stdout.splitlines()) == 5
    assert "worker stopping" in logs.stdout
    assert "stopped" in ctl(master, "status").stdout
    start = ctl(master, "start", "worker2")
    assert start.returncode == 0
    assert "worker2: start done, running" in start.stdout

    accounts = ctl(master, "accounts")
    assert re.search(r"acc-1\s+demo\s+running\s+\S+ ago\s+worker1", accounts.stdout)
    sync = ctl(master, "sync", "acc-1")
    assert (sync.returncode, sync.stdout.strip()) == (0, "acc-1: sync requested from worker1")
    reload = ctl(master, "reload")
    assert reload.returncode == 0
    assert "reload complete" in reload.stdout
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_logs_follow_shows_new_lines_and_goes_on_across_rotation(
    start_master: MasterFactory,
) -> None:
    accounts = [
        {
            "id": "acc-1",
            "platform": "testplatforms.behaviours:Ticker",
            "options": {"interval_s": 0.002},
        }
    ]
    master = start_master(
        make_config(workers=1, accounts=accounts, logs={"max_bytes": 20_000, "backups": 2})
    )
    master.wait_running("worker1")
    follower = Follower(master, "worker1")
    try:
        rotated = master.state_dir / "logs" / "worker1.log.2"
        wait_until(
            lambda: sum(line.startswith("tick") for line in follower.output) > 50,
            20,
            "ticks followed",
        )
        seen_rotations = master.worker_log("worker1").stat().st_ino
        wait_until(rotated.exists, 30, "the log rotated twice")
        wait_until(
            lambda: master.worker_log("worker1").stat().st_ino != seen_rotations,
            30,
            "another rotation",
        )
        wait_until(
            lambda: sum(line.startswith("tick") for line in follower.output) > 300,
            30,
            "300 ticks followed",
        )
    finally:
        assert follower.stop() == 0
    ticks = [int(line.split()[1]) for line in follower.output if line.startswith("tick")]
    assert len(ticks) > 300
    gaps = [(a, b) for a, b in itertools.pairwise(ticks) if b != a + 1]
    assert not gaps, f"lines missing while following: {gaps[:5]}"
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_logs_follow_shows_a_restart_as_it_happens(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1))
    master.wait_running("worker1")
    follower = Follower(master, "worker1", lines=2)
    try:
        wait_until(lambda: len(follower.output) >= 2, 10, "the last lines")
        restart = ctl(master, "restart", "worker1")
        new_pid = re.search(r"-> (\d+)", restart.stdout)
        assert new_pid, restart.stdout
        wait_until(
            lambda: any(
                "worker starting" in line and f"pid={new_pid.group(1)}" in line
                for line in follower.output
            ),
            10,
            "the new worker's first line",
        )
    finally:
        assert follower.stop() == 0
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_clear_messages_when_the_master_is_not_there_or_refuses(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    nothing = ctl(tmp_path / "nowhere", "status")
    assert nothing.returncode == 1
    assert "hiscrmctl: no master is running with state directory" in nothing.stderr
    assert "master.json is missing" in nothing.stderr

    master = start_master(make_config(workers=1))
    master.wait_running("worker1")
    token = master.state_dir / "token"
    real = token.read_text()
    token.write_text("wrong\n")  # the master keeps the token it read at start
    try:
        refused = ctl(master, "status")
    finally:
        token.write_text(real)
    assert refused.returncode == 1
    assert "the master refused the token" in refused.stderr
    assert "invalid token" in refused.stderr

    unknown = ctl(master, "restart", "worker7")
    assert unknown.returncode == 1
    assert "404 no worker 'worker7'" in unknown.stderr
    usage = ctl(master, "restart")
    assert usage.returncode == 2

    assert master.stop() == 0
    gone = ctl(master, "status")
    assert gone.returncode == 1
    assert "no master is running" in gone.stderr
    # A master that died without cleaning up: master.json is there, its pid is not.
    (master.state_dir / "master.json").write_text(
        json.dumps({"pid": 2**22 + 7, "api_url": "http://127.0.0.1:9/api/v1"})
    )
    dead = ctl(master, "status")
    assert dead.returncode == 1
    assert "which is not running: the master has died" in dead.stderr
    os.unlink(master.state_dir / "master.json")
