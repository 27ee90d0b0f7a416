"""``GET /events`` on a real master over real HTTP: item events from commits, resuming
without loss or repeat (also across a master restart), reset, filters, slow clients, and
the supervisor's events."""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from conftest import MasterFactory, make_config
from harness import Master, metric, wait_until
from sse_reader import SseEvent, SseReader
from starlette.types import Message
from test_ctl import CTL, ctl

from hiscrm.master.api import event_routes
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import EventQuery, EventWindow, StoredEvent
from hiscrm.master.events.hub import CutOff, EventHub
from hiscrm.master.events.stream import EventStream, StreamRequest

FAST_EVENTS = {"heartbeat_s": 0.2}
CUT_OFF = "hiscrm_event_clients_cut_off_total"


@pytest.fixture
def start_master(start_master_each_store: MasterFactory) -> MasterFactory:
    """Every test here runs on SQLite and on PostgreSQL."""
    return start_master_each_store


def demo(account_id: str = "acc-1", rate: float = 20.0) -> dict[str, Any]:
    return {"id": account_id, "platform": "demo", "options": {"rate": rate, "seed": 1}}


def reader(master: Master, **kwargs: Any) -> SseReader:
    return SseReader(master.api_url(), master.token, **kwargs)


def message_events(events: list[SseEvent]) -> list[SseEvent]:
    return [e for e in events if e.name == "item.message"]


def stored_messages(master: Master, after: int, upto: int) -> list[tuple[str, str]]:
    """(account, id) of the messages whose latest change is an event in (after, upto]."""
    rows = master.rows(
        "SELECT account_id, id FROM messages WHERE event_id > ? AND event_id <= ? "
        "ORDER BY event_id",
        after,
        upto,
    )
    return [(r[0], r[1]) for r in rows]


def assert_in_order_once(events: list[SseEvent]) -> None:
    ids = [e.id for e in events if e.id is not None]
    assert ids == sorted(ids), "events out of order"
    assert len(ids) == len(set(ids)), "an event came twice"


@pytest.mark.timeout(60)
def test_an_upsert_arrives_as_an_item_event(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1, accounts=[demo()], events=FAST_EVENTS))
    master.wait_running("worker1")
    stream = reader(master, params={"types": "item.message"})
    try:
        events = stream.wait(lambda es: bool(message_events(es)), 20, "a message event")
        assert stream.retry_ms == 2000
        first = events[0]
        assert first.name == "item.message"
        item = first.data
        # The item as the API serves it, and stored before it was sent.
        with master.http() as http:
            served = http.get(f"/accounts/acc-1/messages/{item['id']}").json()
        assert served["account_id"] == item["account_id"] == "acc-1"
        assert served["text"] == item["text"]
        assert all(e.name == "item.message" for e in events)
        stream.wait(lambda es: stream.comments > 0, 5, "a heartbeat comment")
    finally:
        stream.close()


@pytest.mark.timeout(90)
def test_resume_misses_nothing_and_repeats_nothing_also_across_a_restart(
    start_master: MasterFactory,
) -> None:
    accounts = [demo("acc-1"), demo("acc-2")]
    master = start_master(make_config(workers=2, accounts=accounts, events=FAST_EVENTS))
    master.wait_all_running(["worker1", "worker2"])
    first = reader(master, params={"types": "item.message"})
    events = first.wait(lambda es: len(es) >= 5, 20, "five messages")
    first.close()
    events = first.snapshot()
    cursor = events[-1].id
    assert cursor is not None

    def stored_after(after: int) -> int:
        return len(stored_messages(master, after, 2**62))

    # Items commit while the client is away ...
    wait_until(lambda: stored_after(cursor) >= 10, 20, "ten more messages stored")
    # ... and the master restarts in between, committing more after it.
    assert master.stop() == 0
    master.start()
    master.wait_all_running(["worker1", "worker2"])
    wait_until(lambda: stored_after(cursor) >= 20, 20, "messages after the restart")

    second = reader(master, params={"types": "item.message"}, last_event_id=cursor)
    try:
        head = max(e for e in (stored_messages_head(master),))
        resumed = second.wait(
            lambda es: bool(es) and (es[-1].id or 0) >= head, 20, "caught up to the head"
        )
    finally:
        second.close()
    assert_in_order_once(events + resumed)
    assert all(e.id is not None and e.id > cursor for e in resumed)
    got = [(e.data["account_id"], e.data["id"]) for e in resumed if (e.id or 0) <= head]
    assert got == stored_messages(master, cursor, head)  # every one, once, in commit order
    assert len(got) >= 20


