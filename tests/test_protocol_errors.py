"""Bad bytes on a real pipe never take the master down: logged, counted, carried on."""

import time
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import count, query, wait_until


@pytest.mark.timeout(60)
def test_garbage_and_unknown_types_are_logged_and_counted(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    done = tmp_path / "garbage-sent"
    config = make_config(
        workers=2,
        accounts=[
            {
                "id": "acc-1",
                "platform": "testplatforms.behaviours:SendGarbage",
                "options": {"done_file": str(done)},
            },
            {"id": "acc-2", "platform": "demo", "options": {"rate": 5.0}},
        ],
    )
    master = start_master(config)
    pids = master.wait_all_running(["worker1", "worker2"])
    wait_until(done.exists, 10, "garbage sent")

    errors = [
        master.log.wait_for(event="protocol error", worker="worker1", protocol_errors_total=n)
        for n in (1, 2, 3, 4)
    ]
    assert [e["kind"] for e in errors] == ["undecodable", "unknown_type", "version", "invalid"]
    assert errors[0]["level"] == "error"
    assert "this is not json" in errors[0]["first_bytes"]
    assert "worker:bogus" in errors[1]["detail"]
    assert "protocol version 99" in errors[2]["detail"]
    assert "seq" in errors[3]["detail"]

    # The master and the worker carry on: heartbeats keep it alive past the timeout.
    time.sleep(2.5)  # longer than heartbeat_timeout_s (1.5 s)
    assert not master.log.find(event="worker exited")
    assert master.proc is not None
    assert master.proc.poll() is None
    assert master.stop() == 0
    exits = master.log.find(event="worker exited")
    assert sorted(e["pid"] for e in exits) == sorted(pids.values())
    assert {e["reason"] for e in exits} == {"shutdown"}


@pytest.mark.timeout(60)
def test_broken_framing_restarts_only_that_worker(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    done = tmp_path / "garbage-sent"
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "acc-1",
                "platform": "testplatforms.behaviours:SendGarbage",
                "options": {"done_file": str(done), "break_framing": True},
            }
        ],
    )
    master = start_master(config)
    pid = master.wait_running("worker1")
    framing = master.log.wait_for(event="protocol error", kind="framing")
    assert "frame announces" in framing["detail"]
    exited = master.log.wait_for(event="worker exited", worker="worker1")
    assert (exited["pid"], exited["reason"]) == (pid, "protocol_error")
    assert master.wait_running("worker1", after=master.log.events.index(exited)) != pid
    assert master.proc is not None
    assert master.proc.poll() is None
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_sync_whose_range_lies_is_refused_and_the_account_recovers(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    done = tmp_path / "lies-sent"
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "acc-1",
                "platform": "testplatforms.behaviours:ForgeSyncs",
                "options": {"done_file": str(done)},
            }
        ],
    )
    master = start_master(config)
    master.wait_running("worker1")
    wait_until(done.exists, 10, "forged syncs sent")
    refused = [
        master.log.wait_for(event="protocol error", worker="worker1", protocol_errors_total=n)
        for n in (1, 2, 3)
    ]
    assert {e["kind"] for e in refused} == {"invalid"}
    assert "last_seq" in refused[0]["detail"]
    # The store's bookkeeping did not move, and the account goes on syncing.
    before = count(master.db, "messages", "acc-1")
    wait_until(lambda: count(master.db, "messages", "acc-1") > before + 20, 15, "syncing on")
    acked = query(master.db, "SELECT acked_seq FROM account_sync WHERE id = 'acc-1'")[0][0]
    assert acked < 10_000
    with master.http() as http:
        worker = http.get("/workers/worker1").json()
    assert worker["protocol_errors"] == 3
    assert worker["restarts"] == 0
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_sync_with_an_item_the_master_refuses_stores_none_of_it(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """Items a worker's own checks would never let out (a field the master owns, an id
    with '/', a time in seconds), forged onto the pipe beside a valid one: each sync is
    refused whole, with pydantic's reason, and the account goes on syncing."""
    done = tmp_path / "items-sent"
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "acc-1",
                "platform": "testplatforms.behaviours:ForgeSyncs",
                "options": {"done_file": str(done), "items": True},
            }
        ],
    )
    master = start_master(config)
    master.wait_running("worker1")
    wait_until(done.exists, 10, "forged syncs sent")
    refused = [
        master.log.wait_for(event="protocol error", worker="worker1", protocol_errors_total=n)
        for n in (1, 2, 3)
    ]
    assert {e["kind"] for e in refused} == {"invalid"}
    details = [e["detail"] for e in refused]
    assert "is_read" in details[0]
    assert "Extra inputs are not permitted" in details[0]
    assert "cannot be an item id" in details[1]
    assert "looks like seconds" in details[2]
    before = count(master.db, "messages", "acc-1")
    wait_until(lambda: count(master.db, "messages", "acc-1") > before + 20, 15, "syncing on")
    assert query(master.db, "SELECT count(*) FROM messages WHERE id = 'forged'") == [(0,)]
    assert master.stop() == 0
