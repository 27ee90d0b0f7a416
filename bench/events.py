"""Event stream figures (``GET /events``).

1. Latency: a platform upserts a new inbound message every 20 ms with the wall-clock
   time in its text; one SSE client follows ``item.message`` of that account and notes
   when each event arrives: from the upsert (the text), and from the commit (the item's
   ``synced_at``, set just before the commit; millisecond resolution). Idle, then beside
   half of the sustained sync load of ``bench/sync.py`` (measured first, in this run).
2. Throughput: accounts upsert flat out; one client follows every item event; events/s
   it receives beside items/s the store commits (the ratio is the figure).
3. Idle clients: the master's CPU (% of one core, user + system) over ``--idle-seconds``
   with 100 SSE clients connected and nothing happening, beside the same master with none.

    python bench/events.py [--samples 200] [--seconds 10] [--idle-seconds 30]
"""

import argparse
import json
import socket
import statistics
import time

import httpx
import psutil
from common import api_of, machine, running_master, summary
from sync import BASE, accounts_toml, committed, throughput, wait_for_db
from sync import latency as readable_latency


def sse_events(url: str, token: str, params: dict[str, str]) -> "httpx.Response":
    client = httpx.Client(timeout=httpx.Timeout(10.0, read=60.0))
    request = client.build_request(
        "GET", f"{url}/events", params=params, headers={"Authorization": f"Bearer {token}"}
    )
    return client.send(request, stream=True)


def latency(samples: int, load_rate: float | None) -> tuple[list[float], list[float]]:
    """Milliseconds: upsert -> event received, commit -> event received."""
    accounts = [("ping", "benchplatforms:Pinger", {"interval_s": 0.02})]
    workers = 1
    if load_rate is not None:
        workers = 2
        accounts += [
            (f"flood-{n}", "benchplatforms:Flood", {"batch": 50, "rate": load_rate})
            for n in range(8)
        ]
    with running_master(BASE.format(workers=workers) + accounts_toml(accounts)) as (_, state, log):
        log.wait(event="account assigned", account_id="ping")
        url, token = api_of(state)
        time.sleep(2.0 if load_rate else 0.5)
        from_upsert: list[float] = []
        from_commit: list[float] = []
        response = sse_events(url, token, {"types": "item.message", "account": "ping"})
        try:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                now = time.time()
                item = json.loads(line[6:])
                from_upsert.append((now - float(item["text"])) * 1000)
                from_commit.append(now * 1000 - item["synced_at"])
                if len(from_upsert) >= samples:
                    break
        finally:
            response.close()
    return from_upsert, from_commit


def follow_rate(seconds: float) -> tuple[float, float]:
    """(events/s one client received, items/s the store committed) over ``seconds``."""
    flood = [(f"flood-{n}", "benchplatforms:Flood", {"batch": 200}) for n in range(8)]
    with running_master(BASE.format(workers=2) + accounts_toml(flood)) as (_, state, log):
        for w in (1, 2):
            log.wait(event="worker state", worker=f"worker{w}", new="running")
        url, token = api_of(state)
        db = state / "hiscrm.db"
        wait_for_db(db)
        time.sleep(3.0)
        response = sse_events(url, token, {"types": "item"})
        received = 0
        try:
            lines = response.iter_lines()
            first_db, t0 = committed(db), time.monotonic()
            for line in lines:
                if line.startswith("data: "):
                    received += 1
                if time.monotonic() - t0 >= seconds:
                    break
            last_db, t1 = committed(db), time.monotonic()
        finally:
            response.close()
    return received / (t1 - t0), (last_db - first_db) / (t1 - t0)


def idle_cpu(clients: int, seconds: float) -> float:
    accounts = [("quiet", "benchplatforms:Quiet", {})]
    with running_master(BASE.format(workers=1) + accounts_toml(accounts)) as (master, state, log):
        log.wait(event="account assigned", account_id="quiet")
        url, token = api_of(state)
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        sockets = []
        for _ in range(clients):
            sock = socket.create_connection((host, int(port)))
            sock.sendall(
                f"GET /api/v1/events HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {token}\r\n\r\n".encode()
            )
            sockets.append(sock)
        for sock in sockets:  # each answered with the stream's head
            sock.settimeout(10)
            assert b"200" in sock.recv(4096)
        time.sleep(5.0)
        me = psutil.Process(master.pid)
        before, t0 = me.cpu_times(), time.monotonic()
        time.sleep(seconds)
        after, t1 = me.cpu_times(), time.monotonic()
        for sock in sockets:
            sock.close()
    used = (after.user + after.system) - (before.user + before.system)
    return used / (t1 - t0) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    upsert, commit = latency(args.samples, None)
    print(summary("upsert -> SSE client, idle", upsert))
    print(summary("commit -> SSE client, idle (1 ms steps)", commit))
    rate = throughput(2, 4, args.seconds)
    half = rate / 2 / 8
    upsert, commit = latency(args.samples, half)
    print(f"sustained sync (bench/sync.py, this run): {rate:,.0f} items/s")
    print(summary(f"upsert -> SSE client, beside {rate / 2:,.0f} items/s", upsert))
    print(summary(f"commit -> SSE client, beside {rate / 2:,.0f} items/s", commit))
    polled = readable_latency(args.samples, (2, 4, half))
    print(summary(f"upsert -> readable (polling SQLite), beside {rate / 2:,.0f}", polled))
    print(
        f"ratio: upsert -> SSE p50 / upsert -> readable p50 under load = "
        f"{statistics.median(upsert) / statistics.median(polled):.2f}"
    )
    followed, stored = follow_rate(args.seconds)
    print(
        f"one client following every item event: {followed:,.0f} events/s while the store "
        f"committed {stored:,.0f} items/s (ratio {followed / stored:.2f})"
    )
    none = idle_cpu(0, args.idle_seconds)
    hundred = idle_cpu(100, args.idle_seconds)
    print(
        f"idle master CPU: {hundred:.2f} % of one core with 100 SSE clients, "
        f"{none:.2f} % with none (difference {hundred - none:+.2f} points)"
    )


if __name__ == "__main__":
    main()