def stored_messages_head(master: Master) -> int:
    return int(master.rows("SELECT coalesce(max(event_id), 0) FROM messages")[0][0])


def supervisor_event_ids(master: Master) -> list[int]:
    return [int(r[0]) for r in master.rows("SELECT id FROM events ORDER BY id")]


def event_floor(master: Master) -> int:
    return int(master.rows("SELECT value FROM event_state WHERE key = 'floor'")[0][0])


@pytest.mark.timeout(90)
def test_a_cursor_outside_the_window_gets_reset(start_master: MasterFactory) -> None:
    """The window ends where supervisor events were pruned (beyond ``keep`` of them)."""
    events = {**FAST_EVENTS, "keep": 100}
    master = start_master(make_config(workers=1, accounts=[], events=events))
    master.wait_running("worker1")
    wait_until(lambda: bool(supervisor_event_ids(master)), 10, "the first events stored")
    first = supervisor_event_ids(master)[0]
    deadline = time.monotonic() + 40
    with master.http() as http:  # each turn is account.state events
        assert http.post("/accounts", json=demo()).status_code == 201
        while len(supervisor_event_ids(master)) <= 110:
            assert time.monotonic() < deadline, "110 supervisor events"
            for enabled in (False, True):
                answer = http.patch("/accounts/acc-1", json={"enabled": enabled})
                assert answer.status_code == 200, answer.text
    # Pruned within PRUNE_EVERY_S (10 s): the oldest kept is past the first.
    wait_until(lambda: event_floor(master) >= first, 30, "supervisor events pruned")
    kept = supervisor_event_ids(master)
    assert kept[0] > first
    assert len(kept) >= 100
    for cursor in (first - 1, 10**12):  # its next supervisor event is gone; another store's
        stream = reader(master, params={"after": cursor, "follow": "false"})
        try:
            stream.wait_ended(20)
        finally:
            stream.close()
        got = stream.snapshot()
        assert got[0].name == "reset", got[:3]
        assert "reload" in got[0].data
        assert got[0].id is not None
        assert all(e.id is not None and e.id > got[0].id for e in got[1:]) or len(got) == 1
    # The floor itself is still a good cursor: what follows it was kept.
    floor = event_floor(master)
    stream = reader(master, params={"after": floor, "types": "account", "follow": "false"})
    try:
        stream.wait_ended(20)
    finally:
        stream.close()
    got = stream.snapshot()
    assert got, "nothing after the floor"
    assert got[0].name == "account.state", got[:3]
    assert (got[0].id or 0) > floor


