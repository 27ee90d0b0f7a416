"""Reply figures: an API request to its reply being ``sent``, and sends per second.

1. Latency: ``POST /accounts/{id}/messages`` with the demo platform (its ``send``
   upserts the outbound message and returns its id); the time until the reply's
   ``reply.state`` event says ``sent`` on ``GET /events``, p50/p95 of ``--samples``,
   one at a time. Idle, then beside half of the sustained sync load of ``bench/sync.py``
   (measured first, in this run). For scale: a ``GET /status`` round trip on the same
   master.
2. Throughput: 8 demo accounts on 2 workers; ``--burst`` replies posted as fast as one
   client can (spread over each account's conversations) while the workers are stopped;
   then the workers start, and the time until every one is ``sent`` gives replies per
   second, beside the requests per second the API took.
3. Sustained: the same 8 accounts running; ``--clients`` (4) clients post replies
   round-robin over the accounts for ``--seconds``; sent per second over the whole run
   (first request to last ``sent``) and POST -> ``sent`` p50/p95 meanwhile, beside the
   requests per second the clients got through.

    python bench/replies.py [--samples 200] [--burst 2000] [--clients 4] [--seconds 10]
"""

import argparse
import json
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import httpx
from common import api_of, machine, running_master, summary
from sync import BASE, accounts_toml, throughput


class SentWatcher:
    """Follows ``reply.state`` events; notes when each request id became ``sent``."""

    def __init__(self, url: str, token: str) -> None:
        self.sent: dict[str, float] = {}
        self.ready = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=None))
        request = self._client.build_request(
            "GET",
            f"{url}/events",
            params={"types": "reply.state"},
            headers={"Authorization": f"Bearer {token}"},
        )
        self._response = self._client.send(request, stream=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for line in self._response.iter_lines():
                if line.startswith("retry:"):
                    self.ready.set()
                if line.startswith("data: "):
                    entry = json.loads(line[6:])
                    if entry["state"] == "sent":
                        self.sent[entry["request_id"]] = time.perf_counter()
        except httpx.HTTPError:
            return

    def close(self) -> None:
        self._response.close()
        self._client.close()


def demo_accounts(n: int, rate: float = 1.0) -> list[tuple[str, str, dict[str, object]]]:
    return [(f"demo-{i}", "demo", {"rate": rate, "seed": i}) for i in range(n)]


def latency(samples: int, load_rate: float | None) -> tuple[list[float], list[float]]:
    accounts = demo_accounts(1)
    workers = 1
    if load_rate is not None:
        workers = 2
        accounts += [
            (f"flood-{n}", "benchplatforms:Flood", {"batch": 50, "rate": load_rate})
            for n in range(8)
        ]
    with running_master(BASE.format(workers=workers) + accounts_toml(accounts)) as (_, state, log):
        log.wait(event="account assigned", account_id="demo-0")
        url, token = api_of(state)
        watcher = SentWatcher(url, token)
        took, round_trips = [], []
        try:
            watcher.ready.wait(10)
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
                while not http.get("/accounts/demo-0/conversations/conv-1").is_success:
                    time.sleep(0.05)
                time.sleep(2.0 if load_rate else 0.5)
                for n in range(samples):
                    request_id = f"lat-{n}"
                    body = {
                        "conversation_id": f"conv-{n % 5}",
                        "text": "thanks!",
                        "request_id": request_id,
                    }
                    began = time.perf_counter()
                    assert http.post("/accounts/demo-0/messages", json=body).status_code == 202
                    deadline = time.monotonic() + 30
                    while request_id not in watcher.sent:
                        if time.monotonic() > deadline:
                            raise TimeoutError(request_id)
                        time.sleep(0.0002)
                    took.append((watcher.sent[request_id] - began) * 1000)
                    began = time.perf_counter()
                    http.get("/status")
                    round_trips.append((time.perf_counter() - began) * 1000)
        finally:
            watcher.close()
    return took, round_trips


@contextmanager
def eight_accounts() -> Iterator[tuple[str, dict[str, str], SentWatcher]]:
    """A master with 8 demo accounts on 2 workers, their conversations stored: its API
    URL, the headers with its token, and a watcher of its ``sent`` events."""
    accounts = demo_accounts(8)
    with running_master(BASE.format(workers=2) + accounts_toml(accounts)) as (_, state, log):
        for n in range(8):
            log.wait(event="account assigned", account_id=f"demo-{n}")
        url, token = api_of(state)
        watcher = SentWatcher(url, token)
        try:
            watcher.ready.wait(10)
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                for n in range(8):
                    while not http.get(f"/accounts/demo-{n}/conversations/conv-4").is_success:
                        time.sleep(0.05)
            yield url, headers, watcher
        finally:
            watcher.close()


def wait_sent(watcher: SentWatcher, request_ids: Iterable[str]) -> float:
    """When the last of these replies was ``sent`` (perf_counter)."""
    wanted = set(request_ids)
    deadline = time.monotonic() + 120
    while not wanted <= watcher.sent.keys():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(wanted & watcher.sent.keys())} of {len(wanted)} sent")
        time.sleep(0.005)
    return max(watcher.sent[r] for r in wanted)


