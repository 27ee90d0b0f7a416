"""The data path end to end with real workers, real pipes and the real SQLite store."""

import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, accounts_of, broken_worker_code, make_config
from harness import count, gone, metric, query, read_jsonl, wait_until

from hiscrm.items import ITEM_MODELS, KINDS

RECORDING = "testplatforms.recording"


def recorded(record_dir: Path, account_id: str) -> list[dict[str, Any]]:
    return read_jsonl(record_dir / f"{account_id}.jsonl")


def _after_pid(log_text: str, pid: int) -> str:
    """The part of a worker log written by the process with this pid."""
    start = log_text.rfind(f"pid={pid} python=")
    return log_text[start:] if start >= 0 else ""


def spool_unacked(state_dir: Path, db: Path) -> list[tuple[str, int]]:
    """The changes (account, seq) in the spools that the store has not acknowledged
    (the spools also keep recent acknowledged ones, for a resend from a seq)."""
    acked = {a: int(s) for a, s in query(db, "SELECT id, acked_seq FROM account_sync")}
    waiting = []
    for segment in sorted((state_dir / "spool").glob("*/*.jsonl")):
        account = segment.parent.name
        data = segment.read_bytes()
        for line in data[: data.rfind(b"\n") + 1].splitlines():  # complete lines
            seq = int(json.loads(line)["seq"])
            if seq > acked.get(account, 0):
                waiting.append((account, seq))
    return waiting