@pytest.mark.timeout(90)
def test_a_client_away_across_more_than_keep_item_events_resumes_without_reset(
    start_master: MasterFactory,
) -> None:
    """``keep`` bounds supervisor events only: items are read back from their rows."""
    events = {**FAST_EVENTS, "keep": 100}
    master = start_master(make_config(workers=1, accounts=[demo(rate=200.0)], events=events))
    master.wait_running("worker1")
    first = reader(master, params={"types": "item.message"})
    try:
        first.wait(lambda es: len(es) >= 3, 20, "three messages")
    finally:
        first.close()
    cursor = first.snapshot()[-1].id
    assert cursor is not None
    # Away while more than ``keep`` events (all kinds) are given out, and as many items.
    wait_until(lambda: stored_messages_head(master) > cursor + 300, 30, "300 more events")
    head = stored_messages_head(master)
    assert len(stored_messages(master, cursor, head)) > 100
    second = reader(master, params={"types": "item.message"}, last_event_id=cursor)
    try:
        resumed = second.wait(
            lambda es: bool(es) and (es[-1].id or 0) >= head, 20, "caught up to the head"
        )
    finally:
        second.close()
    assert all(e.name == "item.message" for e in resumed), resumed[:3]  # no reset
    assert_in_order_once(resumed)
    got = [(e.data["account_id"], e.data["id"]) for e in resumed if (e.id or 0) <= head]
    assert got == stored_messages(master, cursor, head)  # every one, once, in commit order


@pytest.mark.timeout(60)
def test_filters_by_type_and_account(start_master: MasterFactory) -> None:
    accounts = [demo("acc-1"), demo("acc-2")]
    master = start_master(make_config(workers=1, accounts=accounts, events=FAST_EVENTS))
    master.wait_running("worker1")
    mine = reader(master, params={"account": "acc-2", "after": 0})
    workers = reader(master, params={"types": "worker", "after": 0})
    items = reader(master, params={"types": "item.conversation,account.state", "after": 0})
    try:
        mine.wait(lambda es: len(message_events(es)) >= 3, 20, "acc-2's messages")
        workers.wait(lambda es: len(es) >= 2, 20, "worker events")
        items.wait(
            lambda es: {e.name for e in es} >= {"item.conversation", "account.state"}, 20, ""
        )
    finally:
        for stream in (mine, workers, items):
            stream.close()
    assert {e.data.get("account_id") for e in mine.snapshot()} == {"acc-2"}
    assert {e.name for e in workers.snapshot()} <= {"worker.state", "worker.exit"}
    assert {e.name for e in items.snapshot()} == {"item.conversation", "account.state"}
    bad = reader(master, params={"types": "workers"})  # not an event name
    bad.wait_ended(10)
    assert bad.status == 422
    assert "workers" in bad.body


@pytest.mark.timeout(60)
def test_a_worker_kill_is_worker_exit_and_worker_state(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1, accounts=[demo()], events=FAST_EVENTS))
    pid = master.wait_running("worker1")
    stream = reader(master, params={"types": "worker"})
    try:
        time.sleep(0.3)  # subscribed (the first heartbeat comment says so)
        stream.wait(lambda es: stream.comments > 0, 5, "subscribed")
        os.kill(pid, signal.SIGKILL)
        events = stream.wait(
            lambda es: any(e.name == "worker.state" and e.data["state"] == "running" for e in es),
            20,
            "running again",
        )
    finally:
        stream.close()
    exits = [e for e in events if e.name == "worker.exit"]
    assert exits
    assert exits[0].data["pid"] == pid
    assert exits[0].data["reason"] == "killed"
    assert exits[0].data["signal"] == "SIGKILL"
    states = [e.data["state"] for e in events if e.name == "worker.state"]
    assert states[-1] == "running"


@pytest.mark.timeout(90)
def test_a_slow_reader_is_cut_off_while_a_fast_one_keeps_up(start_master: MasterFactory) -> None:
    events = {**FAST_EVENTS, "client_buffer_kb": 1024}
    master = start_master(make_config(workers=1, accounts=[], events=events))
    master.wait_running("worker1")
    fast = reader(master, params={"types": "item.message"})
    host, port = master.api_url().removeprefix("http://").split("/")[0].rsplit(":", 1)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    slow.connect((host, int(port)))
    slow.sendall(
        f"GET /api/v1/events?types=item.message HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {master.token}\r\n\r\n".encode()
    )
    try:
        with master.http() as http:
            wait_until(
                lambda: metric(http.get("/metrics").text, "hiscrm_event_clients ") == 2, 10, "2"
            )
            big = {
                "id": "big",
                "platform": "testplatforms.behaviours:BigItems",
                "options": {"size": 2000, "count": 8000},  # 16 MB of events
            }
            assert http.post("/accounts", json=big).status_code == 201
            got = fast.wait(lambda es: len(es) >= 8000, 60, "the fast reader got all 8000")
            assert_in_order_once(got)
            wait_until(
                lambda: metric(http.get("/metrics").text, CUT_OFF + '{reason="too_slow"}') >= 1,
                30,
                "the slow reader cut off",
            )
        # The slow reader, reading at last, finds the reason at the end of its stream.
        slow.settimeout(10)
        received = b""
        while b"event: cutoff" not in received:
            chunk = slow.recv(1 << 20)
            assert chunk, "the stream ended without saying why"
            received += chunk
        assert b"too slow" in received
    finally:
        slow.close()
        fast.close()


