"""API figures: latency on one kept-alive connection, then requests/s and latency of
``/status`` and of paged messages queries on a store of 1 000 000 messages, while 8
workers sync.

First an idle master (2 workers with accounts that do nothing): ``/healthz`` and
``/status``, one request after another on one kept-alive connection. Then the loaded
master: the store is filled directly (schema from the master's own migration) with
1 000 000 messages of an account that no worker runs (``accounts_per_worker`` is full),
so no worker has to load it; 8 other accounts, one per worker, sync new messages at
``--sync-rate`` items/s each meanwhile. The same one-connection figures again, then
``--clients`` concurrent connections. The load generator (httpx; asyncio for the
concurrent runs) runs on the same machine and competes for its CPU; its own cost per
request is in every figure.

    python bench/api.py [--messages 1000000] [--seconds 10] [--clients 8]
"""

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx
from common import machine, percentile, running_master

from hiscrm.master.data import sqlite_schema

IDLE_CONFIG = """
workers = 2
accounts_per_worker = 1
[api]
port = 0
[[accounts]]
id = "quiet-1"
platform = "benchplatforms:Quiet"
[[accounts]]
id = "quiet-2"
platform = "benchplatforms:Quiet"
"""

CONFIG = """
workers = 8
accounts_per_worker = 1
[api]
port = 0
[supervision]
heartbeat_timeout_s = 60
[sync]
stale_after_s = 3600
{accounts}
[[accounts]]
id = "big"
platform = "benchplatforms:Flood"
"""


def fill(db: Path, messages: int) -> None:
    conn = sqlite_schema.connect(db)
    sqlite_schema.migrate(conn)
    base = 1_763_848_020_000
    rows = (
        (
            "big",
            f"m{n:09d}",
            1,
            "0123456789abcdef",
            n + 1,
            base,
            f"conv-{n % 500}",
            "inbound",
            f"customer-{n % 500}",
            "A Customer",
            f"message {n}: is this still available?",
            base + n * 10,
        )
        for n in range(messages)
    )
    columns = (
        "account_id, id, version, hash, seq, synced_at, conversation_id, direction, "
        "sender_id, sender_name, text, sent_at"
    )
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO messages ({columns}) VALUES ({', '.join('?' * 12)})", rows)
    conn.execute(
        "INSERT INTO account_sync (id, acked_seq, last_sync_at) VALUES ('big', ?, ?)",
        (messages, base),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


async def load(
    url: str, token: str, paths: list[str], seconds: float, clients: int
) -> tuple[float, list[float], int]:
    """Requests/s, latencies (ms) and errors for GETs of ``paths`` (picked at random)."""
    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, limits=limits, timeout=30
    ) as http:

        async def client() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                began = time.perf_counter()
                response = await http.get(random.choice(paths))
                latencies.append((time.perf_counter() - began) * 1000)
                if response.status_code != 200:
                    errors += 1

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(clients)))
        took = time.monotonic() - began
    return len(latencies) / took, latencies, errors


def one_connection(
    url: str, token: str, path: str, seconds: float
) -> tuple[float, list[float], int]:
    """Requests/s, latencies (ms) and errors for GETs of ``path``, one after another on
    one kept-alive connection."""
    latencies: list[float] = []
    errors = 0
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as http:
        http.get(path)  # connect
        began = time.monotonic()
        deadline = began + seconds
        while time.monotonic() < deadline:
            start = time.perf_counter()
            response = http.get(path)
            latencies.append((time.perf_counter() - start) * 1000)
            errors += response.status_code != 200
        took = time.monotonic() - began
    return len(latencies) / took, latencies, errors


def report(name: str, rate: float, latencies: list[float], errors: int) -> str:
    return (
        f"{name:<58} {rate:7.1f} req/s   p50 {statistics.median(latencies):7.2f} ms   "
        f"p99 {percentile(latencies, 0.99):7.2f} ms   errors {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--sync-rate", type=float, default=500.0, help="items/s per syncing account"
    )
    args = parser.parse_args()

    syncing = "\n".join(
        f'[[accounts]]\nid = "sync-{n}"\nplatform = "benchplatforms:Flood"\n'
        f"options = {{ rate = {args.sync_rate}, batch = 10 }}\n"
        for n in range(8)
    )
    config = CONFIG.format(accounts=syncing)
    print(f"machine: {machine()}")
    with running_master(IDLE_CONFIG) as (_, state, log):
        for n in (1, 2):
            log.wait(event="worker state", worker=f"worker{n}", new="running")
        url = json.loads((state / "master.json").read_text())["api_url"]
        token = (state / "token").read_text().strip()
        print("idle master (2 workers, nothing to sync); one client")
        for path in ("/healthz", "/status"):
            figures = one_connection(url, token, path, args.seconds)
            print(report(f"GET {path}, one kept-alive connection", *figures))
    with running_master(config, prepare=lambda state: fill(state / "hiscrm.db", args.messages)) as (
        _,
        state,
        log,
    ):
        for n in range(1, 9):
            log.wait(event="worker state", worker=f"worker{n}", new="running")
        url = json.loads((state / "master.json").read_text())["api_url"]
        token = (state / "token").read_text().strip()
        time.sleep(3)  # syncing under way
        alone = {
            path: one_connection(url, token, path, args.seconds) for path in ("/healthz", "/status")
        }
        status = asyncio.run(load(url, token, ["/status"], args.seconds, args.clients))
        pages = [
            f"/accounts/big/messages?limit=50&offset={offset}"
            for offset in random.Random(1).sample(range(0, 100_000, 50), 200)
        ]
        paged = asyncio.run(load(url, token, pages, args.seconds, args.clients))
        filtered = [f"/accounts/big/messages?limit=50&conversation_id=conv-{n}" for n in range(500)]
        by_conversation = asyncio.run(load(url, token, filtered, args.seconds, args.clients))
        committed = log.poll()
    syncing_text = f"8 workers syncing {args.sync_rate:.0f} items/s each"
    print(
        f"store: {args.messages:,} messages in one account, {syncing_text}; {args.clients} clients"
    )
    for path, figures in alone.items():
        print(report(f"GET {path}, one kept-alive connection", *figures))
    print(report(f"GET /status, {args.clients} clients", *status))
    print(report(f"GET messages page (limit 50, offset < 100k), {args.clients} clients", *paged))
    print(
        report(
            f"GET one conversation's messages (limit 50), {args.clients} clients", *by_conversation
        )
    )
    errors = [e for e in committed if e.get("level") == "error"]
    print(f"errors in master.log during the run: {len(errors)}")


if __name__ == "__main__":
    main()
