"""Hooks on a real master: a URL served by the test receives ``worker.exit``; a command
gets events on stdin; failing and hanging hooks are counted and change nothing else;
``update`` applies hooks. The delivery rules themselves: unit tests at the end."""

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import MasterFactory, make_config
from harness import metric, to_toml, wait_until

from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import StoredEvent
from hiscrm.master.events.hooks import HookQueue, envelope, retry_delay

pytestmark = pytest.mark.timeout(60)


class Receiver:
    """An HTTP server for hooks: ``mode`` ok (204), fail (500), hang (never answers
    until the test ends) or trickle (a 200 whose body comes a byte every 0.1 s, until
    the test ends)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bodies: list[dict[str, Any]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.bodies.append(json.loads(body))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode == "trickle":
                    self.trickle()
                    return
                self.send_response(204 if receiver.mode == "ok" else 500)
                self.end_headers()

            def trickle(self) -> None:
                """Each byte well within any per-read timeout; the whole never ends."""
                self.send_response(200)
                self.send_header("content-length", "1000")
                self.end_headers()
                try:
                    for _ in range(1000):
                        if receiver.release.wait(0.1):
                            return
                        self.wfile.write(b" ")
                        self.wfile.flush()
                except OSError:  # the hook gave up and closed the connection
                    return

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {mode: Receiver(mode) for mode in ("ok", "fail", "hang", "trickle")}
    yield made
    for receiver in made.values():
        receiver.close()


def hook_metric(text: str, name: str, hook: str) -> float:
    return metric(text, f'{name}{{hook="{hook}"}}')


def test_hooks_receive_events_and_failing_ones_change_nothing(
    start_master: MasterFactory, receivers: dict[str, Receiver], tmp_path: Path
) -> None:
    record = tmp_path / "from-command.jsonl"
    hooks = [
        {"name": "pager", "on": ["worker.exit"], "url": receivers["ok"].url},
        {
            "name": "broken",
            "on": ["worker"],
            "url": receivers["fail"].url,
            "retries": 1,
            "backoff_s": 0.05,
        },
        {"name": "stuck", "on": ["worker"], "url": receivers["hang"].url, "timeout_s": 0.3},
        {
            "name": "script",
            "on": ["worker.exit"],
            "command": [
                sys.executable,
                "-c",
                f"import sys; open({str(record)!r}, 'a').write("
                "sys.stdin.read() + '\\n'); print('noted')",
            ],
        },
        {
            "name": "sleeper",
            "on": ["worker.exit"],
            "command": ["sh", "-c", "echo before its time limit; exec sleep 60"],
            "timeout_s": 0.3,
        },
        {
            "name": "exits",
            "on": ["worker.exit"],
            "command": ["sh", "-c", "echo giving up; exit 1"],
            "retries": 0,
        },
        {
            "name": "slow",
            "on": ["worker.exit"],
            "url": receivers["trickle"].url,
            "timeout_s": 0.5,
            "retries": 0,
        },
    ]
    master = start_master(make_config(workers=1, hooks=hooks))
    pid = master.wait_running("worker1")
    mark = master.mark()
    os.kill(pid, signal.SIGKILL)
    new_pid = master.wait_running("worker1", after=mark)  # respawned as ever meanwhile
    assert new_pid != pid

    wait_until(lambda: len(receivers["ok"].bodies) >= 1, 10, "the pager got worker.exit")
    got = receivers["ok"].bodies[0]
    assert got["event"] == "worker.exit"
    assert got["data"]["pid"] == pid
    assert got["data"]["reason"] == "killed"
    assert isinstance(got["id"], int)
    wait_until(lambda: record.exists() and record.read_text().strip(), 10, "the command ran")
    line = json.loads(record.read_text().splitlines()[0])
    assert line["event"] == "worker.exit"
    assert line["id"] == got["id"]

    with master.http() as http:

        def failures(hook: str) -> float:
            return hook_metric(http.get("/metrics").text, "hiscrm_hook_failures_total", hook)

        wait_until(lambda: failures("broken") >= 2, 10, "broken: two failed attempts")
        wait_until(lambda: failures("stuck") >= 1, 10, "stuck: timed out")
        wait_until(lambda: failures("sleeper") >= 1, 10, "sleeper: killed at its limit")
        wait_until(lambda: failures("exits") >= 1, 10, "exits: a status of 1")
        # timeout_s bounds the whole attempt, not each read of a trickling answer.
        wait_until(lambda: failures("slow") >= 1, 5, "slow: over its time limit")
        text = http.get("/metrics").text
        assert hook_metric(text, "hiscrm_hook_deliveries_total", "pager") >= 1
        assert hook_metric(text, "hiscrm_hook_failures_total", "pager") == 0
        wait_until(  # counted once the command has exited, a moment after it wrote
            lambda: (
                hook_metric(http.get("/metrics").text, "hiscrm_hook_deliveries_total", "script")
                >= 1
            ),
            10,
            "script delivered",
        )
        # The master answers at once meanwhile, and says nothing is wrong with it.
        assert http.get("/healthz").json()["status"] == "ok"
    master.log.wait_for(event="hook delivery failed", hook="broken")
    master.log.wait_for(event="hook gave up on an event", hook="broken")
    master.log.wait_for(event="hook delivery failed", hook="sleeper")
    exited = master.log.wait_for(event="hook delivery failed", hook="exits")
    assert exited["error"] == "exited with status 1"
    assert exited["level"] == "error"
    slow = master.log.wait_for(event="hook delivery failed", hook="slow")
    assert slow["error"] == "no answer within 0.5 s"
    hooks_log = (master.state_dir / "logs" / "hooks.log").read_text()
    assert "[script event" in hooks_log
    assert "noted" in hooks_log
    assert "giving up" in hooks_log
    # What a command printed before it was killed at its time limit is kept.
    assert "before its time limit" in hooks_log
    assert master.stop() == 0  # a hanging hook does not hold up the stop either


def test_update_applies_hooks(start_master: MasterFactory, receivers: dict[str, Receiver]) -> None:
    config = make_config(workers=1)
    master = start_master(config)
    pid = master.wait_running("worker1")
    config["hooks"] = [{"on": ["worker"], "url": receivers["ok"].url}]
    master.config_path.write_text(to_toml(config))
    with master.http() as http:
        answer = http.post("/config/update").json()
        assert [c["key"] for c in answer["settings"]] == ["hooks"]
        assert answer["settings"][0]["applies"] == "now"
        assert http.post("/workers/worker1/restart").is_success
    wait_until(
        lambda: any(b["event"] == "worker.exit" for b in receivers["ok"].bodies), 10, "delivered"
    )
    exit_event = next(b for b in receivers["ok"].bodies if b["event"] == "worker.exit")
    assert exit_event["data"]["pid"] == pid
    master.log.wait_for(event="hook started", hook="hook1")


def test_a_bad_hook_is_refused_with_the_key_named(start_master: MasterFactory) -> None:
    from hiscrm.config import ConfigError, load_config

    cases = [
        ({"on": ["worker"]}, "either url or command"),
        ({"on": ["nothing"], "url": "http://x"}, "no event is named 'nothing'"),
        ({"on": ["worker"], "url": "ftp://x"}, "http:// or https://"),
        ({"on": [], "url": "http://x"}, "at least 1"),
    ]
    for n, (hook, problem) in enumerate(cases):
        path = Path(os.environ.get("TMPDIR", "/tmp")) / f"hiscrm-hook-{os.getpid()}-{n}.toml"
        path.write_text(to_toml({"hooks": [hook]}))
        try:
            with pytest.raises(ConfigError, match="hooks") as raised:
                load_config(path)
            assert problem in str(raised.value), str(raised.value)
        finally:
            path.unlink()


# --- the rules, without a master -------------------------------------------------------


def event(event_id: int, name: str = "worker.exit") -> StoredEvent:
    return StoredEvent(event_id, name, None, '{"worker":"worker1"}')


def test_retry_delays_double_up_to_a_bound() -> None:
    assert [retry_delay(n, 1.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert retry_delay(100, 1.0) == 300.0


def test_the_envelope_carries_id_name_and_data() -> None:
    body = json.loads(envelope(event(7)))
    assert body == {"id": 7, "event": "worker.exit", "data": {"worker": "worker1"}}


def test_a_full_hook_queue_drops_and_counts() -> None:
    queue = HookQueue(EventFilter(("worker",)), limit=3)
    queue.offer([event(n) for n in range(1, 6)] + [event(6, "health")])
    assert [e.id for e in queue.buffered] == [1, 2, 3]
    assert queue.dropped == 2
    assert queue.cut_off is None  # a hook is never cut off: it drops
