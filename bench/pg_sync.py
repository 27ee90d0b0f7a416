"""Items/s into PostgreSQL through the master, beside raw loops into the same server in
the same run (the ratio is the figure), and into SQLite through the master for reference.

1. Master: ``--workers`` workers each run ``--accounts-per-worker`` accounts of a platform
   that upserts new messages flat out, with ``[store] url`` on a fresh database. Items/s
   = growth of the committed sequence numbers over a window after a warm-up (as
   ``bench/sync.py`` does for SQLite).
2. Raw upsert: the store's own statements (``pg_schema.Upserter``: ``COPY`` into a
   temporary table, event ids taken from the counter, one upsert from it, ``acked_seq``
   locked and recorded beside it) in a loop, no master, no workers, the items built
   beforehand; transactions of ``--raw-batch`` items.
3. Raw COPY: ``COPY`` of the same rows into the table, no conflict handling at all (a
   ceiling, not something a merge can do).

Without ``--url`` a throwaway server is started (Debian's postgresql package, as the tests
do) with fsync and synchronous commits on, as in production.

    python bench/pg_sync.py [--url postgresql://…] [--workers 2] [--accounts-per-worker 4]
                            [--seconds 10] [--raw-items 200000] [--raw-batch 2000]
"""

import argparse
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from common import machine, running_master
from sync import BASE, accounts_toml, throughput

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from pg_server import running_server

from hiscrm.items import Message, epoch_ms, item_hash
from hiscrm.master.data import pg_events, pg_schema
from hiscrm.protocol import ItemChange

TEXT = "hello, is this still available? " * 2


@contextmanager
def server_url(url: str | None) -> Iterator[tuple[str, str]]:
    """An admin URL (to create databases) and a template for a database's URL."""
    if url is not None:
        base = url.rsplit("/", 1)[0]
        yield url, base + "/{db}"
        return
    with running_server(durable=True) as server:
        yield server.url(), server.url("{db}")


def fresh_database(admin_url: str, template: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return template.format(db=name)


def committed(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT coalesce(sum(acked_seq), 0) FROM account_sync").fetchone()
    return int(row[0]) if row else 0


def master_throughput(url: str, workers: int, per_worker: int, seconds: float) -> float:
    flood = [
        (f"flood-{n}", "benchplatforms:Flood", {"batch": 200}) for n in range(workers * per_worker)
    ]
    config = BASE.format(workers=workers) + f'\n[store]\nurl = "{url}"\n\n' + accounts_toml(flood)
    with running_master(config) as (_, _state, log):
        for w in range(1, workers + 1):
            log.wait(event="worker state", worker=f"worker{w}", new="running")
        time.sleep(3.0)  # warm-up
        first, t0 = committed(url), time.monotonic()
        time.sleep(seconds)
        last, t1 = committed(url), time.monotonic()
    return (last - first) / (t1 - t0)


def changes(count: int, accounts: int) -> list[tuple[str, list[ItemChange]]]:
    """``count`` new messages spread over ``accounts`` accounts, as (account, changes)
    per account, numbered from 1 in each."""
    now = epoch_ms()
    out: list[tuple[str, list[ItemChange]]] = []
    per_account = count // accounts
    for a in range(accounts):
        items = []
        for n in range(per_account):
            message = Message(
                id=f"m{n}",
                conversation_id=f"c{n % 50}",
                direction="inbound",
                sender_id="u",
                text=TEXT,
                sent_at=now + n,
            )
            digest = item_hash(message.model_dump_json().encode())
            items.append(ItemChange(seq=n + 1, version=1, hash=digest, item=message))
        out.append((f"raw-{a}", items))
    return out


def raw_upsert(url: str, work: list[tuple[str, list[ItemChange]]], batch: int) -> float:
    upserter = pg_schema.Upserter()
    with psycopg.connect(url, autocommit=True) as conn:
        pg_schema.migrate(conn)
        upserter.prepare(conn)
        total = sum(len(c) for _, c in work)
        started = time.perf_counter()
        for account_id, items in work:
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                with conn.transaction():
                    now = epoch_ms()
                    pg_schema.committed_seqs(conn, [account_id], lock=True)
                    rows = upserter.rows([(account_id, chunk)], now)
                    upserter.stage(conn, rows)
                    upserter.merge(conn, rows, pg_events.reserve(conn, len(chunk)))
                    pg_schema.record_commits(conn, {account_id: chunk[-1].seq}, now)
        return total / (time.perf_counter() - started)


def raw_copy(url: str, work: list[tuple[str, list[ItemChange]]], batch: int) -> float:
    upserter = pg_schema.Upserter()
    message_columns = list(pg_schema.column_types(pg_schema.KINDS["message"]))
    event = message_columns.index("event_id")
    with psycopg.connect(url, autocommit=True) as conn:
        pg_schema.migrate(conn)
        total = sum(len(c) for _, c in work)
        first_event = 1
        started = time.perf_counter()
        for account_id, items in work:
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                rows = upserter.rows([(account_id, chunk)], epoch_ms())["message"]
                with conn.transaction(), conn.cursor() as cursor:
                    sql = f"COPY messages ({', '.join(message_columns)}) FROM STDIN"
                    with cursor.copy(sql) as copy:  # type: ignore[arg-type]
                        for row in rows:  # event ids going up, as the writer gives them
                            number = row[event]
                            copy.write_row((*row[:event], first_event + number, *row[event + 1 :]))
                first_event += len(chunk)
        return total / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing server (a database to create others from)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accounts-per-worker", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--raw-items", type=int, default=200_000)
    parser.add_argument("--raw-batch", type=int, default=2_000)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    accounts = args.workers * args.accounts_per_worker
    work = changes(args.raw_items, accounts)
    with server_url(args.url) as (admin, template):
        with psycopg.connect(admin) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            fsync = conn.execute("SHOW fsync").fetchone()
        print(f"PostgreSQL {version[0] if version else '?'}, fsync={fsync[0] if fsync else '?'}")
        rates, upserts, copies = [], [], []
        for run in range(args.runs):
            rates.append(
                master_throughput(
                    fresh_database(admin, template, f"bench_master_{run}"),
                    args.workers,
                    args.accounts_per_worker,
                    args.seconds,
                )
            )
            upserts.append(
                raw_upsert(
                    fresh_database(admin, template, f"bench_raw_{run}"), work, args.raw_batch
                )
            )
            copies.append(
                raw_copy(fresh_database(admin, template, f"bench_copy_{run}"), work, args.raw_batch)
            )
    sqlite = [throughput(args.workers, args.accounts_per_worker, args.seconds)]

    def line(name: str, values: list[float]) -> str:
        runs = ", ".join(f"{v:,.0f}" for v in values)
        return f"{name:<52} median {statistics.median(values):>9,.0f} items/s  (runs: {runs})"

    print(
        line(
            f"master -> PostgreSQL, {args.workers} workers x {args.accounts_per_worker} accounts",
            rates,
        )
    )
    print(line(f"raw upsert loop, {args.raw_batch} items a transaction", upserts))
    print(line(f"raw COPY loop, {args.raw_batch} items a transaction", copies))
    print(line("master -> SQLite, same load (bench/sync.py)", sqlite))
    ratio = statistics.median(rates) / statistics.median(upserts)
    print(f"master / raw upsert: {ratio:.0%}")


if __name__ == "__main__":
    main()