@pytest.mark.timeout(90)
def test_demo_data_in_two_workers_equals_the_store(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    accounts = [
        {
            "id": f"acc-{n}",
            "platform": f"{RECORDING}:RecordingDemo",
            "options": {"rate": 150.0, "seed": n, "record_dir": str(record_dir)},
        }
        for n in range(1, 5)
    ]
    master = start_master(make_config(workers=2, accounts=accounts))
    master.wait_all_running(["worker1", "worker2"])
    wait_until(
        lambda: all(count(master.db, "messages", f"acc-{n}") > 50 for n in range(1, 5)),
        30,
        "data flowing",
    )
    assert master.stop() == 0

    for n in range(1, 5):
        account = f"acc-{n}"
        expected: dict[tuple[str, str], tuple[dict[str, Any], int]] = {}
        for entry in recorded(record_dir, account):
            key = (entry["kind"], entry["item"]["id"])
            if entry["changed"]:
                version = expected.get(key, ({}, 0))[1]
                # Through the model, so defaults count as what the worker observed.
                item = ITEM_MODELS[entry["kind"]].model_validate(entry["item"]).model_dump()
                expected[key] = (item, version + 1)
        assert len(expected) > 50
        assert any(v > 1 for _, v in expected.values()), "no item was ever updated"
        for kind in ITEM_MODELS:
            fields = KINDS[kind].observed_fields
            rows = query(
                master.db,
                f"SELECT id, version, {', '.join(fields)} FROM {kind}s WHERE account_id = ?",
                account,
            )
            in_store = {row[0]: row for row in rows}
            mine = {item_id: v for (k, item_id), v in expected.items() if k == kind}
            assert set(in_store) == set(mine), f"{account} {kind}s differ"
            for item_id, (data, version) in mine.items():
                row = in_store[item_id]
                assert row[1] == version, (
                    f"{account} {kind} {item_id}: version {row[1]} != {version}"
                )
                for field, value in zip(fields, row[2:], strict=True):
                    stored = json.loads(value) if field == "participants" else value
                    assert stored == data[field], f"{account} {kind} {item_id} {field}"
    assert spool_unacked(master.state_dir, master.db) == [], "everything acknowledged"


@pytest.mark.timeout(60)
def test_an_update_reaches_the_store_and_is_read_survives_it(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    signals = tmp_path / "signals"
    signals.mkdir()
    config = make_config(
        workers=1,
        accounts=[
            {
                "id": "acc-1",
                "platform": f"{RECORDING}:UpdateOnSignal",
                "options": {"signal_dir": str(signals)},
            }
        ],
    )
    master = start_master(config)
    master.wait_running("worker1")

    def message() -> tuple[Any, ...]:
        rows = query(
            master.db,
            "SELECT text, version, is_read, read_at FROM messages WHERE account_id='acc-1' AND id='m1'",
        )
        return rows[0] if rows else ()

    wait_until(lambda: message()[:2] == ("text 1", 1), 10, "first version stored")
    import sqlite3

    conn = sqlite3.connect(master.db, timeout=10)
    conn.execute("UPDATE messages SET is_read = 1, read_at = 1763848099000 WHERE id = 'm1'")
    conn.commit()
    conn.close()
    (signals / "update-1").touch()
    wait_until(lambda: message()[:2] == ("text 2", 2), 10, "update stored")
    assert message() == ("text 2", 2, 1, 1763848099000)
    assert master.stop() == 0


def _stream_config(record_dir: Path, per_tick: int = 5, **top: Any) -> dict[str, Any]:
    accounts = accounts_of(f"{RECORDING}:Stream", 2, record_dir=str(record_dir), per_tick=per_tick)
    return make_config(workers=2, accounts=accounts, **top)


def _check_stream_complete(master: Any, record_dir: Path) -> None:
    for account in ("acc-1", "acc-2"):
        produced = [e["item"]["id"] for e in recorded(record_dir, account)]
        assert len(produced) == len(set(produced)), "the platform wrote an id twice"
        rows = query(
            master.db, "SELECT id, text, version FROM messages WHERE account_id = ?", account
        )
        stored = {r[0]: r for r in rows}
        missing = [i for i in produced if i not in stored]
        assert not missing, (
            f"{account}: {len(missing)} upserted messages never reached the store, e.g. {missing[:3]}"
        )
        assert all(stored[i][1] == f"message number {int(i[1:])}" for i in produced)
        assert all(r[2] == 1 for r in rows), "a replay bumped a version"
        # Anything stored beyond the record was upserted just before a kill, and is whole.
        assert len(stored) - len(produced) <= 10


@pytest.mark.timeout(90)
def test_kill9_worker_mid_sync_loses_and_duplicates_nothing(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    master = start_master(_stream_config(record_dir, per_tick=20))
    pids = master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: count(master.db, "messages", "acc-1") > 200, 20, "streaming")
    mark = master.mark()
    # While the master is paused no acknowledgement comes: changes pile up beyond the
    # in-flight window, unsent, in the worker's spool only. Then the worker dies.
    os.kill(master.pid, signal.SIGSTOP)
    try:
        time.sleep(1.0)
        os.kill(pids["worker1"], signal.SIGKILL)
    finally:
        os.kill(master.pid, signal.SIGCONT)
    new_pid = master.wait_running("worker1", after=mark)
    master.log.wait_for(event="account assigned", pid=new_pid, account_id="acc-1")
    wait_until(
        lambda: "account loaded" in _after_pid(master.worker_log("worker1").read_text(), new_pid),
        10,
        "acc-1 loaded",
    )
    loaded = re.search(
        r"account loaded +account_id=acc-1 acked_seq=\d+ items=\d+ replayed=(\d+)",
        _after_pid(master.worker_log("worker1").read_text(), new_pid),
    )
    assert loaded, "the new worker did not load acc-1"
    assert int(loaded.group(1)) > 0, (
        "nothing was in flight at the kill: the spool replay went untested"
    )
    before = len(recorded(record_dir, "acc-1"))
    wait_until(lambda: len(recorded(record_dir, "acc-1")) > before + 200, 20, "streaming again")
    assert master.stop() == 0
    _check_stream_complete(master, record_dir)
    assert spool_unacked(master.state_dir, master.db) == []


@pytest.mark.timeout(90)
def test_kill9_master_mid_sync_then_restart_loses_and_duplicates_nothing(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    record_dir = tmp_path / "records"
    record_dir.mkdir()
    master = start_master(_stream_config(record_dir))
    pids = master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: count(master.db, "messages", "acc-2") > 200, 20, "streaming")

    # Paused first, so changes are surely unacknowledged at the kill (else the streams could
    # happen to be fully acknowledged at that moment, and the replay would go untested).
    os.kill(master.pid, signal.SIGSTOP)
    time.sleep(0.5)
    os.kill(master.pid, signal.SIGKILL)
    assert master.proc is not None
    master.proc.wait(5)
    wait_until(lambda: all(gone(p) for p in pids.values()), 5, "workers gone with the master")
    assert spool_unacked(master.state_dir, master.db), "unacknowledged changes wait in the spool"
    committed = {a: count(master.db, "messages", a) for a in ("acc-1", "acc-2")}

    mark = master.mark()
    master.start()
    for worker in ("worker1", "worker2"):
        master.wait_running(worker, after=mark)
    for account in ("acc-1", "acc-2"):
        wait_until(
            lambda a=account: count(master.db, "messages", a) > committed[a] + 200,
            20,
            f"{account} again",
        )
    # The new master assigned each account from what the old one had acked.
    for account in ("acc-1", "acc-2"):
        assigned = master.log.wait_for(after=mark, event="account assigned", account_id=account)
        assert assigned["acked_seq"] > 0, assigned
    assert master.stop() == 0
    _check_stream_complete(master, record_dir)
    assert spool_unacked(master.state_dir, master.db) == []


@pytest.mark.timeout(60)
def test_a_burst_over_1mb_is_chunked_and_arrives_whole(start_master: MasterFactory) -> None:
    config = make_config(
        workers=1,
        accounts=[{"id": "acc-1", "platform": f"{RECORDING}:Burst", "options": {"count": 5000}}],
    )
    master = start_master(config)
    master.wait_running("worker1")
    wait_until(lambda: count(master.db, "messages", "acc-1") == 5000, 30, "the whole burst stored")
    sizes = query(master.db, "SELECT sum(length(text)) FROM messages WHERE account_id='acc-1'")
    assert sizes[0][0] > 1_500_000  # so it could not have fit into one message
    assert not master.log.find(event="protocol error")
    assert not master.log.find(event="worker exited")
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_an_invalid_item_is_reported_and_siblings_keep_syncing(start_master: MasterFactory) -> None:
    config = make_config(
        workers=1,
        accounts=[
            {"id": "bad", "platform": f"{RECORDING}:InvalidItems"},
            {"id": "good", "platform": "demo", "options": {"rate": 50.0}},
        ],
    )
    master = start_master(config)
    master.wait_running("worker1")
    error = master.log.wait_for(event="worker error", source="platform data")
    assert error["account_id"] == "bad"
    assert "InvalidItem" in error["error"]
    assert "sent_at: 1763848020 looks like seconds since the epoch" in error["error"]
    assert error["worker_errors_total"] == 1
    text = master.worker_log("worker1").read_text()
    assert "looks like seconds since the epoch" in text
    assert "[error]" in text
    first = count(master.db, "messages", "good")
    wait_until(lambda: count(master.db, "messages", "good") > first + 10, 10, "good keeps syncing")
    assert count(master.db, "messages", "bad") == 0
    # Reported once per attempt, not twice (upsert and run() both failing).
    time.sleep(0.5)
    attempts = len(master.log.find(event="worker error", account_id="bad"))
    restarts = len(
        [
            line
            for line in master.worker_log("worker1").read_text().splitlines()
            if "account_id=bad new=backoff" in line
        ]
    )
    assert attempts == restarts or attempts == restarts + 1
    assert master.stop() == 0


@pytest.mark.timeout(60)
def test_stale_means_no_progress_whatever_the_syncs(start_master: MasterFactory) -> None:
    """A quiet platform that says it is alive stays fresh; one that does nothing goes stale
    although its worker keeps sending empty syncs; a blocked worker's account goes stale
    and recovers."""
    config = make_config(
        workers=2,
        accounts=[
            {"id": "quiet", "platform": "demo", "options": {"max_events": 0}},
            {"id": "blocked", "platform": "demo", "options": {"rate": 5.0}},
            {"id": "silent", "platform": "testplatforms.behaviours:Idle"},
        ],
        supervision={"heartbeat_timeout_s": 60.0},
        sync={"stale_after_s": 1.5},
    )
    master = start_master(config)
    pids = master.wait_all_running(["worker1", "worker2"])
    silent = master.log.wait_for(event="account is stale: no progress", account_id="silent")
    assert silent["level"] == "warning"
    syncs_before = master.log.find(event="account is stale: no progress")
    assert [e["account_id"] for e in syncs_before] == ["silent"]
    with master.http() as http:
        wait_until(
            lambda: http.get("/accounts/silent").json()["syncs"] > 2, 10, "silent's empty syncs"
        )
        assert http.get("/accounts/silent").json()["stale"] is True
        assert http.get("/accounts/quiet").json()["stale"] is False
        metrics = http.get("/metrics").text
        assert metric(metrics, 'hiscrm_account_stale{account="silent"}') == 1
        assert metric(metrics, 'hiscrm_account_stale{account="quiet"}') == 0
        accounts = http.get("/healthz").json()["checks"]["accounts"]
        assert accounts["status"] == "degraded"
        assert "stale (no progress): silent" in accounts["detail"]

    os.kill(pids["worker2"], signal.SIGSTOP)  # its sync path is blocked, it is not dead
    try:
        stale = master.log.wait_for(
            event="account is stale: no progress", account_id="blocked", timeout=10
        )
        assert stale["level"] == "warning"
        assert stale["seconds_without_progress"] >= 1.5
        time.sleep(2.0)  # still stale: warned once per episode
        assert (
            len(master.log.find(event="account is stale: no progress", account_id="blocked")) == 1
        )
    finally:
        os.kill(pids["worker2"], signal.SIGCONT)
    master.log.wait_for(event="account progress resumed", account_id="blocked", timeout=10)
    assert not master.log.find(event="account is stale: no progress", account_id="quiet")
    assert master.stop() == 0


@pytest.mark.timeout(90)
def test_accounts_of_a_worker_that_cannot_boot_move_and_come_back(
    start_master: MasterFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "worker2-broken"
    marker.touch()
    accounts = accounts_of("demo", 4, rate=20.0)
    # Spawned workers each import the worker runtime themselves, so one of them can fail
    # alone (a fork template imports it once for all).
    supervision = {"reassign_after_s": 1.5, "backoff_max_s": 0.5, "fork_template": False}
    config = make_config(workers=2, accounts=accounts, supervision=supervision)
    code = broken_worker_code(tmp_path, only_in="worker2")
    master = start_master(config, code_dir=code, env={"HISCRM_TEST_BROKEN_MARKER": str(marker)})
    w1 = master.wait_running("worker1")
    master.log.wait_for(event="worker state", worker="worker2", new="boot_failed")
    # After reassign_after_s, worker2's accounts (acc-2, acc-4) move to worker1 and sync there.
    for account in ("acc-2", "acc-4"):
        master.log.wait_for(
            event="account assigned", worker="worker1", account_id=account, timeout=15
        )
    wait_until(lambda: count(master.db, "messages", "acc-2") > 5, 15, "acc-2 syncing on worker1")

    marker.unlink()  # worker2 can boot again: its accounts go home by handshake
    w2 = master.wait_running("worker2", timeout=20)
    for account in ("acc-2", "acc-4"):
        master.log.wait_for(
            event="account assigned", worker="worker2", pid=w2, account_id=account, timeout=20
        )
    before = count(master.db, "messages", "acc-4")
    wait_until(
        lambda: count(master.db, "messages", "acc-4") > before + 5, 15, "acc-4 syncing at home"
    )
    assert master.stop() == 0

    # At every moment an account had one worker: each move to worker2 came after worker1
    # released it.
    events = master.log.events
    for account in ("acc-2", "acc-4"):
        history = [
            (e["event"], e["worker"])
            for e in events
            if e.get("account_id") == account
            and e["event"] in ("account assigned", "account released")
        ]
        assert history[:3] == [
            ("account assigned", "worker1"),
            ("account released", "worker1"),
            ("account assigned", "worker2"),
        ], history
    assert w1 == master.log.find(event="account assigned", account_id="acc-1")[0]["pid"]
