"""Fault classes of docs/FAULTS.md, each injected into a real master and looked for where
the table says it shows: the worker's log, master.log, a status field, a metric and
/healthz. (Other rows of the table cite the tests that prove them elsewhere.)"""

import time
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import metric, query, wait_until

FAULT = "testplatforms.faults:Fault"


@pytest.mark.timeout(60)
def test_a_broken_sync_path_restarts_its_worker_and_loses_nothing(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """The original's failure: its periodic sync threw every 30 s, the error went to a file
    nobody read, and nothing reached the store for hours while everything looked fine.
    Here the worker cannot go on without its sync task: it exits, is restarted, and the
    changes kept in the spool meanwhile arrive."""
    marker = tmp_path / "broken-once"
    accounts = [
        {
            "id": "broken",
            "platform": FAULT,
            "options": {"fault": "break_sync", "once_marker": str(marker)},
        },
        {"id": "good", "platform": "demo", "options": {"rate": 20.0}},
    ]
    master = start_master(make_config(workers=1, accounts=accounts))
    pid = master.wait_running("worker1")

    error = master.log.wait_for(event="worker error", worker="worker1", source="sync")
    assert error["level"] == "error"
    assert "a broken sync path" in error["error"]
    assert "Traceback (most recent call last)" in error["traceback"]
    exited = master.log.wait_for(event="worker exited", worker="worker1", pid=pid)
    assert (exited["code"], exited["reason"]) == (70, "crashed")
    assert "its sync or heartbeat task failed" in exited["detail"]
    assert any("a broken sync path" in line for line in exited["log_tail"])
    text = master.worker_log("worker1").read_text()
    assert "worker cannot go on without its task; exiting to be restarted" in text
    master.wait_running("worker1", after=master.log.events.index(exited))

    with master.http() as http:
        worker = http.get("/workers/worker1").json()
        assert worker["restarts_by_reason"] == {"crashed": 1}
        assert (worker["last_exit"]["code"], worker["last_exit"]["reason"]) == (70, "crashed")
        assert worker["errors_total"] >= 1
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_worker_restarts_total{reason="crashed",worker="worker1"}')
        assert metric(metrics, 'hiscrm_worker_errors_total{worker="worker1"}') >= 1
    # Health went degraded while the worker was down, and said which.
    master.log.wait_for(
        event="health", status="degraded", where=lambda e: "worker1" in e["checks"]["workers"]
    )

    # Nothing the broken process took was lost: the spool kept it, the new process sent it.
    def stored() -> list[str]:
        rows = query(master.db, "SELECT id FROM messages WHERE account_id='broken' ORDER BY id")
        return [r[0] for r in rows]

    wait_until(lambda: len(stored()) > 40, 15, "the broken account's messages stored")
    ids = stored()
    assert ids == [f"m{n:05d}" for n in range(len(ids))]
    good_before = len(query(master.db, "SELECT id FROM messages WHERE account_id='good'"))
    time.sleep(0.5)
    assert len(query(master.db, "SELECT id FROM messages WHERE account_id='good'")) > good_before
    assert master.stop() == 0