@pytest.mark.timeout(90)
def test_hiscrmctl_events_follows_across_a_master_restart(start_master: MasterFactory) -> None:
    master = start_master(make_config(workers=1, accounts=[demo()], events=FAST_EVENTS))
    first_pid = master.wait_running("worker1")
    out = master.dir / "events.jsonl"
    FILTER = ["--type", "worker.state", "-n", "1"]
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [*CTL, "--state-dir", str(master.state_dir), "events", "-f", "--json", *FILTER],
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:

        def seen() -> list[dict[str, Any]]:
            return [json.loads(line) for line in out.read_text().splitlines()]

        wait_until(lambda: len(seen()) >= 1, 20, "the newest worker event")
        assert master.stop() == 0
        master.start()
        second_pid = master.wait_running("worker1")
        wait_until(
            lambda: any(e["data"]["pid"] == second_pid for e in seen()), 30, "the new master's"
        )
    finally:
        follower.send_signal(signal.SIGINT)
        _, notes = follower.communicate(timeout=20)
    events = seen()
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    pids = {e["data"]["pid"] for e in events}
    assert {first_pid, second_pid} <= pids  # the stop, and the new master's start
    assert "resuming after event" in notes


@pytest.mark.timeout(60)
def test_account_stale_and_health_are_events_and_hiscrmctl_shows_them_as_lines(
    start_master: MasterFactory,
) -> None:
    silent = {"id": "silent", "platform": "testplatforms.behaviours:Idle"}
    config = make_config(
        workers=1, accounts=[silent], sync={"stale_after_s": 1.5}, events=FAST_EVENTS
    )
    master = start_master(config)
    master.wait_running("worker1")
    stream = reader(master, params={"types": "account.stale,health", "after": 0})

    def degraded(events: list[SseEvent]) -> list[SseEvent]:
        return [e for e in events if e.name == "health" and e.data["status"] == "degraded"]

    try:
        got = stream.wait(
            lambda es: any(e.name == "account.stale" for e in es) and bool(degraded(es)),
            20,
            "account.stale and health degraded",
        )
    finally:
        stream.close()
    assert {e.name for e in got} <= {"account.stale", "health"}
    stale = next(e for e in got if e.name == "account.stale")
    assert stale.data["account_id"] == "silent"
    assert stale.data["stale"] is True
    assert isinstance(stale.data["at"], int)
    health = degraded(got)[-1]
    assert health.data["checks"]["accounts"]["status"] == "degraded"
    assert "stale (no progress): silent" in health.data["checks"]["accounts"]["detail"]

    # hiscrmctl events, not --json: one readable line per event.
    shown = ctl(master, "events", "--type", "account.stale", "--type", "health", "-n", "100")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    stale_line = next(line for line in lines if f"#{stale.id}  " in line)
    when, event_id, name, account, *rest = stale_line.split("  ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}", when), stale_line
    assert (event_id, name, account) == (f"#{stale.id}", "account.stale", "silent")
    assert rest[0] == "stale=True"
    assert all(field.startswith("node=") for field in rest[1:])  # a shared store's master
    health_line = next(line for line in lines if f"#{health.id}  " in line)
    assert health_line.split("  ")[1:4] == [f"#{health.id}", "health", "status=degraded"]


