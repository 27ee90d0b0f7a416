"""An exception in a worker task is logged with its traceback, counted, and reported to
the master, which logs and counts it; the account restarts, its siblings carry on."""

import re

import pytest
from conftest import MasterFactory, make_config
from harness import count, wait_until


@pytest.mark.timeout(60)
def test_failing_run_is_reported_restarted_and_does_not_stop_siblings(
    start_master: MasterFactory,
) -> None:
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "bad",
                "platform": "testplatforms.behaviours:RaiseSoon",
                "options": {"after_s": 0.1},
            },
            {"id": "good", "platform": "demo", "options": {"rate": 20.0}},
        ],
    )
    master = start_master(config)
    pid = master.wait_running("worker1")

    third = master.log.wait_for(event="worker error", worker="worker1", worker_errors_total=3)
    errors = master.log.find(event="worker error", worker="worker1")
    assert [e["worker_errors_total"] for e in errors[:3]] == [1, 2, 3]
    assert third["level"] == "error"
    assert third["source"] == "account"
    assert third["account_id"] == "bad"
    assert third["error"] == "ValueError: platform failure for bad"
    assert "Traceback (most recent call last)" in third["traceback"]
    assert "behaviours.py" in third["traceback"]
    assert not master.log.find(event="worker exited"), "the worker itself must keep running"

    pattern = r"account_id=bad new=backoff old=running reason='[^']*restart in ([\d.]+)s"
    # The worker logs the third backoff as it reports the error: wait for the line.
    wait_until(
        lambda: len(re.findall(pattern, master.worker_log("worker1").read_text())) >= 3,
        10,
        "three backoffs in the worker's log",
    )
    text = master.worker_log("worker1").read_text()
    error_lines = [
        line for line in text.splitlines() if "[error]" in line and "account_id=bad" in line
    ]
    assert len(error_lines) >= 3
    assert "errors_total=3" in text
    # Restarted with backoff: at once, then 0.2 s, then 0.4 s.
    backoffs = re.findall(pattern, text)
    assert backoffs[:3] == ["0.00", "0.20", "0.40"]
    # The sibling account kept working all along: its data keeps reaching the store.
    first = count(master.db, "messages", "good")
    wait_until(lambda: count(master.db, "messages", "good") > first + 5, 10, "good keeps syncing")
    assert "account_id=good new=backoff" not in text
    # The worker itself never restarted: one registration, no exit.
    running = master.log.find(event="worker state", worker="worker1", new="running")
    assert [e["pid"] for e in running] == [pid]
    assert not master.log.find(event="worker exited")
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_task_that_ignores_cancellation_is_reported_when_abandoned(
    start_master: MasterFactory,
) -> None:
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "stubborn",
                "platform": "testplatforms.behaviours:SlowToStop",
                "options": {"stop_delay_s": 30.0},
            }
        ],
        supervision={"stop_timeout_s": 2.0},
    )
    master = start_master(config)
    master.wait_running("worker1")
    # Its task runs (and so ignores the cancellation) before the stop.
    master.log.wait_for(event="account state", account_id="stubborn", new="running")
    with master.http() as http:
        http.post("/workers/worker1/stop")
    error = master.log.wait_for(event="worker error", worker="worker1", account_id="stubborn")
    assert error["level"] == "error"
    assert error["source"] == "account"
    assert "ignored cancellation" in error["error"]
    assert master.stop() == 0
