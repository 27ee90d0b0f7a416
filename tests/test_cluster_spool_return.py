"""A master killed while its workers' spools hold changes the store never acknowledged:
another master takes its accounts and carries them on (past the killed master's sequence
numbers); when the killed master comes back, it takes those accounts back first and
what only its spools had arrives in the store. Nothing acknowledged is lost, nothing is
stored twice, no item's version goes back."""

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until
from pg_server import PostgresServer
from tcp_proxy import TcpProxy
from test_cluster import assert_never_on_two_masters, leases, runs

from hiscrm import spool_head

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(150)]

TTL_S = 3.0
RENEW_S = 0.5
ACCOUNTS = ("acc-01", "acc-02")


@pytest.fixture
def proxy(pg_server: PostgresServer) -> Iterator[TcpProxy]:
    cut = TcpProxy(pg_server.port)
    yield cut
    cut.close()


def start_node(start: MasterFactory, url: str, record_dir: Path, node: str) -> Master:
    accounts = [
        {
            "id": account_id,
            "platform": "testplatforms.cluster:Served",
            "options": {"record_dir": str(record_dir), "every_s": 0.05, "ids_by_node": True},
        }
        for account_id in ACCOUNTS
    ]
    config = make_config(
        accounts,
        workers=1,
        accounts_per_worker=len(ACCOUNTS),
        store={"url": url},
        cluster={"node_id": node, "lease_ttl_s": TTL_S, "lease_renew_s": RENEW_S},
    )
    return start(config, env={"HISCRM_TEST_NODE": node})


def stored(url: str) -> dict[tuple[str, str], int]:
    """(account, message id) -> its version in the store."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT account_id, id, version FROM messages").fetchall()
    return {(r[0], r[1]): int(r[2]) for r in rows}


def acked_seqs(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT id, acked_seq FROM account_sync").fetchall())


def ticked(record_dir: Path, node: str | None = None, since: float = 0.0) -> set[tuple[str, str]]:
    """(account, message id) of every upsert a task recorded (it was in its spool)."""
    found: set[tuple[str, str]] = set()
    for path in record_dir.glob("*.runs"):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line being written
            entry: dict[str, Any] = json.loads(line)
            mine = node is None or entry["node"] == node
            if entry["what"] == "tick" and mine and entry["at"] >= since:
                found.add((path.stem, entry["id"]))
    return found


def test_a_killed_masters_spooled_changes_arrive_when_it_returns(
    start_master: MasterFactory,
    pg_url: str,
    pg_server: PostgresServer,
    proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    record_dir = tmp_path / "runs"
    record_dir.mkdir()
    a = start_node(start_master, proxy.url_for(pg_url, pg_server.port), record_dir, "a")
    wait_until(lambda: leases(pg_url) == dict.fromkeys(ACCOUNTS, "a"), 60, "a holds both")

    def some_stored(node: str) -> bool:
        have = stored(pg_url)
        return all(
            sum(1 for acc, item in have if acc == a_id and item.startswith(node)) >= 5
            for a_id in ACCOUNTS
        )

    wait_until(lambda: some_stored("a-"), 30, "a's items in the store")

    # The store stops acknowledging a's changes; its spools go on filling; a is killed
    # before its leases run out (it would stop its accounts first).
    proxy.cut()
    cut_at = time.time()

    def spooled_since_cut() -> bool:
        after = ticked(record_dir, "a", cut_at + 0.2)
        return all(sum(1 for acc, _ in after if acc == a_id) >= 5 for a_id in ACCOUNTS)

    wait_until(spooled_since_cut, TTL_S - RENEW_S, "a's changes spooled after the cut")
    assert a.proc is not None
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    spool_root = a.state_dir / "spool"
    assert spool_head.pending_accounts(spool_root) == list(ACCOUNTS)
    acknowledged = stored(pg_url)
    only_in_a = ticked(record_dir, "a") - set(acknowledged)
    assert {acc for acc, _ in only_in_a} == set(ACCOUNTS), only_in_a
    appended = {acc: spool_head.read(spool_root / acc) for acc in ACCOUNTS}

    # b takes both accounts and carries them on past every number a's spools used.
    proxy.restore()
    b = start_node(start_master, pg_url, record_dir, "b")
    wait_until(lambda: leases(pg_url) == dict.fromkeys(ACCOUNTS, "b"), TTL_S + 30, "b holds both")

    def carried_past_a() -> bool:
        seqs = acked_seqs(pg_url)
        return all(
            (head := appended[acc]) is not None and seqs.get(acc, 0) > head.appended + 5
            for acc in ACCOUNTS
        )

    wait_until(carried_past_a, 30, "b carries the accounts past a's sequence numbers")

    # a comes back: it takes both accounts back (b hands them over) and replays its spools.
    back_at = time.time()
    a.start()
    wait_until(lambda: only_in_a <= set(stored(pg_url)), 40, "a's spooled changes in the store")
    claimed = a.log.find(event="leases claimed for changes only this host's spools have")
    assert {acc for e in claimed for acc in e["accounts"]} == set(ACCOUNTS), claimed
    assert b.log.find(event="handing leases over to masters whose spools hold their changes")
    for account_id in ACCOUNTS:
        assert any(r["node"] == "a" and r["from"] > back_at for r in runs(record_dir)[account_id])
    worker_log = a.worker_log("worker1").read_text()
    replays = re.findall(r"spool replayed after another host .* renumbered=(\d+)", worker_log)
    assert replays, "a's worker replayed nothing under new numbers"
    assert all(int(n) > 0 for n in replays), replays

    for master in (a, b):
        assert master.stop(30) == 0
    final = stored(pg_url)
    # Nothing acknowledged is lost, and no version went back.
    for key, version in acknowledged.items():
        assert final.get(key, 0) >= version, f"{key}: version {version} -> {final.get(key)}"
    # Every change any task made is in the store, once: each item was upserted once.
    assert ticked(record_dir) <= set(final)
    assert set(final.values()) == {1}, "an item was stored twice (its version rose)"
    assert_never_on_two_masters(record_dir)
    assert spool_head.pending_accounts(spool_root) == []
