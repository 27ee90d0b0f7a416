"""Fault classes of docs/FAULTS.md, each injected into a real master and looked for where
the table says it shows: the worker's log, master.log, a status field, a metric and
/healthz. (Other rows of the table cite the tests that prove them elsewhere.)"""

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import count, metric, query, to_toml, wait_until

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


@pytest.mark.timeout(60)
def test_a_full_disk_makes_health_failing_and_room_again_makes_it_ok(
    start_master: MasterFactory,
) -> None:
    """A disk is not filled here: ``[store] min_free_mb`` is raised above the free space
    by an update (as a disk filling up below it would), then lowered again."""
    config = make_config(workers=1)
    master = start_master(config)
    master.wait_running("worker1")
    with master.http() as http:
        wait_until(lambda: http.get("/healthz").json()["status"] == "ok", 15, "health ok")
        mark = master.mark()
        master.config_path.write_text(to_toml({**config, "store": {"min_free_mb": 10_000_000}}))
        answer = http.post("/config/update")
        assert answer.status_code == 200, answer.text
        changes = {s["key"]: s["applies"] for s in answer.json()["settings"]}
        assert changes == {"store.min_free_mb": "now"}

        health = http.get("/healthz")
        assert health.status_code == 503
        disk = health.json()["checks"]["disk"]
        assert disk["status"] == "failing"
        assert disk["detail"].startswith("disk nearly full: ")
        assert "(min 10000000 MB)" in disk["detail"]
        assert http.get("/status").json()["health"] == "failing"
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_health{status="failing"}') == 1
        assert metric(metrics, 'hiscrm_health_check{check="disk",status="failing"}') == 1
        logged = master.log.wait_for(after=mark, event="health", status="failing")
        assert logged["level"] == "error"
        assert logged["checks"]["disk"].startswith("failing: disk nearly full")

        master.config_path.write_text(to_toml(config))
        assert http.post("/config/update").status_code == 200
        health = http.get("/healthz")
        assert (health.status_code, health.json()["checks"]["disk"]["status"]) == (200, "ok")
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_health_check{check="disk",status="ok"}') == 1
    master.log.wait_for(after=mark, event="health", status="ok", was="failing")
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_a_crash_looping_account_shows_backoff_everywhere(start_master: MasterFactory) -> None:
    accounts = [
        {"id": "looping", "platform": FAULT, "options": {"fault": "raise"}},
        {"id": "good", "platform": "demo", "options": {"rate": 20.0}},
    ]
    master = start_master(make_config(workers=1, accounts=accounts))
    master.wait_running("worker1")
    backoff = master.log.wait_for(event="account state", account_id="looping", new="backoff")
    assert backoff["level"] == "warning"
    assert "ValueError: a fault in the task of looping" in backoff["reason"]
    error = master.log.wait_for(event="worker error", account_id="looping")
    assert "Traceback (most recent call last)" in error["traceback"]
    master.log.wait_for(
        event="health",
        status="degraded",
        where=lambda e: "backoff: looping" in e["checks"].get("accounts", ""),
    )
    with master.http() as http:

        def looping() -> dict[str, Any]:
            info: dict[str, Any] = http.get("/accounts/looping").json()
            return info

        wait_until(lambda: looping()["task_restarts"] >= 2, 15, "restarted twice")
        # Caught while it waits (backoff 0.2 s, 0.4 s, ... up to 1 s: most of the time).
        wait_until(lambda: looping()["state"] == "backoff", 10, "seen in backoff")
        info = looping()
        assert info["errors_total"] >= 2
        assert info["last_error"]["message"] == "ValueError: a fault in the task of looping"
        assert "faults.py" in info["last_error"]["traceback"]
        wait_until(
            lambda: (
                metric(
                    http.get("/metrics").text,
                    'hiscrm_account_state{account="looping",state="backoff"}',
                )
                == 1
            ),
            10,
            "the backoff state in the metrics",
        )
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_account_errors_total{account="looping"}') >= 2
        assert metric(metrics, 'hiscrm_account_task_restarts_total{account="looping"}') >= 2
        assert metric(metrics, 'hiscrm_account_state{account="good",state="running"}') == 1
        wait_until(
            lambda: (
                "backoff: looping" in http.get("/healthz").json()["checks"]["accounts"]["detail"]
            ),
            10,
            "health names it",
        )
        assert http.get("/workers/worker1").json()["restarts"] == 0
    text = master.worker_log("worker1").read_text()
    assert "account_id=looping new=backoff old=running" in text
    assert "ValueError: a fault in the task of looping" in text
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_an_oversized_item_is_refused_and_shown_on_its_account(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """An item over 256 KiB is refused where it is upserted (InvalidItem), never sent; the
    account restarts and goes on, and nothing else is touched."""
    accounts = [
        {
            "id": "big",
            "platform": FAULT,
            "options": {"fault": "big_item", "once_marker": str(tmp_path / "once")},
        }
    ]
    master = start_master(make_config(workers=1, accounts=accounts))
    master.wait_running("worker1")
    error = master.log.wait_for(event="worker error", account_id="big")
    assert error["level"] == "error"
    assert "InvalidItem" in error["error"]
    assert "bytes (limit 262144)" in error["error"]
    with master.http() as http:
        info = http.get("/accounts/big").json()
        assert info["errors_total"] >= 1
        assert "bytes (limit 262144)" in info["last_error"]["message"]
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_account_errors_total{account="big"}') >= 1
        assert metric(metrics, 'hiscrm_worker_errors_total{worker="worker1"}') >= 1
        # It goes on (the fault was once): its messages reach the store.
        wait_until(lambda: count(master.db, "messages", "big") > 5, 15, "big syncing")
        assert http.get("/accounts/big").json()["state"] == "running"
    assert "bytes (limit 262144)" in master.worker_log("worker1").read_text()
    assert not master.log.find(event="worker exited")
    assert not master.log.find(event="protocol error")
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_an_oversized_frame_restarts_its_worker_and_is_counted(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    """A frame announcing more than 1 MiB (written onto the pipe by hand: hiscrm's own
    sender refuses to make one) ends that worker's channel; the worker is restarted."""
    accounts = [
        {
            "id": "framing",
            "platform": FAULT,
            "options": {"fault": "big_frame", "once_marker": str(tmp_path / "once")},
        }
    ]
    master = start_master(make_config(workers=1, accounts=accounts))
    pid = master.wait_running("worker1")
    error = master.log.wait_for(event="protocol error", worker="worker1", kind="framing")
    assert error["level"] == "error"
    assert "frame announces 2097152 bytes (limit 1048576)" in error["detail"]
    exited = master.log.wait_for(event="worker exited", worker="worker1", pid=pid)
    assert exited["reason"] == "protocol_error"
    master.wait_running("worker1", after=master.log.events.index(exited))
    with master.http() as http:
        worker = http.get("/workers/worker1").json()
        assert worker["protocol_errors_by_kind"] == {"framing": 1}
        assert worker["restarts_by_reason"] == {"protocol_error": 1}
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_protocol_errors_total{kind="framing",worker="worker1"}') == 1
        key = 'hiscrm_worker_restarts_total{reason="protocol_error",worker="worker1"}'
        assert metric(metrics, key) == 1
    master.log.wait_for(event="health", status="failing", where=lambda e: "workers" in e["checks"])
    assert master.stop() == 0
