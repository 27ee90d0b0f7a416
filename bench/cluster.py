"""A cluster of masters on one PostgreSQL: failover time and items/s.

1. Failover: 3 masters (1 worker each) share 12 demo accounts with ``lease_ttl_s`` =
   ``--ttl`` (5) and ``lease_renew_s`` = ttl/5; one is SIGKILLed once the accounts are
   balanced; the time from the kill until every one of its accounts is held by another
   master and reported ``running`` by it. ``--runs`` times (5), each on a fresh database.
2. Items/s into PostgreSQL from 3 masters and from 1 (each master ``--workers`` workers
   of ``--accounts-per-worker`` flood accounts), beside the raw upsert loop of
   ``bench/pg_sync.py`` into the same server in the same run (the ratio is the figure).
3. The SQLite figure of ``bench/sync.py`` again, beside SQLite's raw upsert loop in the
   same run (the default did not slow down).

    python bench/cluster.py [--url postgresql://…] [--runs 5] [--ttl 5] [--seconds 10]
"""

import argparse
import signal
import statistics
import time
from contextlib import ExitStack

import psycopg
from common import machine, running_master, summary
from pg_sync import changes, committed, fresh_database, raw_upsert, server_url
from sqlite_ceiling import raw_upsert_rate
from sync import BASE, accounts_toml, throughput


def node_config(url: str, node: str, accounts: list[tuple[str, str, dict[str, object]]],
                workers: int, per_worker: int, ttl: float) -> str:  # fmt: skip
    base = BASE.format(workers=workers).replace(
        "accounts_per_worker = 100", f"accounts_per_worker = {per_worker}"
    )
    cluster = (
        f'\n[store]\nurl = "{url}"\n\n[cluster]\nnode_id = "{node}"\n'
        f"lease_ttl_s = {ttl}\nlease_renew_s = {ttl / 5}\n\n"
    )
    return base + cluster + accounts_toml(accounts)


def holders(url: str) -> list[tuple[str, str | None, str | None, int | None]]:
    with psycopg.connect(url) as conn:
        try:
            return conn.execute(
                "SELECT account_id, CASE WHEN expires_at > now() THEN node_id END, state, "
                "state_at FROM account_leases"
            ).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def failover(url: str, ttl: float) -> float:
    """Seconds from a master's SIGKILL until its accounts run on the others."""
    accounts = [(f"acc-{n:02d}", "demo", {"rate": 1.0, "seed": n}) for n in range(12)]
    with ExitStack() as stack:
        masters = {
            node: stack.enter_context(running_master(node_config(url, node, accounts, 1, 12, ttl)))[
                0
            ]
            for node in ("n1", "n2", "n3")
        }

        def balanced() -> bool:
            rows = holders(url)
            per_node = [sum(1 for r in rows if r[1] == n and r[2] == "running") for n in masters]
            return per_node == [4, 4, 4]

        wait(balanced, 90, "12 accounts running, 4 on each master")
        theirs = {r[0] for r in holders(url) if r[1] == "n2"}
        masters["n2"].send_signal(signal.SIGKILL)
        killed_at, killed_ms = time.monotonic(), int(time.time() * 1000)
        masters["n2"].wait(10)

        def taken_over() -> bool:
            rows = {r[0]: r for r in holders(url)}
            return all(
                rows[a][1] not in (None, "n2")
                and rows[a][2] == "running"
                and (rows[a][3] or 0) >= killed_ms
                for a in theirs
            )

        wait(taken_over, ttl + 30, "the killed master's accounts running elsewhere")
        return time.monotonic() - killed_at


def cluster_throughput(
    url: str, nodes: int, workers: int, per_worker: int, seconds: float, ttl: float
) -> float:
    count = nodes * workers * per_worker
    flood = [(f"flood-{n}", "benchplatforms:Flood", {"batch": 200}) for n in range(count)]
    with ExitStack() as stack:
        for n in range(1, nodes + 1):
            config = node_config(url, f"n{n}", flood, workers, per_worker, ttl)
            stack.enter_context(running_master(config))

        def all_running() -> bool:
            rows = holders(url)
            return len(rows) == count and all(r[1] is not None and r[2] == "running" for r in rows)

        wait(all_running, 120, "every flood account running")
        time.sleep(3.0)  # warm-up
        first, t0 = committed(url), time.monotonic()
        time.sleep(seconds)
        last, t1 = committed(url), time.monotonic()
    return (last - first) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing server (a database to create others from)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--accounts-per-worker", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--raw-items", type=int, default=200_000)
    parser.add_argument("--raw-batch", type=int, default=2_000)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    with server_url(args.url) as (admin, template):
        took = [
            failover(fresh_database(admin, template, f"bench_failover_{run}"), args.ttl)
            for run in range(args.runs)
        ]
        print(summary(f"failover after SIGKILL (ttl {args.ttl:g} s)", [t * 1000 for t in took]))
        per = (args.workers, args.accounts_per_worker, args.seconds, args.ttl)
        three = cluster_throughput(fresh_database(admin, template, "bench_c3"), 3, *per)
        one = cluster_throughput(fresh_database(admin, template, "bench_c1"), 1, *per)
        work = changes(args.raw_items, 3 * args.workers * args.accounts_per_worker)
        raw = raw_upsert(fresh_database(admin, template, "bench_craw"), work, args.raw_batch)
    sqlite = throughput(args.workers, args.accounts_per_worker, args.seconds)
    sqlite_raw = raw_upsert_rate()
    shape = f"{args.workers} worker(s) x {args.accounts_per_worker} accounts each"
    print(f"3 masters -> PostgreSQL ({shape}) {three:>10,.0f} items/s  ({three / raw:.0%} of raw)")
    print(f"1 master  -> PostgreSQL ({shape}) {one:>10,.0f} items/s  ({one / raw:.0%} of raw)")
    print(f"raw upsert loop, {args.raw_batch} items a transaction {raw:>10,.0f} items/s")
    print(
        f"1 master  -> SQLite (bench/sync.py's load, {shape}) {sqlite:>10,.0f} items/s"
        f"  ({sqlite / sqlite_raw:.0%} of SQLite's raw loop)"
    )
    print(f"SQLite's raw upsert loop (bench/sqlite_ceiling.py) {sqlite_raw:>10,.0f} rows/s")
    print(f"failover p50 {statistics.median(took):.2f} s")


if __name__ == "__main__":
    main()
