"""The API's front door against hostile and careless clients, on a real master over real
sockets: thousands of half-open connections, requests that never finish arriving,
keep-alive latency (Nagle), and log followers beyond their limit."""

import os
import resource
import select
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil
import pytest
from conftest import MasterFactory, make_config
from harness import Master, wait_until

from hiscrm.master.api.server import MIN_CONNECTIONS, connection_cap, fd_reserve

HALF_HEAD = b"GET /api/v1/healthz HTTP/1.1\r\nHost: hiscrm\r\n"  # no blank line: never ends
FULL_HEAD = HALF_HEAD + b"\r\n"
TICKER = "testplatforms.behaviours:Ticker"


def address(master: Master) -> tuple[str, int]:
    url = httpx.URL(master.api_url())
    assert url.port is not None
    return url.host, url.port


@contextmanager
def soft_fd_limit(limit: int) -> Iterator[None]:
    """This process's soft RLIMIT_NOFILE set to ``limit`` (within the hard limit) for a while;
    children started meanwhile keep it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the master sends until it closes the connection, and when that was."""
    began = time.monotonic()
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"still open after {timeout} s; received {data[:200]!r}") from None
    return data, time.monotonic() - began


def template_pid(master: Master) -> int:
    return int(master.log.wait_for(20, event="fork template ready")["pid"])


@pytest.mark.timeout(5)
def test_the_connection_cap_leaves_room_for_everything_else() -> None:
    reserve = fd_reserve(workers=2, log_followers=16)
    assert 256 < reserve < 1024 - 500  # a 1024 limit still serves hundreds of connections
    assert connection_cap(1000, 1024, reserve) == 1024 - reserve
    assert connection_cap(1000, 524_288, reserve) == 1000  # the configured number
    assert fd_reserve(workers=512, log_followers=16) > 512 * 2  # a pipe and a pidfd each
    assert connection_cap(1000, 1024, fd_reserve(512, 16)) == MIN_CONNECTIONS


@pytest.mark.timeout(120)
def test_thousands_of_half_open_connections_leave_the_master_working(
    start_master: MasterFactory,
) -> None:
    n = 2000
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard < n + 200:
        pytest.skip(f"needs {n + 200} file descriptors, the hard limit is {hard}")
    with soft_fd_limit(1024):  # the master starts with the common default soft limit
        master = start_master(make_config(workers=2))
    pids = master.wait_all_running(["worker1", "worker2"])
    template = template_pid(master)
    host, port = address(master)
    process = psutil.Process(master.pid)
    mark = master.mark()
    hostile: list[socket.socket] = []
    fds_seen: list[tuple[int, int]] = []  # (fds open, soft limit) while under attack
    with soft_fd_limit(n + 200):
        try:
            for _ in range(n):
                sock = socket.create_connection((host, port), timeout=10)
                hostile.append(sock)
                sock.sendall(HALF_HEAD)
            began = time.monotonic()
            answer = None
            while answer is None and time.monotonic() - began < 2.0:
                fds_seen.append((process.num_fds(), process.rlimit(psutil.RLIMIT_NOFILE)[0]))
                try:
                    answer = httpx.get(f"{master.api_url()}/healthz", timeout=2.0)
                except httpx.TransportError:
                    continue
            assert answer is not None, "/healthz did not answer within 2 s"
            assert answer.status_code == 200, answer.text
            fds_seen.append((process.num_fds(), process.rlimit(psutil.RLIMIT_NOFILE)[0]))
            with master.http(timeout=10) as http:  # a worker start still finds its fds
                restarted = http.post("/workers/worker2/restart")
                assert restarted.status_code == 200, restarted.text
                workers = {w["id"]: w for w in http.get("/workers").json()["items"]}
        finally:
            for sock in hostile:
                sock.close()
    assert all(fds < limit - 100 for fds, limit in fds_seen), fds_seen
    assert workers["worker1"]["pid"] == pids["worker1"]
    assert workers["worker1"]["restarts"] == 0
    assert workers["worker2"]["pid"] == restarted.json()["worker"]["pid"] != pids["worker2"]
    assert all(w["state"] == "running" and w["heartbeat_age_s"] < 1.5 for w in workers.values())
    assert process.children()  # still supervising
    assert psutil.Process(template).status() != psutil.STATUS_ZOMBIE
    assert not master.log.find(event="fork template died; starting a new one")

    # The flood is in master.log as a few lines and a count, not a line per connection.
    summary = master.log.wait_for(20, after=mark, event="repeated log lines suppressed")
    assert summary["suppressed"] > 0
    flood = [e for e in master.log.refresh()[mark:] if e["level"] in ("warning", "error")]
    assert len(flood) < 100, [e["event"] for e in flood[:20]]
    assert not [e for e in flood if e["level"] == "error"], flood[:3]
    with master.http() as http:
        assert http.get("/healthz").status_code == 200


