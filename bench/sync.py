"""Data path figures: sustained items/s into the store, new-message latency, and bytes on
the pipe for one changed item.

1. Throughput: ``--workers`` workers each run ``--accounts-per-worker`` accounts of a
   platform that upserts new messages flat out. Items/s = growth of the store's committed
   sequence numbers over a window after a warm-up. Each run is followed by the store's
   own ceiling (``sqlite_ceiling.py``: the raw upsert loop of the same rows into a
   database made by the store's schema code, same table, indexes, ``event_id`` and
   pragmas), so the ratio compares two figures taken under the same load of the host.
   CPU time per item (master, workers) and per raw row is printed beside them: it
   varies far less than wall-clock rates when other work shares the host.
2. Latency: a platform upserts a new inbound message every 20 ms with the wall-clock time
   in its text; this script polls the store (read-only SQLite, every 1 ms) and records
   when each row became readable. Measured on an otherwise idle master, then with the
   throughput load running beside it.
3. Bytes: accounts of 1 000 and 100 000 items; once everything is acknowledged, one item
   changes; the worker's own counter says how many bytes its sync took.

    python bench/sync.py [--workers 2] [--accounts-per-worker 4] [--seconds 10] [--runs 3]
                         [--only throughput]
"""

import argparse
import contextlib
import json
import os
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from common import machine, running_master, summary
from sqlite_ceiling import raw_upsert

BASE = """
workers = {workers}
accounts_per_worker = 100
[api]
port = 0
[supervision]
heartbeat_timeout_s = 60
[sync]
stale_after_s = 3600
"""


def accounts_toml(accounts: list[tuple[str, str, dict[str, object]]]) -> str:
    out = []
    for account_id, platform, options in accounts:
        opts = ", ".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
        out.append(
            f'[[accounts]]\nid = "{account_id}"\nplatform = "{platform}"\noptions = {{ {opts} }}\n'
        )
    return "\n".join(out)


