"""Hostile connections: what thousands of half-open connections cost the master.

A master with 2 workers (accounts that do nothing, heartbeats every 0.2 s), started
with a soft fd limit of ``--master-fd-limit`` (1024, a common default; the master raises
it to the hard limit itself). An attacker process on the same machine opens
``--connections`` connections, each sending half a request head and then nothing, as
fast as it can:

* burst: all of them at once, then held for ``--seconds``;
* churn: for ``--seconds``, a new one whenever it can, closing its oldest beyond
  ``--connections``, so the master keeps accepting and closing.

Meanwhile, every 0.25 s, ``/healthz`` on a new connection (time to the answer), the
workers' heartbeat ages (``/workers``), and, every 10 ms, the master's open fds. Then
how many lines ``master.log`` got, and how many the rate limit counted instead.

    python bench/hostile.py [--connections 2000] [--seconds 10] [--master-fd-limit 1024]
"""

import argparse
import json
import multiprocessing
import resource
import socket
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event
from typing import Any

import httpx
import psutil
from common import Log, machine, percentile, running_master

HALF_HEAD = b"GET /api/v1/healthz HTTP/1.1\r\nHost: hiscrm\r\n"
CONFIG = """
workers = 2
accounts_per_worker = 1
[api]
port = 0
[supervision]
heartbeat_interval_s = 0.2
heartbeat_timeout_s = 2
[[accounts]]
id = "quiet-1"
platform = "benchplatforms:Quiet"
[[accounts]]
id = "quiet-2"
platform = "benchplatforms:Quiet"
"""


def attack(
    address: tuple[str, int], connections: int, churn: bool, stop: Event, opened: Any
) -> None:
    """The attacker's process: half-open connections until told to stop."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, connections + 256), hard))
    held: deque[socket.socket] = deque()
    try:
        while not stop.is_set():
            if len(held) >= connections:
                if not churn:
                    stop.wait(0.05)
                    continue
                held.popleft().close()
            try:
                sock = socket.create_connection(address, timeout=5)
                sock.sendall(HALF_HEAD)
            except OSError:
                continue  # refused, reset or timed out: try again
            held.append(sock)
            opened.value += 1
    finally:
        for sock in held:
            sock.close()


class Probe:
    """``/healthz`` answers, heartbeat ages and the master's fd count, sampled meanwhile."""

    def __init__(self, url: str, token: str, pid: int) -> None:
        self.url, self.token = url, token
        self.process = psutil.Process(pid)
        self.healthz_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self.heartbeat_ages: list[float] = []
        self.restarts: int = 0
        self.max_fds = 0
        self._stop = threading.Event()

    def run_for(self, seconds: float) -> None:
        fds = threading.Thread(target=self._sample_fds, daemon=True)
        fds.start()
        no_keep_alive = httpx.Limits(max_keepalive_connections=0)  # a new connection each
        with httpx.Client(base_url=self.url, limits=no_keep_alive, timeout=10) as http:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                began = time.perf_counter()
                self._probe(http)
                time.sleep(max(0.0, 0.25 - (time.perf_counter() - began)))
        self._stop.set()
        fds.join()

    def _probe(self, http: httpx.Client) -> None:
        began = time.perf_counter()
        try:
            response = http.get("/healthz")
            took = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                self.failures[f"HTTP {response.status_code}"] += 1
                return
            self.healthz_ms.append(took)
            auth = {"Authorization": f"Bearer {self.token}"}
            workers = http.get("/workers", headers=auth).json()["items"]
        except httpx.HTTPError as exc:
            self.failures[type(exc).__name__] += 1
            return
        self.heartbeat_ages += [w["heartbeat_age_s"] for w in workers]
        self.restarts = sum(w["restarts"] for w in workers)

    def _sample_fds(self) -> None:
        while not self._stop.is_set():
            self.max_fds = max(self.max_fds, self.process.num_fds())
            time.sleep(0.01)


@contextmanager
def soft_fd_limit(limit: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def phase(
    name: str, address: tuple[str, int], probe: Probe, log: Log, args: argparse.Namespace
) -> None:
    mark = len(log.poll())
    stop = multiprocessing.Event()
    opened = multiprocessing.Value("l", 0)
    attacker = multiprocessing.Process(
        target=attack, args=(address, args.connections, name == "churn", stop, opened)
    )
    began = time.monotonic()
    attacker.start()
    while opened.value < args.connections and time.monotonic() - began < 30:
        time.sleep(0.001)
    ready_s = time.monotonic() - began
    probe.run_for(args.seconds)
    stop.set()
    attacker.join(30)
    total_s = time.monotonic() - began
    time.sleep(11)  # the rate limit's window ends: its counts are written
    lines = log.poll()[mark:]
    suppressed = sum(e.get("suppressed", 0) for e in lines)
    by_event = Counter(e["event"] for e in lines)
    healthz = probe.healthz_ms or [float("nan")]
    limit = probe.process.rlimit(psutil.RLIMIT_NOFILE)[0]
    print(f"{name}: {opened.value:,} half-open connections opened in {total_s:.1f} s")
    print(f"  first {args.connections:,} open after    {ready_s:.2f} s")
    print(
        f"  /healthz (new connection each)  p50 {statistics.median(healthz):.1f} ms   "
        f"max {max(healthz):.1f} ms   n={len(probe.healthz_ms)}   failed {dict(probe.failures)}"
    )
    print(
        f"  worker heartbeat age            max {max(probe.heartbeat_ages, default=0):.2f} s"
        f"   p99 {percentile(probe.heartbeat_ages or [0.0], 0.99):.2f} s   "
        f"restarts {probe.restarts}"
    )
    print(f"  master fds                      max {probe.max_fds} (soft limit {limit})")
    print(
        f"  master.log                      {len(lines)} lines; {suppressed:,} more counted "
        f"in them; top: {by_event.most_common(4)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--master-fd-limit", type=int, default=1024)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with soft_fd_limit(args.master_fd_limit), running_master(CONFIG) as (master, state, log):
        for n in (1, 2):
            log.wait(event="worker state", worker=f"worker{n}", new="running")
        url = json.loads((state / "master.json").read_text())["api_url"]
        token = (state / "token").read_text().strip()
        api = httpx.URL(url)
        assert api.port is not None
        address = (api.host, api.port)
        print(f"master fds at rest: {psutil.Process(master.pid).num_fds()}")
        for name in ("burst", "churn"):
            phase(name, address, Probe(url, token, master.pid), log, args)


if __name__ == "__main__":
    main()
