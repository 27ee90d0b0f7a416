"""sd_notify: what the master tells systemd (READY, RELOADING, STOPPING), in order, over a
unix datagram socket the test listens on, as systemd would with ``Type=notify``."""

import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import structlog
from conftest import MasterFactory, make_config
from harness import Master
from sse_reader import SseReader
from structlog.testing import capture_logs

from hiscrm.error_counter import ErrorCounter
from hiscrm.master.service_notify import SdNotify, ServiceStatus


class Listener:
    """The service manager's end: a unix datagram socket, read with a deadline."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)

    def next(self, timeout: float = 20.0) -> dict[str, str]:
        """The next message, as its KEY=value lines."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no notification within {timeout}s") from None
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    def nothing(self, timeout: float = 0.3) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected notification {data!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    listening = Listener(str(tmp_path / "notify.sock"))
    yield listening
    listening.close()


# --- the protocol ---------------------------------------------------------------------------


def test_sends_one_datagram_per_message_to_an_abstract_socket() -> None:
    listening = Listener(f"@hiscrm-test-{uuid.uuid4().hex}")
    try:
        notify = SdNotify(listening.address, structlog.get_logger(), ErrorCounter())
        assert notify.send("READY=1", "STATUS=2/2 workers running")
        assert notify.send("STOPPING=1")
        assert listening.next(1) == {"READY": "1", "STATUS": "2/2 workers running"}
        assert listening.next(1) == {"STOPPING": "1"}
        notify.close()
    finally:
        listening.close()


def test_without_notify_socket_nothing_is_sent_and_workers_do_not_inherit_it(
    monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not SdNotify.from_environment(structlog.get_logger(), ErrorCounter()).send("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", listener.address)
    notify = SdNotify.from_environment(structlog.get_logger(), ErrorCounter())
    assert "NOTIFY_SOCKET" not in os.environ  # taken out: children do not get it
    assert notify.send("READY=1")
    assert listener.next(1) == {"READY": "1"}


def test_a_failing_send_is_logged_once_at_error_level_and_counted(tmp_path: Path) -> None:
    errors = ErrorCounter()
    notify = SdNotify(str(tmp_path / "nobody-listens"), structlog.get_logger(), errors)
    with capture_logs() as logs:
        assert not notify.send("READY=1")
        assert not notify.send("STOPPING=1")
    assert [e["log_level"] for e in logs] == ["error"]
    assert logs[0]["address"] == str(tmp_path / "nobody-listens")
    assert logs[0]["exc_info"] is not None
    assert (notify.failures_total, errors.total) == (2, 2)


# --- what is said when ----------------------------------------------------------------------


class Recorded:
    def __init__(self) -> None:
        self.messages: list[tuple[str, ...]] = []

    def send(self, *fields: str) -> bool:
        self.messages.append(fields)
        return True

    def keys(self) -> list[str]:
        return [fields[0] for fields in self.messages]


def status(recorded: Recorded) -> ServiceStatus:
    return ServiceStatus(recorded, lambda: "2/2 workers running", 4242, lambda: 123)  # type: ignore[arg-type]


def test_ready_once_every_first_worker_has_settled_running_or_not() -> None:
    recorded = Recorded()
    service = status(recorded)
    for worker in ("worker1", "worker2"):
        service("worker.state", {"worker": worker, "state": "starting"})
    service.started(["worker1", "worker2"])
    service("worker.state", {"worker": "worker1", "state": "running"})
    assert recorded.messages == []
    service("worker.state", {"worker": "worker2", "state": "backoff"})  # failed: still ready
    assert recorded.messages == [("READY=1", "MAINPID=4242", "STATUS=2/2 workers running")]
    service("worker.state", {"worker": "worker2", "state": "running"})
    assert len(recorded.messages) == 1  # once


def test_reloading_then_ready_around_a_reload_and_nothing_after_stopping() -> None:
    recorded = Recorded()
    service = status(recorded)
    service("reload.started", {"why": "SIGHUP"})  # before ready: not said
    service("reload.ended", {"why": "SIGHUP", "error": None})
    service.started(["worker1"])
    service("worker.state", {"worker": "worker1", "state": "running"})
    service("reload.started", {"why": "SIGHUP"})
    service("reload.ended", {"why": "SIGHUP", "error": "the new worker1 did not start"})
    service("reload.started", {"why": "requested"})
    service("master.stopping", {"reason": "SIGTERM"})
    service("reload.ended", {"why": "requested", "error": "interrupted by shutdown"})
    service("worker.state", {"worker": "worker1", "state": "stopped"})
    assert recorded.keys() == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "STOPPING=1"]
    assert recorded.messages[1] == (
        "RELOADING=1",
        "MONOTONIC_USEC=123",
        "STATUS=reloading the workers (SIGHUP); 2/2 workers running",
    )
    assert recorded.messages[2][1].startswith("STATUS=reload failed: the new worker1 did not")
    assert recorded.messages[4] == ("STOPPING=1", "STATUS=shutting down (SIGTERM)")


# --- a real master --------------------------------------------------------------------------


def running_events(master: Master) -> int:
    return len(master.log.find(event="worker state", new="running"))


@pytest.mark.timeout(90)
def test_a_master_notifies_ready_reloading_ready_stopping_in_order(
    start_master: MasterFactory, listener: Listener
) -> None:
    master = start_master(
        make_config(workers=2, events={"heartbeat_s": 0.2}),
        env={"NOTIFY_SOCKET": listener.address},
    )
    ready = listener.next()
    assert ready["READY"] == "1"
    assert ready["MAINPID"] == str(master.pid)
    assert running_events(master) == 2  # told once both workers run, not before
    assert ready["STATUS"] == "2/2 workers running"
    pids = master.wait_all_running(["worker1", "worker2"])
    for pid in (*pids.values(), master.log.find(event="fork template ready")[0]["pid"]):
        assert "NOTIFY_SOCKET" not in psutil.Process(pid).environ()

    mark = master.mark()
    before_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert master.proc is not None
    master.proc.send_signal(signal.SIGHUP)
    reloading = listener.next()
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) >= before_us
    assert reloading["STATUS"].startswith("reloading the workers (SIGHUP)")
    again = listener.next()
    assert again == {"READY": "1", "STATUS": "reloaded; 2/2 workers running"}
    master.log.wait_for(1, after=mark, event="reload complete")  # logged before it was said
    stream = SseReader(master.api_url(), master.token, {"types": "reload"}, last_event_id=0)
    try:  # the same moments as events (/events, hooks)
        events = stream.wait(lambda es: len(es) >= 2, 10, "the reload's events")
    finally:
        stream.close()
    assert [(e.name, e.data["why"]) for e in events] == [
        ("reload.started", "SIGHUP"),
        ("reload.ended", "SIGHUP"),
    ]
    assert events[1].data["error"] is None

    with master.http() as http:
        answer = http.post("/shutdown")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"pid": master.pid, "workers": 2, "reason": "requested"}
    assert listener.next() == {"STOPPING": "1", "STATUS": "shutting down (requested)"}
    assert master.proc.wait(30) == 0
    listener.nothing()
    assert master.log.find(event="master stopped", reason="requested")
