"""A store that cannot commit is told, not hidden: another process holding the write lock
on hiscrm.db past the deadline makes health failing and API writes answer 503 with a
clear error; when the lock goes, everything catches up and nothing is lost."""

import sqlite3
import time
from pathlib import Path

import pytest
from conftest import MasterFactory, make_config
from harness import metric, query, read_jsonl, wait_until

RECORDING = "testplatforms.recording"


@pytest.mark.timeout(90)
def test_a_write_lock_held_elsewhere_makes_health_failing_then_ok_and_nothing_is_lost(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    accounts = [
        {
            "id": f"acc-{n}",
            "platform": f"{RECORDING}:Stream",
            "options": {"record_dir": str(records), "per_tick": 1},
        }
        for n in (1, 2)
    ]
    master = start_master(make_config(workers=2, accounts=accounts))
    master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: len(query(master.db, "SELECT id FROM messages")) > 20, 15, "syncing")
    mark = master.mark()
    with master.http(timeout=30) as http:
        assert http.get("/healthz").json()["checks"]["store"]["status"] == "ok"
        one = http.get("/accounts/acc-1/messages", params={"limit": 1}).json()["items"][0]

        lock = sqlite3.connect(master.db, timeout=5)
        lock.execute("BEGIN IMMEDIATE")  # the write lock, held by another process
        try:
            began = time.monotonic()
            read = http.post(f"/accounts/acc-1/messages/{one['id']}/read")
            took = time.monotonic() - began
            assert read.status_code == 503, read.text
            error = read.json()["error"]
            assert error.startswith("the store"), error
            assert "database is locked" in error or "did not take the write" in error
            assert took < 20
            wait_until(lambda: http.get("/healthz").status_code == 503, 20, "health failing")
            health = http.get("/healthz").json()
            assert health["status"] == "failing"
            assert "the store cannot commit" in health["checks"]["store"]["detail"]
            status = http.get("/status").json()  # reads still answer
            assert status["health"] == "failing"
            metrics = http.get("/metrics").text
            assert metric(metrics, 'hiscrm_health_check{check="store",status="failing"}') == 1
            assert metric(metrics, 'hiscrm_health{status="failing"}') == 1
            # Once a write gives up (SQLite's busy timeout), its syncs are refused and
            # counted; the workers keep them and send them again.
            refused = master.log.wait_for(after=mark, event="sync not committed", timeout=20)
            assert "database is locked" in refused["reason"]
            master.log.wait_for(after=mark, event="the store cannot commit")
            errors = 'hiscrm_worker_data_sync_errors_total{{account="{}",reason="store_error"}}'
            assert any(
                metric(http.get("/metrics").text, errors.format(a)) >= 1 for a in ("acc-1", "acc-2")
            )
            failing = master.log.wait_for(after=mark, event="health", status="failing")
            assert failing["level"] == "error"
            assert "the store cannot commit" in failing["checks"]["store"]
        finally:
            lock.rollback()
            lock.close()
        wait_until(
            lambda: http.get("/healthz").json()["checks"]["store"]["status"] == "ok", 30, "ok"
        )
        assert http.post(f"/accounts/acc-1/messages/{one['id']}/read").status_code == 200
    master.log.wait_for(after=mark, event="health", was="failing")
    assert master.stop() == 0
    for account in ("acc-1", "acc-2"):
        produced = {r["item"]["id"] for r in read_jsonl(records / f"{account}.jsonl")}
        stored = {
            r[0] for r in query(master.db, "SELECT id FROM messages WHERE account_id=?", account)
        }
        assert produced <= stored, f"{account} lost {sorted(produced - stored)[:5]}"
