"""Memory that does not grow with history: a worker's memory per item it holds, and the
master's memory over a long run under load.

1. Worker: one worker, one account of a platform (``benchplatforms:Hold``) that upserts
   ``--items`` new messages per round, twice. Before the first round and after each,
   once every change is acknowledged, the worker's own resident memory (RSS, and its
   anonymous part: the heap) is written down; the growth divided by the items added is
   the cost of one item held. Then the worker is restarted: the account comes back from
   the store's digest (every item it holds), and its memory is measured again.
2. Master: ``--workers`` x ``--accounts-per-worker`` accounts of ``benchplatforms:Flood``
   at half of what ``bench/sync.py`` measures flat out (measured first, 10 s, unless
   ``--rate`` gives it), for ``--minutes``; every ``--every`` seconds the master's RSS,
   the workers' RSS and the items committed. With ``--retention-days`` (default 1) the
   flood's messages, stamped in the past, are beyond the store's retention: the workers
   forget them once acknowledged.

   ``--reference DIR`` runs the worker part first on another checkout (e.g. a worktree
   of the commit before this change) for a figure to compare from the same run.

    nice python bench/memory.py [--items 100000] [--minutes 30] [--rate N]
        [--reference DIR] [--skip-worker] [--skip-master]
"""

import argparse
import json
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from common import REPO, machine, running_master
from sync import BASE, accounts_toml, committed, throughput, wait_for_db

MB = 2**20