@pytest.mark.timeout(60)
def test_a_request_that_does_not_arrive_in_time_is_closed(start_master: MasterFactory) -> None:
    timeout_s = 1.0
    master = start_master(
        make_config(workers=1, api={"port": 0, "request_read_timeout_s": timeout_s})
    )
    host, port = address(master)

    def connect() -> socket.socket:
        return socket.create_connection((host, port), timeout=10)

    with connect() as half:  # half a head, then nothing
        half.sendall(HALF_HEAD)
        data, took = read_until_closed(half, 10)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert b"no whole request within 1 s" in data
    assert timeout_s * 0.8 < took < timeout_s + 2

    with connect() as silent:  # connects and never sends
        data, took = read_until_closed(silent, 10)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert took < timeout_s + 2

    with connect() as trickle:  # a byte at a time does not move the deadline
        began = time.monotonic()
        closed_after = None
        for byte in HALF_HEAD * 10:
            trickle.sendall(bytes([byte]))
            readable, _, _ = select.select([trickle], [], [], 0.1)
            if readable:
                closed_after = time.monotonic() - began
                break
        assert closed_after is not None
        assert closed_after < timeout_s + 2
        assert read_until_closed(trickle, 10)[0].startswith(b"HTTP/1.1 408 ")

    with connect() as kept:  # a second request on a kept-alive connection is held to it too
        kept.sendall(FULL_HEAD)
        kept.settimeout(10)
        first = b""
        while b'"status":"ok"' not in first:
            first += kept.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        kept.sendall(HALF_HEAD)
        data, took = read_until_closed(kept, 10)
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert took < timeout_s + 2

    with master.http() as http:  # and whole requests are still answered
        assert http.get("/healthz").status_code == 200
    timeouts = master.log.find(event="API connection closed: no whole request in time")
    assert len(timeouts) == 4, timeouts


@pytest.mark.timeout(60)
def test_requests_on_a_kept_alive_connection_are_not_held_back(
    start_master: MasterFactory,
) -> None:
    """Nagle's algorithm plus the client's delayed ACK held every response on a kept-alive
    connection back by ~40 ms; with TCP_NODELAY a request takes about a millisecond. A
    functional check with a generous bound, not a benchmark (that is bench/api.py)."""
    master = start_master(make_config(workers=1))
    master.wait_running("worker1")
    took: dict[str, list[float]] = {"/healthz": [], "/status": []}
    with master.http() as http:
        for path, times in took.items():
            http.get(path).raise_for_status()  # the connection is open and warm
            for _ in range(50):
                began = time.perf_counter()
                http.get(path).raise_for_status()
                times.append((time.perf_counter() - began) * 1000)
        connections = master.log.find(event="API connection closed: no whole request in time")
    medians = {path: statistics.median(times) for path, times in took.items()}
    assert all(median < 20 for median in medians.values()), medians
    assert not connections


class FollowStream:
    """``logs?follow=true`` over a raw socket: the status line, then whatever arrives."""

    def __init__(self, master: Master, worker: str) -> None:
        self.sock = socket.create_connection(address(master), timeout=10)
        self.sock.sendall(
            f"GET /api/v1/workers/{worker}/logs?follow=true&tail=0 HTTP/1.1\r\n"
            f"Host: hiscrm\r\nAuthorization: Bearer {master.token}\r\n\r\n".encode()
        )
        self.data = b""

    def read_until(self, needle: bytes, timeout: float = 10) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {needle!r} within {timeout} s; got {self.data[:300]!r}"
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            assert chunk, f"closed before {needle!r}; got {self.data[:300]!r}"
            self.data += chunk
        return self.data

    def ticks_after(self, count: int) -> None:
        """Wait until ``count`` more tick lines than seen so far arrive."""
        seen = self.data.count(b"tick ")
        deadline = time.monotonic() + 10
        while self.data.count(b"tick ") < seen + count:
            assert time.monotonic() < deadline, f"no new ticks; got {self.data[-300:]!r}"
            self.sock.settimeout(deadline - time.monotonic())
            self.data += self.sock.recv(65536)

    def close(self) -> None:
        self.sock.close()


def inotify_instances(pid: int) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
        except OSError:  # closed meanwhile
            continue
    return count


@pytest.mark.timeout(60)
def test_log_followers_beyond_the_limit_are_refused(start_master: MasterFactory) -> None:
    accounts = [{"id": "acc-1", "platform": TICKER, "options": {"interval_s": 0.05}}]
    master = start_master(
        make_config(workers=1, accounts=accounts, api={"port": 0, "max_log_followers": 3})
    )
    master.wait_running("worker1")
    followers = [FollowStream(master, "worker1") for _ in range(3)]
    try:
        for follower in followers:
            assert follower.read_until(b"\r\n").startswith(b"HTTP/1.1 200 ")
            follower.ticks_after(3)
        assert inotify_instances(master.pid) == 1  # one watcher for the logs directory

        extra = FollowStream(master, "worker1")
        head = extra.read_until(b"try again later")
        extra.close()
        assert head.startswith(b"HTTP/1.1 503 "), head
        assert b"max_log_followers" in head

        with master.http() as http:  # the token check is not starved meanwhile
            began = time.monotonic()
            assert http.get("/status").status_code == 200
            assert time.monotonic() - began < 2.0

        followers.pop().close()  # a place frees when its client leaves
        with master.http() as http:

            def admitted() -> bool:
                with http.stream(
                    "GET", "/workers/worker1/logs", params={"follow": "true", "tail": 0}
                ) as response:
                    return response.status_code == 200

            wait_until(admitted, 10, "a follower admitted after one left")
        for follower in followers:
            follower.ticks_after(3)  # the others go on
    finally:
        for follower in followers:
            follower.close()
    assert not master.log.find(logger="watchfiles.main")  # no "N changes detected" lines