def test_a_client_that_stops_reading_is_let_go_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that waits ``WRITE_TIMEOUT_S`` ends the stream, counted by reason (a real
    client would take 30 s and megabytes to get there: the response alone here)."""
    monkeypatch.setattr(event_routes, "WRITE_TIMEOUT_S", 0.05)

    class Kept:
        def event_window(self) -> EventWindow:
            return EventWindow(0, 0)

    async def frames() -> AsyncIterator[bytes]:
        while True:
            yield b": keep-alive\n\n"

    sent: list[Message] = []
    never = asyncio.Event()

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            await never.wait()  # the client takes nothing

    async def receive() -> Message:
        await never.wait()
        raise AssertionError("unreachable")

    async def main() -> EventHub:
        hub = EventHub(Kept(), structlog.get_logger(), lambda: None)  # type: ignore[arg-type]
        response = event_routes.EventStreamResponse(frames(), hub, structlog.get_logger())
        scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
        async with asyncio.timeout(10):
            await response(scope, receive, send)
        return hub

    hub = asyncio.run(main())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert hub.cut_off == {CutOff.STOPPED_READING: 1}


class PrunedWhileRead:
    """A store of events 1..2000: odd ids items, even ones supervisor events, which are
    pruned up to the floor; the floor is raised to ``prune_to`` during the first read,
    as a pruning that commits meanwhile would."""

    def __init__(self, floor: int, prune_to: int) -> None:
        self.floor, self.prune_to, self.reads = floor, prune_to, 0

    def event_window(self) -> EventWindow:
        return EventWindow(self.floor, 2000)

    async def events(self, query: EventQuery) -> list[StoredEvent]:
        self.reads += 1
        if self.reads == 1:
            self.floor = max(self.floor, self.prune_to)
        ids = [i for i in range(query.after + 1, query.upto + 1) if i % 2 or i > self.floor]
        chosen = ids[-query.limit :] if query.last else ids[: query.limit]
        return [StoredEvent(i, "item.message" if i % 2 else "health", None, "{}") for i in chosen]


def history(store: PrunedWhileRead, request: StreamRequest) -> list[SseEvent]:
    async def main() -> list[bytes]:
        hub = EventHub(store, structlog.get_logger(), lambda: None)  # type: ignore[arg-type]
        stream = EventStream(hub, request, heartbeat_s=1.0, max_bytes=1 << 20)
        async with asyncio.timeout(10):
            return [chunk async for chunk in stream.frames()]

    parsed: list[SseEvent] = []
    for block in b"".join(asyncio.run(main())).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            parsed.append(SseEvent(int(fields["id"]), fields["event"], fields["data"]))
    return parsed


def test_a_history_pruned_while_it_is_read_ends_in_reset() -> None:
    """The window is checked at the start, and the floor again after each page: supervisor
    events pruned meanwhile are a reset, never a silent gap."""
    store = PrunedWhileRead(floor=0, prune_to=300)
    got = history(store, StreamRequest(EventFilter(), after=10, follow=False))
    assert [e.name for e in got] == ["reset"]
    assert "pruned while being sent" in got[0].data["reason"]
    assert got[0].data["continues_after"] == 2000
    # Pruned below where the page began: the page is whole, nothing is reset.
    store = PrunedWhileRead(floor=0, prune_to=5)
    got = history(store, StreamRequest(EventFilter(), after=10, follow=False))
    assert [e.id for e in got] == list(range(11, 2001))
    # Starting with the last N, items below what was pruned before it began: no reset.
    store = PrunedWhileRead(floor=1000, prune_to=1000)
    got = history(store, StreamRequest(EventFilter(), after=None, last=1500, follow=False))
    assert [e.id for e in got] == [*range(1, 1000, 2), *range(1001, 2001)]