def status_memory(pid: int) -> dict[str, int]:
    """RSS and its anonymous part of a process, bytes (0 if it is gone)."""
    fields = {"VmRSS": "rss", "RssAnon": "anon"}
    found = {"rss": 0, "anon": 0}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return found
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            found[fields[name]] = int(value.split()[0]) * 1024
    return found


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_lines(path: Path, test: Any, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = read_lines(path)
        if test(lines):
            return lines
        time.sleep(0.2)
    raise TimeoutError(f"{path}: not there within {timeout} s: {read_lines(path)}")


def api(state: Path) -> httpx.Client:
    url = json.loads((state / "master.json").read_text())["api_url"]
    token = (state / "token").read_text().strip()
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def worker_per_item(items: int, code: Path) -> None:
    rounds = 2
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "hold.jsonl"
        options = {"per_round": items, "rounds": rounds, "result_file": str(result)}
        config = BASE.format(workers=1) + accounts_toml([("hold", "benchplatforms:Hold", options)])
        with running_master(config, code=code) as (_, state, log):
            log.wait(event="account assigned", account_id="hold", timeout=120)
            lines = wait_lines(result, lambda ls: len(ls) == rounds + 1, 600)
            with api(state) as client:
                client.post("/workers/worker1/restart").raise_for_status()
            lines = wait_lines(result, lambda ls: ls[-1]["stage"] == "loaded", 600)
    empty, *filled, loaded = lines
    print(
        f"worker ({code}), one account, empty: RSS {empty['rss'] / MB:.1f} MB "
        f"(heap {empty['anon'] / MB:.1f} MB, mapped files {empty['file'] / MB:.1f} MB)"
    )
    for line in filled:
        grew, heap = line["rss"] - empty["rss"], line["anon"] - empty["anon"]
        print(
            f"  {line['stage']}: {line['held']:,} items held: RSS {line['rss'] / MB:.1f} MB "
            f"(+{grew / MB:.1f}), heap +{heap / MB:.1f} MB, mapped files "
            f"{line['file'] / MB:.1f} MB: {grew / line['held']:.0f} bytes of RSS per item "
            f"({heap / line['held']:.0f} of heap); {grew / line['held'] * 100_000 / MB:.1f} MB "
            f"per 100,000 items"
        )
    print(
        f"  restarted, {loaded['held']:,} items known from the store's digest: RSS "
        f"{loaded['rss'] / MB:.1f} MB (heap {loaded['anon'] / MB:.1f} MB); "
        f"{(loaded['rss'] - empty['rss']) / loaded['held']:.0f} bytes per item over the "
        f"empty worker"
    )


def master_over_time(
    workers: int, per_worker: int, rate: float, minutes: float, every: float, days: float
) -> None:
    accounts = workers * per_worker
    flood = [
        (f"flood-{n}", "benchplatforms:Flood", {"batch": 50, "rate": rate / accounts})
        for n in range(accounts)
    ]
    retention = f"[retention]\nmessages = {days}\n" if days else ""
    config = BASE.format(workers=workers) + retention + accounts_toml(flood)
    print(
        f"master under {rate:,.0f} items/s ({workers} workers x {per_worker} accounts), "
        f"{minutes:g} min" + (f", messages kept {days:g} days" if days else "")
    )
    print(f"{'min':>6} {'master RSS':>11} {'heap':>8} {'workers RSS':>12} {'items':>12}")
    samples: list[tuple[float, int, int]] = []
    with running_master(config) as (master, state, log):
        for w in range(1, workers + 1):
            log.wait(event="worker state", worker=f"worker{w}", new="running", timeout=120)
        db = state / "hiscrm.db"
        wait_for_db(db)
        me = psutil.Process(master.pid)
        started = time.monotonic()
        deadline = started + minutes * 60
        next_at = started
        while time.monotonic() < deadline:
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += every
            elapsed = time.monotonic() - started
            own = status_memory(master.pid)
            kids = [p.pid for p in me.children() if "worker" in " ".join(p.cmdline())]
            workers_rss = sum(status_memory(pid)["rss"] for pid in kids)
            items = committed(db)
            samples.append((elapsed, own["rss"], workers_rss))
            print(
                f"{elapsed / 60:6.1f} {own['rss'] / MB:9.1f}MB {own['anon'] / MB:6.1f}MB "
                f"{workers_rss / MB:10.1f}MB {items:12,}",
                flush=True,
            )
        if master.poll() is not None:
            raise RuntimeError(f"the master exited with {master.returncode}")
        master.send_signal(signal.SIGTERM)
    third = [s for s in samples if s[0] >= samples[-1][0] * 2 / 3]
    span_min = (third[-1][0] - third[0][0]) / 60 or 1.0
    master_slope = (third[-1][1] - third[0][1]) / MB / span_min * 10
    workers_slope = (third[-1][2] - third[0][2]) / MB / span_min * 10
    marks = [m for m in (1, 5, 10, 20, 30, 60) if m * 60 <= samples[-1][0] + every]
    at = {m: min(samples, key=lambda s, m=m: abs(s[0] - m * 60)) for m in marks}
    print(
        "master RSS at "
        + ", ".join(f"{m} min {at[m][1] / MB:.1f} MB" for m in marks)
        + f"; peak {max(s[1] for s in samples) / MB:.1f} MB; over the last third "
        f"{master_slope:+.2f} MB per 10 min"
    )
    print(
        "workers' RSS at "
        + ", ".join(f"{m} min {at[m][2] / MB:.1f} MB" for m in marks)
        + f"; over the last third {workers_slope:+.2f} MB per 10 min"
    )
    print(f"median master RSS {statistics.median(s[1] for s in samples) / MB:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000, help="per round, worker part")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--accounts-per-worker", type=int, default=4)
    parser.add_argument("--rate", type=float, help="items/s in all (default: half flat out)")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--retention-days", type=float, default=1.0, help="0: keep forever")
    parser.add_argument("--reference", type=Path, help="another checkout, worker part")
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--skip-master", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if not args.skip_worker:
        if args.reference is not None:
            worker_per_item(args.items, args.reference.resolve())
        worker_per_item(args.items, REPO)
    if not args.skip_master:
        rate = args.rate
        if rate is None:
            flat = throughput(args.workers, args.accounts_per_worker, 10.0)
            rate = flat / 2
            print(f"flat out (bench/sync.py's load, one 10 s window): {flat:,.0f} items/s")
        master_over_time(
            args.workers,
            args.accounts_per_worker,
            rate,
            args.minutes,
            args.every,
            args.retention_days,
        )


if __name__ == "__main__":
    main()
