"""The SQLite store's own ceiling: the raw upsert loop of message rows into a database
made by the store's own code (``sqlite_schema.connect`` for the pragmas, ``migrate`` for
every table and index, the ``event_id`` column and its index included), with the store's
own upsert statement (``sqlite_schema.Upserter``) and the event counter advanced once a
transaction as the writer does. The rows are built beforehand, like the ones
``benchplatforms.Flood`` sends (8 accounts of new inbound messages), and go in
``tx``-row transactions, one ``executemany`` each: nothing but the database's own work.

    python bench/sqlite_ceiling.py [--rows 200000] [--accounts 8] [--tx 600]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from hiscrm.items import epoch_ms
from hiscrm.master.data import sqlite_schema

TEXT = "hello, is this still available? " * 2  # what Flood sends


def message_rows(count: int, accounts: int, columns: list[str]) -> list[tuple[Any, ...]]:
    """``count`` new messages over ``accounts`` accounts, interleaved as concurrent syncs
    arrive, their values in the order of ``columns`` (the store's upsert's)."""
    now = epoch_ms()
    rows = []
    for i in range(count):
        n = i // accounts
        row = {
            "account_id": f"flood-{i % accounts}",
            "id": f"f{n:08d}",
            "version": 1,
            "hash": "0123456789abcdef",
            "seq": n + 1,
            "synced_at": now,
            "event_id": i + 1,
            "conversation_id": f"conv-{n % 50}",
            "direction": "inbound",
            "sender_id": f"customer-{n % 50}",
            "sender_name": "A Customer",
            "text": TEXT,
            "sent_at": 1_763_848_020_000 + n,
        }
        rows.append(tuple(row[c] for c in columns))
    return rows


def raw_upsert_rate(count: int = 200_000, accounts: int = 8, tx: int = 600) -> float:
    """Rows/s of the raw loop into a fresh store in a temporary directory."""
    return raw_upsert(count, accounts, tx)[0]


def raw_upsert(count: int = 200_000, accounts: int = 8, tx: int = 600) -> tuple[float, float]:
    """Rows/s of the raw loop into a fresh store in a temporary directory, and its CPU
    time per row in microseconds."""
    upserter = sqlite_schema.Upserter()
    rows = message_rows(count, accounts, upserter.columns("message"))
    sql = upserter.statement("message")
    with tempfile.TemporaryDirectory(prefix="hiscrm-ceiling-") as tmp:
        conn = sqlite_schema.connect(Path(tmp) / "hiscrm.db")
        try:
            sqlite_schema.migrate(conn)
            started, cpu = time.perf_counter(), time.thread_time()
            next_event = 1
            for start in range(0, count, tx):
                chunk = rows[start : start + tx]
                conn.execute("BEGIN IMMEDIATE")
                next_event += len(chunk)
                conn.execute("UPDATE event_state SET value = ? WHERE key = 'next'", (next_event,))
                conn.executemany(sql, chunk)
                conn.execute("COMMIT")
            return count / (time.perf_counter() - started), (
                (time.thread_time() - cpu) / count * 1e6
            )
        finally:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--tx", type=int, default=600)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = [raw_upsert_rate(args.rows, args.accounts, args.tx) for _ in range(args.runs)]
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(f"raw upsert loop: median {statistics.median(rates):,.0f} rows/s  (runs: {runs})")


if __name__ == "__main__":
    main()
