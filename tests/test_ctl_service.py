"""hiscrmctl for running hiscrm as a service: one worker in detail (``status WORKER``),
``restart --all`` one at a time, the master's own log (``logs master [-f]``) and
``shutdown``."""

import json
import os
import re
import signal

import pytest
from conftest import MasterFactory, make_config
from harness import gone, wait_until
from test_ctl import Follower, ctl


def test_restart_needs_a_worker_or_all_but_not_both(tmp_path: object) -> None:
    for args in (["restart"], ["restart", "worker1", "--all"]):
        result = ctl(tmp_path, *args)  # type: ignore[arg-type]
        assert result.returncode == 2, result
        assert "name a WORKER, or give --all" in result.stderr


@pytest.mark.timeout(120)
def test_status_of_one_worker_restart_all_master_logs_and_shutdown(
    start_master: MasterFactory,
) -> None:
    master = start_master(make_config(workers=3, accounts=None))
    pids = master.wait_all_running(["worker1", "worker2", "worker3"])

    # One worker in detail, after it was killed once.
    mark = master.mark()
    os.kill(pids["worker1"], signal.SIGKILL)
    pids["worker1"] = master.wait_running("worker1", after=mark)
    with master.http() as http:
        wait_until(
            lambda: http.get("/workers/worker1").json()["tree_memory_bytes"] is not None,
            10,
            "the worker's tree measured",
        )
        accounts = http.get("/workers/worker1").json()["accounts"]
    shown = ctl(master, "status", "worker1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0].startswith(f"worker1: running, pid {pids['worker1']}, up ")
    assert f"accounts ({len(accounts)}): {', '.join(accounts)}" in shown.stdout
    assert re.search(r"memory: rss \d+ MiB; process tree \d+ MiB pss in \d+ process", shown.stdout)
    assert "restarts 1 (killed 1)" in shown.stdout
    assert "last exit: killed (signal SIGKILL)" in shown.stdout
    detail = json.loads(ctl(master, "status", "worker1", "--json").stdout)
    assert (detail["id"], detail["pid"], detail["restarts_by_reason"]) == (
        "worker1",
        pids["worker1"],
        {"killed": 1},
    )
    missing = ctl(master, "status", "worker9")
    assert missing.returncode == 1
    assert "no worker 'worker9'" in missing.stderr

    # Every running worker restarted, one at a time; a stopped one is left as it is.
    assert ctl(master, "stop", "worker3").returncode == 0
    follower = Follower(master, "master", lines=2)
    try:
        wait_until(lambda: len(follower.output) >= 2, 10, "following the master's log")
        restarted = ctl(master, "restart", "--all")
        assert restarted.returncode == 0, restarted.stderr
        steps = restarted.stdout.splitlines()
        assert steps[0].startswith(f"worker1: pid {pids['worker1']} -> pid ")
        assert steps[1].startswith(f"worker2: pid {pids['worker2']} -> pid ")
        assert steps[2] == "worker3: not restarted, it is stopped"
        assert steps[3].startswith("2 workers restarted one at a time in ")
        replaced = [
            e
            for e in master.log.find(event="reload: worker replaced")
            if e["old_pid"] in pids.values()
        ]
        assert [e["worker"] for e in replaced] == ["worker1", "worker2"]
        # The master's log, followed: the restart as the master told it.
        wait_until(
            lambda: any('"reload complete"' in line for line in follower.output),
            10,
            "the reload followed in the master's log",
        )
    finally:
        assert follower.stop() == 0
    tail = ctl(master, "logs", "master", "-n", "3")
    assert tail.returncode == 0, tail.stderr
    assert len(tail.stdout.splitlines()) == 3
    assert all(json.loads(line)["event"] for line in tail.stdout.splitlines())

    # Shut down: every worker, then the master, which has exited when ctl returns.
    stopped = ctl(master, "shutdown")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.splitlines()[0] == f"master pid {master.pid}: stopping 3 workers"
    assert stopped.stdout.splitlines()[1].startswith(f"master pid {master.pid} exited after ")
    assert gone(master.pid)
    assert master.proc is not None
    assert master.proc.wait(5) == 0
    assert not (master.state_dir / "master.json").exists()
    assert master.log.find(event="master stopped", reason="requested")