def committed(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute("SELECT coalesce(sum(acked_seq), 0) FROM account_sync").fetchone()
        return int(row[0])
    finally:
        conn.close()


def wait_for_db(db: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not db.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{db} not created")
        time.sleep(0.05)


@dataclass
class Throughput:
    items_per_s: float
    master_cpu_us: float  # CPU (user + system) of the master, every thread, per item
    workers_cpu_us: float  # the same, summed over the master's children (the workers)


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure_throughput(workers: int, per_worker: int, seconds: float) -> Throughput:
    flood = [
        (f"flood-{n}", "benchplatforms:Flood", {"batch": 200}) for n in range(workers * per_worker)
    ]
    with running_master(BASE.format(workers=workers) + accounts_toml(flood)) as (proc, state, log):
        for w in range(1, workers + 1):
            log.wait(event="worker state", worker=f"worker{w}", new="running")
        db = state / "hiscrm.db"
        wait_for_db(db)
        master = psutil.Process(proc.pid)
        children = master.children(recursive=True)  # the workers (and the idle template)
        time.sleep(3.0)  # warm-up
        cpu0 = cpu_seconds([master]), cpu_seconds(children)
        first, t0 = committed(db), time.monotonic()
        time.sleep(seconds)
        last, t1 = committed(db), time.monotonic()
        cpu1 = cpu_seconds([master]), cpu_seconds(children)
    items = max(1, last - first)
    return Throughput(
        (last - first) / (t1 - t0),
        (cpu1[0] - cpu0[0]) / items * 1e6,
        (cpu1[1] - cpu0[1]) / items * 1e6,
    )


def throughput(workers: int, per_worker: int, seconds: float) -> float:
    return measure_throughput(workers, per_worker, seconds).items_per_s


def latency(samples: int, with_load: tuple[int, int, float] | None) -> list[float]:
    """``with_load``: (workers, accounts per worker, items/s per account; 0 = flat out)."""
    accounts = [("ping", "benchplatforms:Pinger", {"interval_s": 0.02})]
    workers = 1
    if with_load is not None:
        workers, per_worker, rate = with_load
        accounts += [
            (f"flood-{n}", "benchplatforms:Flood", {"batch": 50, "rate": rate})
            for n in range(workers * per_worker)
        ]
    with running_master(BASE.format(workers=workers) + accounts_toml(accounts)) as (_, state, log):
        log.wait(event="account assigned", account_id="ping")
        db = state / "hiscrm.db"
        wait_for_db(db)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        time.sleep(2.0 if with_load else 0.5)
        query = "SELECT id, text FROM messages WHERE account_id = 'ping' AND id > ? ORDER BY id"
        # Rows already there were written before we looked: start after them.
        seen = max((r[0] for r in conn.execute(query, ("",))), default="")
        results: list[float] = []
        deadline = time.monotonic() + 120
        while len(results) < samples and time.monotonic() < deadline:
            rows = conn.execute(query, (seen,)).fetchall()
            now = time.time()
            for item_id, text in rows:
                results.append((now - float(text)) * 1000)
                seen = item_id
            time.sleep(0.001)
        conn.close()
    return results[:samples]


def bytes_per_change() -> list[dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp)
        accounts = [
            (
                f"big-{n}",
                "benchplatforms:OneChange",
                {"items": n, "result_file": str(results / f"{n}.json")},
            )
            for n in (1_000, 100_000)
        ]
        # A worker each (placed round robin): its syncer's bytes are its account's alone.
        with running_master(BASE.format(workers=2) + accounts_toml(accounts)) as (_, _, _):
            deadline = time.monotonic() + 300
            while not all((results / f"{n}.json").exists() for n in (1_000, 100_000)):
                if time.monotonic() > deadline:
                    raise TimeoutError("big accounts did not finish")
                time.sleep(0.2)
        return [json.loads((results / f"{n}.json").read_text()) for n in (1_000, 100_000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accounts-per-worker", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["throughput"], help="skip latency and bytes")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    rates, ceilings, cpu_ratios = [], [], []
    for run in range(args.runs):
        load = os.getloadavg()[0]
        measured = measure_throughput(args.workers, args.accounts_per_worker, args.seconds)
        ceiling, ceiling_cpu = raw_upsert(accounts=args.workers * args.accounts_per_worker)
        rates.append(measured.items_per_s)
        ceilings.append(ceiling)
        cpu_ratios.append(ceiling_cpu / measured.master_cpu_us)
        print(
            f"  run {run + 1} (host load {load:.1f}): hiscrm {rates[-1]:,.0f} items/s, raw "
            f"upsert loop {ceiling:,.0f} rows/s, ratio {rates[-1] / ceiling:.0%}; CPU per "
            f"item: master {measured.master_cpu_us:.1f} us, workers "
            f"{measured.workers_cpu_us:.1f} us; raw loop {ceiling_cpu:.1f} us per row",
            flush=True,
        )
    ratios = [r / c for r, c in zip(rates, ceilings, strict=True)]
    print(
        f"throughput, {args.workers} workers x {args.accounts_per_worker} accounts flat out: "
        f"median {statistics.median(rates):,.0f} items/s; raw SQLite upsert loop, same "
        f"schema and pragmas: median {statistics.median(ceilings):,.0f} rows/s; "
        f"hiscrm / raw: median {statistics.median(ratios):.0%} "
        f"(runs: {', '.join(f'{r:.0%}' for r in ratios)})"
    )
    # Wall-clock ratios swing with other load on the host; CPU time per item much less.
    print(
        f"raw loop's CPU per row / master's CPU per item: median "
        f"{statistics.median(cpu_ratios):.0%} (runs: {', '.join(f'{r:.0%}' for r in cpu_ratios)})"
    )
    if args.only == "throughput":
        return
    print(summary("new inbound message -> readable, idle", latency(args.samples, None)))
    accounts = args.workers * args.accounts_per_worker
    half = statistics.median(rates) / 2 / accounts
    load = (args.workers, args.accounts_per_worker)
    print(
        summary(
            f"... beside {half * accounts:,.0f} items/s (half)",
            latency(args.samples, (*load, half)),
        )
    )
    print(summary("... beside the flat-out load", latency(args.samples, (*load, 0.0))))
    for result in bytes_per_change():
        print(
            f"one changed item in an account of {result['items']:>7,} items: "
            f"{result['bytes']:,} bytes on the pipe "
            f"(filling the account took {result['fill_s']} s)"
        )


if __name__ == "__main__":
    main()
