"""Worker supervision with real processes: deaths, hangs, boot failures, stops, orphans."""

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import BROKEN_RUNTIME, MasterFactory, accounts_of, broken_worker_code, make_config
from harness import gone, metric, wait_until


@pytest.mark.timeout(60)
def test_kill9_worker_is_replaced_and_the_death_is_logged(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])
    for account_id in ("acc-1", "acc-3"):
        master.log.wait_for(event="account assigned", pid=pids["worker1"], account_id=account_id)
    mark = master.mark()

    os.kill(pids["worker1"], signal.SIGKILL)

    exited = master.log.wait_for(after=mark, event="worker exited", worker="worker1")
    assert exited["pid"] == pids["worker1"]
    assert exited["signal"] == "SIGKILL"
    assert exited["reason"] == "killed"
    assert "out-of-memory" in exited["detail"]
    assert exited["level"] == "error"
    assert any("worker starting" in line for line in exited["log_tail"])
    new_pid = master.wait_running("worker1", after=mark)
    assert new_pid != pids["worker1"]
    restarted = master.log.find(event="worker state", worker="worker1", new="starting")[-1]
    assert restarted["reason"] == "restart after killed"
    assert restarted["restarts"] == 1
    # The other worker was not touched.
    assert not master.log.find(event="worker exited", worker="worker2")
    # The replacement got the same accounts back.
    before = {
        e["account_id"] for e in master.log.find(event="account assigned", pid=pids["worker1"])
    }
    assert before == {"acc-1", "acc-3"}
    for account_id in before:
        master.log.wait_for(event="account assigned", pid=new_pid, account_id=account_id)

    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_repeated_crashes_back_off(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1))
    pid = master.wait_running("worker1")
    for _attempt in range(3):
        mark = master.mark()
        os.kill(pid, signal.SIGKILL)
        pid = master.wait_running("worker1", after=mark)
    states = [e for e in master.log.find(event="worker state", worker="worker1")]
    backoffs = [e for e in states if e["new"] == "backoff"]
    # 1st crash restarts at once; the 2nd and 3rd wait 0.2 s and 0.4 s.
    assert [b["reason"] for b in backoffs] == ["restart in 0.20s", "restart in 0.40s"]
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_worker_code_that_cannot_import_is_boot_failed_with_backoff(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    config = make_config(
        workers=1,
        accounts=accounts_of("demo"),
        supervision={"backoff_initial_s": 0.3, "backoff_max_s": 1.2},
    )
    master = start_master(config, code_dir=broken_worker_code(tmp_path))
    failed = master.log.wait_for(event="worker state", worker="worker1", new="boot_failed")
    exited = master.log.find(event="worker exited", worker="worker1")[0]
    assert exited["reason"] == "boot_failed"
    assert exited["code"] == 78
    tail = "\n".join(exited["log_tail"])
    assert BROKEN_RUNTIME in tail
    assert "retry in 0.30s" in failed["reason"]

    log_text = master.worker_log("worker1").read_text()
    assert "Traceback (most recent call last)" in log_text
    assert "adopted.py" in log_text
    assert "cannot import the worker runtime" in log_text
    # The fork template could not load it either, and said so with the traceback.
    template = master.log.find(
        event="fork template could not load the worker code; workers start by spawn meanwhile"
    )
    assert template
    assert template[0]["level"] == "error"
    assert any(BROKEN_RUNTIME in line for line in template[0]["log_tail"])
    # Code that cannot be imported is not a bug of the master: not counted as one.
    with master.http() as http:
        assert http.get("/status").json()["internal_errors_total"] == 0
        last_exit = http.get("/workers/worker1").json()["last_exit"]
        health = http.get("/healthz").json()
        metrics = http.get("/metrics").text
    assert (last_exit["code"], last_exit["reason"]) == (78, "boot_failed")
    assert any(BROKEN_RUNTIME in line for line in last_exit["log_tail"])
    assert health["status"] != "ok"
    assert health["checks"]["workers"]["status"] != "ok"  # failing, degraded while retried
    assert metric(metrics, "hiscrm_fork_template_failures_total") >= 1
    assert metric(metrics, "hiscrm_master_internal_errors_total") == 0
    assert metric(metrics, 'hiscrm_worker_up{worker="worker1"}') == 0
    master.log.wait_for(
        event="health",
        status="failing",
        where=lambda e: "no worker runs" in e["checks"].get("workers", ""),
    )

    # Watch for a while: retries happen, but no faster than the backoff allows.
    watch_s = 4.0
    time.sleep(watch_s)
    starts = master.log.find(event="worker state", worker="worker1", new="starting")
    delays = [0.3, 0.6, 1.2, 1.2, 1.2, 1.2, 1.2]
    allowed = 1 + sum(1 for i in range(len(delays)) if sum(delays[: i + 1]) <= watch_s + 1.0)
    assert 3 <= len(starts) <= allowed, f"{len(starts)} starts, at most {allowed} allowed"
    assert not master.log.find(event="worker state", worker="worker1", new="running")
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_blocked_event_loop_is_replaced_after_heartbeat_timeout(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "blocked-once"
    master = start_master(
        make_config(
            workers=1,
            accounts=accounts_of("testplatforms.behaviours:BlockLoopOnce", marker=str(marker)),
        )
    )
    pid = master.wait_running("worker1")
    wait_until(marker.exists, 10, "the platform blocked the loop")

    hung = master.log.wait_for(event="worker is hung: no heartbeat", worker="worker1")
    assert hung["heartbeat_age_s"] >= 1.5
    exited = master.log.wait_for(event="worker exited", worker="worker1")
    assert exited["pid"] == pid
    assert exited["reason"] == "heartbeat_timeout"
    assert exited["signal"] == "SIGABRT"
    new_pid = master.wait_running("worker1", after=master.log.events.index(exited))
    assert new_pid != pid
    with master.http() as http:
        worker = http.get("/workers/worker1").json()
        metrics = http.get("/metrics").text
    assert worker["restarts_by_reason"] == {"heartbeat_timeout": 1}
    assert (worker["last_exit"]["reason"], worker["last_exit"]["signal"]) == (
        "heartbeat_timeout",
        "SIGABRT",
    )
    key = 'hiscrm_worker_restarts_total{reason="heartbeat_timeout",worker="worker1"}'
    assert metric(metrics, key) == 1
    # While it was replaced, health said so (its only worker: failing), and its account
    # was down.
    master.log.wait_for(
        event="health",
        status="failing",
        where=lambda e: "no worker runs" in e["checks"].get("workers", ""),
    )
    master.log.wait_for(event="account state", account_id="acc-1", new="down")
    # faulthandler wrote where the loop was stuck.
    log_text = master.worker_log("worker1").read_text()
    assert "Fatal Python error: Aborted" in log_text
    assert "behaviours.py" in log_text
    assert "in run" in log_text
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_sigstopped_worker_is_replaced_after_heartbeat_timeout(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])
    mark = master.mark()

    os.kill(pids["worker2"], signal.SIGSTOP)

    exited = master.log.wait_for(after=mark, event="worker exited", worker="worker2", timeout=15)
    assert exited["pid"] == pids["worker2"]
    assert exited["reason"] == "heartbeat_timeout"
    assert exited["signal"] == "SIGKILL"  # a stopped process only dies by SIGKILL
    assert master.log.find(
        event="worker still alive after signal; sending SIGKILL", worker="worker2"
    )
    new_pid = master.wait_running("worker2", after=mark)
    assert new_pid != pids["worker2"]
    assert gone(pids["worker2"])
    with master.http() as http:
        worker = http.get("/workers/worker2").json()
        metrics = http.get("/metrics").text
    assert worker["restarts_by_reason"] == {"heartbeat_timeout": 1}
    assert worker["last_exit"]["signal"] == "SIGKILL"
    key = 'hiscrm_worker_restarts_total{reason="heartbeat_timeout",worker="worker2"}'
    assert metric(metrics, key) == 1
    # For the second it took to kill it, health named it.
    master.log.wait_for(
        after=mark,
        event="health",
        status="degraded",
        where=lambda e: "worker2 is stopping" in e["checks"].get("workers", ""),
    )
    assert not master.log.find(event="worker exited", worker="worker1")
    assert master.stop() == 0


def _pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.timeout(60)
def test_grandchildren_do_not_survive_kill_respawn_or_stop(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchildren"
    master = start_master(
        make_config(
            workers=1,
            accounts=accounts_of(
                "testplatforms.behaviours:SpawnGrandchild", pid_file=str(pid_file)
            ),
        )
    )
    worker = master.wait_running("worker1")
    wait_until(lambda: len(_pids(pid_file)) == 1, 10, "grandchild started")
    first = _pids(pid_file)[0]
    assert not gone(first)

    mark = master.mark()
    os.kill(worker, signal.SIGKILL)
    exited = master.log.wait_for(after=mark, event="worker exited", worker="worker1")
    assert exited["killed_leftovers"] is True
    master.wait_running("worker1", after=mark)
    wait_until(lambda: gone(first), 2, "the grandchild of the killed worker is gone")
    wait_until(lambda: len(_pids(pid_file)) == 2, 10, "the new worker started its grandchild")
    second = _pids(pid_file)[1]

    assert master.stop() == 0
    assert gone(second), "the grandchild survived a graceful stop"


@pytest.mark.timeout(60)
def test_master_sigkill_takes_every_worker_down_within_2s(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchildren"
    behaviours = "testplatforms.behaviours"
    config = make_config(
        workers=2,
        accounts=[
            # worker1 notices the closed pipe in its event loop ...
            {
                "id": "acc-1",
                "platform": f"{behaviours}:SpawnGrandchild",
                "options": {"pid_file": str(pid_file)},
            },
            # ... worker2's loop is blocked, so only the parent-death signal can end it.
            {
                "id": "acc-2",
                "platform": f"{behaviours}:GrandchildThenBlock",
                "options": {"pid_file": str(pid_file)},
            },
        ],
        supervision={"heartbeat_timeout_s": 30.0},
    )
    master = start_master(config)
    workers = list(master.wait_all_running(["worker1", "worker2"]).values())
    wait_until(lambda: len(_pids(pid_file)) == 2, 10, "grandchildren started")
    time.sleep(0.5)  # worker2's loop is blocked by now
    everything = workers + _pids(pid_file)

    os.kill(master.pid, signal.SIGKILL)
    took = wait_until(lambda: all(gone(p) for p in everything), 2.0, "workers and children gone")
    assert took < 2.0
    assert master.proc is not None
    assert master.proc.wait(5) == -signal.SIGKILL
    assert "the master has died (parent-death signal)" in master.worker_log("worker2").read_text()
    # The fixture then checks that no process carrying this master's marker is left.


@pytest.mark.timeout(60)
def test_sigterm_stops_every_worker_gracefully(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])
    assert (master.state_dir / "master.json").exists()

    assert master.stop() == 0

    for worker, pid in pids.items():
        exited = master.log.find(event="worker exited", worker=worker)[-1]
        assert (exited["code"], exited["reason"]) == (0, "shutdown")
        assert exited["level"] == "info"
        assert gone(pid)
    assert master.log.find(event="master stopped")
    assert not (master.state_dir / "master.json").exists()


@pytest.mark.timeout(60)
def test_flags_override_the_config_file(start_master: MasterFactory, tmp_path: Path) -> None:
    other_state = tmp_path / "elsewhere"
    master = start_master(
        make_config(workers=1), extra_args=["--workers", "3", "--state-dir", str(other_state)]
    )
    master.log.path = other_state / "logs" / "master.log"
    master.wait_all_running(["worker1", "worker2", "worker3"])
    assert (other_state / "logs" / "worker3.log").exists()
    assert not master.state_dir.exists()
    assert master.stop() == 0


@pytest.mark.timeout(30)
def test_second_master_on_same_state_dir_is_refused(start_master: MasterFactory) -> None:
    first = start_master(make_config(workers=1))
    first.wait_running("worker1")
    import subprocess
    import sys

    second = subprocess.run(
        [sys.executable, "-m", "hiscrm.master", "--config", str(first.config_path)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=first.dir,
    )
    assert second.returncode == 1
    assert f"another master (pid {first.pid}) is running" in second.stderr
    assert first.proc is not None
    assert first.proc.poll() is None
    assert first.stop() == 0


@pytest.mark.timeout(60)
def test_sighup_reloads_workers_one_at_a_time_new_before_old(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))
    before = master.wait_all_running(["worker1", "worker2"])
    mark = master.mark()

    os.kill(master.pid, signal.SIGHUP)

    master.log.wait_for(after=mark, event="reload complete", timeout=20)
    events = master.log.events[mark:]
    # The slot's own state stays "running" throughout; its processes' moves are logged too.
    assert not [e for e in events if e.get("event") == "worker state"]
    states = [
        (e["worker"], e["pid"], e["role"], e["new"])
        for e in events
        if e.get("event") == "worker process"
    ]
    for n, worker in enumerate(("worker1", "worker2")):
        old = before[worker]
        new_running = next(
            i
            for i, (w, p, role, s) in enumerate(states)
            if w == worker and p != old and role == "incoming" and s == "running"
        )
        old_stopping = next(
            i
            for i, (w, p, role, s) in enumerate(states)
            if w == worker and p == old and role == "outgoing" and s == "stopping"
        )
        assert new_running < old_stopping, (
            f"{worker}'s old process stopped before its new one ran: {states}"
        )
        exited = [e for e in events if e.get("event") == "worker exited" and e["worker"] == worker]
        assert (exited[0]["pid"], exited[0]["reason"]) == (old, "reload")
        handed = [
            e for e in events if e.get("event") == "account handed over" and e["worker"] == worker
        ]
        assert sorted(e["account_id"] for e in handed) == [f"acc-{n + 1}", f"acc-{n + 3}"]
        assert all(e["gap_ms"] < 2000 for e in handed)
    # worker2 started only once worker1 was done
    w2_start = next(
        i
        for i, e in enumerate(events)
        if e.get("event") == "reload: starting replacement" and e["worker"] == "worker2"
    )
    w1_done = next(
        i
        for i, e in enumerate(events)
        if e.get("event") == "reload: worker replaced" and e["worker"] == "worker1"
    )
    assert w1_done < w2_start
    assert not [
        e for e in events if e.get("event") in ("worker error", "protocol error", "sync refused")
    ]
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_paused_master_does_not_kill_its_healthy_workers(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=2))  # heartbeat_timeout_s 1.5
    pids = master.wait_all_running(["worker1", "worker2"])
    mark = master.mark()
    os.kill(master.pid, signal.SIGSTOP)
    try:
        time.sleep(3.0)  # twice the heartbeat timeout: the master cannot run meanwhile
    finally:
        os.kill(master.pid, signal.SIGCONT)
    stalled = master.log.wait_for(
        after=mark, event="the master itself was stalled; allowing for it before judging heartbeats"
    )
    assert stalled["stall_s"] > 1.5
    with master.http() as http:
        # Well past another heartbeat timeout: the workers were judged on fresh heartbeats.
        wait_until(lambda: http.get("/status").json()["uptime_s"] > 0, 5, "answering")
        time.sleep(2.0)
        workers = {w["id"]: w for w in http.get("/workers").json()["items"]}
    assert {w: workers[w]["pid"] for w in pids} == pids
    assert all(workers[w]["state"] == "running" for w in pids)
    assert not [
        e
        for e in master.log.events[mark:]
        if e["event"] in ("worker is hung: no heartbeat", "worker exited")
    ]
    assert master.stop() == 0