def body(n: int, request_id: str) -> dict[str, str]:
    return {"conversation_id": f"conv-{(n // 8) % 5}", "text": "ok", "request_id": request_id}


def burst(count: int) -> tuple[float, float]:
    """(replies sent per second once the workers run, requests accepted per second).

    The replies are queued while the workers are stopped, then the workers start: the
    time from their start to the last ``sent`` is the outbox's own pace, not one
    client's."""
    with eight_accounts() as (url, headers, watcher):
        with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
            for worker in ("worker1", "worker2"):
                assert http.post(f"/workers/{worker}/stop").is_success
            began = time.perf_counter()
            for n in range(count):
                answer = http.post(f"/accounts/demo-{n % 8}/messages", json=body(n, f"b-{n}"))
                assert answer.status_code == 202, answer.text
            posted = time.perf_counter() - began
            started = time.perf_counter()
            for worker in ("worker1", "worker2"):
                assert http.post(f"/workers/{worker}/start").is_success
        done = wait_sent(watcher, (f"b-{n}" for n in range(count))) - started
    return count / done, count / posted


def sustained(clients: int, seconds: float) -> tuple[float, float, list[float]]:
    """(sent per second, requests per second, POST -> sent latencies in ms) while
    ``clients`` clients keep posting replies for ``seconds`` to 8 running accounts."""
    posted: dict[str, float] = {}
    lock = threading.Lock()
    with eight_accounts() as (url, headers, watcher):
        began = time.perf_counter()
        stop_at = began + seconds

        def client(c: int) -> None:
            with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
                n = 0
                while time.perf_counter() < stop_at:
                    request_id = f"s-{c}-{n}"
                    at = time.perf_counter()
                    answer = http.post(
                        f"/accounts/demo-{(c + n) % 8}/messages", json=body(n, request_id)
                    )
                    assert answer.status_code == 202, answer.text
                    with lock:
                        posted[request_id] = at
                    n += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        requests_s = len(posted) / (time.perf_counter() - began)
        last = wait_sent(watcher, posted)
        sent = dict(watcher.sent)
    took = [(sent[r] - at) * 1000 for r, at in posted.items()]
    return len(posted) / (last - began), requests_s, took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    took, trips = latency(args.samples, None)
    print(summary("POST reply -> sent, idle", took))
    print(summary("GET /status round trip (same master)", trips))
    rate = throughput(2, 4, args.seconds)
    took, trips = latency(args.samples, rate / 2 / 8)
    print(f"sustained sync (bench/sync.py, this run): {rate:,.0f} items/s")
    print(summary(f"POST reply -> sent, beside {rate / 2:,.0f} items/s", took))
    print(summary("GET /status round trip (same master)", trips))
    sent, accepted = burst(args.burst)
    print(
        f"{args.burst} replies queued over 8 accounts, then their 2 workers started: "
        f"{sent:,.0f} sent/s (the API took {accepted:,.0f} requests/s from one client)"
    )
    sent, requests_s, took = sustained(args.clients, args.seconds)
    print(
        f"sustained, {args.clients} clients over 8 running accounts for {args.seconds:g} s: "
        f"{sent:,.0f} sent/s, the clients got {requests_s:,.0f} requests/s through"
    )
    print(summary("POST reply -> sent, sustained", took))


if __name__ == "__main__":
    main()
