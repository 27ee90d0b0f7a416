"""Events in the store, on each backend: ids in commit order from one counter that never
goes back, item events read back from the items' tables, supervisor events from their
own table, filters, the window that is kept."""

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_datastore import Backend, Store, change, postgres_backend, sqlite_backend

from hiscrm.items import epoch_ms
from hiscrm.master.data import pg_writer, sqlite_writer
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import EventQuery, EventWindow, NewEvent, StoredEvent

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(tmp_path / "hiscrm.db")
    return postgres_backend(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = Store(backend)
    yield s
    s.close()


def read(store: Store, after: int = 0, **kwargs: Any) -> list[StoredEvent]:
    query = EventQuery(after=after, upto=store.store.event_window().head, **kwargs)
    return asyncio.run(store.store.events(query))


def ids_of(found: list[StoredEvent]) -> list[str]:
    return [json.loads(e.data)["id"] for e in found]


def test_committed_items_are_events_in_commit_order(store: Store) -> None:
    assert store.sync(0, 2, change(1, 1, "a", "m1"), change(2, 1, "b", "m2")).ok
    assert store.sync(0, 1, change(1, 1, "c", "m3"), account="other").ok
    store.wait_head(3)
    found = read(store)
    assert [e.name for e in found] == ["item.message"] * 3
    assert [e.id for e in found] == sorted(e.id for e in found)
    assert ids_of(found) == ["m1", "m2", "m3"]
    first = json.loads(found[0].data)
    assert first["text"] == "a"
    assert first["account_id"] == "acc"
    assert first["is_read"] is False
    assert not {"hash", "seq", "event_id"} & set(first)  # as the API serves it
    assert [e.account_id for e in found] == ["acc", "acc", "other"]
    # Resuming after the first returns the rest, once.
    assert [e.id for e in read(store, after=found[0].id)] == [found[1].id, found[2].id]


def test_an_item_changed_again_is_found_at_its_latest_change(store: Store) -> None:
    assert store.sync(0, 1, change(1, 1, "first", "m1")).ok
    assert store.sync(1, 2, change(2, 1, "other", "m2")).ok
    assert store.sync(2, 3, change(3, 2, "second", "m1")).ok
    head = store.wait_head(3)
    found = read(store)
    assert ids_of(found) == ["m2", "m1"]
    assert json.loads(found[-1].data)["text"] == "second"
    # A replay of an older version changes nothing and is no event.
    assert store.sync(3, 4, change(4, 1, "old", "m1")).ok
    store.wait_head(head + 1)
    assert read(store, after=head) == []


def test_supervisor_events_take_ids_in_order_with_items(store: Store) -> None:
    assert store.sync(0, 1, change(1, 1, "a", "m1")).ok
    head = store.wait_head(1)
    store.store.append_events(
        [
            NewEvent("worker.exit", epoch_ms(), None, {"worker": "worker1", "code": 3}),
            NewEvent("account.state", epoch_ms(), "acc", {"state": "down"}),
        ]
    )
    head = store.wait_head(head + 2)
    assert store.sync(1, 2, change(2, 1, "b", "m2")).ok
    store.wait_head(head + 1)
    found = read(store)
    assert [e.name for e in found] == [
        "item.message",
        "worker.exit",
        "account.state",
        "item.message",
    ]
    assert json.loads(found[1].data) == {"worker": "worker1", "code": 3}
    # Filters: by prefix, by whole name, by account.
    assert [e.name for e in read(store, filter=EventFilter(("worker",)))] == ["worker.exit"]
    names = [e.name for e in read(store, filter=EventFilter(("item.message", "account")))]
    assert names == ["item.message", "account.state", "item.message"]
    by_account = [e.name for e in read(store, filter=EventFilter((), "acc"))]
    assert by_account == ["item.message", "account.state", "item.message"]
    # The last two, oldest first; the first two.
    assert [e.id for e in read(store, limit=2, last=True)] == [found[2].id, found[3].id]
    assert [e.id for e in read(store, limit=2)] == [found[0].id, found[1].id]


def test_ids_never_go_back_across_a_restart(backend: Backend) -> None:
    first = Store(backend)
    assert first.sync(0, 2, change(1, 1, "a", "m1"), change(2, 1, "b", "m2")).ok
    head = first.wait_head(2)
    # Purging the account deletes the items that held the highest ids.
    asyncio.run(first.store.delete_account("acc", purge=True))
    first.close()
    second = Store(backend)
    try:
        assert second.store.event_window().head == head
        assert second.sync(0, 1, change(1, 1, "c", "m3")).ok
        second.wait_head(head + 1)
        found = read(second, after=head)
        assert ids_of(found) == ["m3"]
        assert found[0].id > head
    finally:
        second.close()


def test_the_window_ends_where_supervisor_events_were_pruned_not_at_a_count_of_ids(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``keep`` bounds the supervisor events kept; item events are read back from the
    items' rows however many there are, so they never shrink what can be resumed."""
    monkeypatch.setattr(sqlite_writer, "PRUNE_EVERY_S", 0.0)  # after every round of work
    monkeypatch.setattr(pg_writer, "PRUNE_EVERY_S", 0.0)
    store = Store(backend)
    try:
        store.store.set_event_window(3, 86_400)
        changes = [change(n, 1, f"t{n}", f"m{n}") for n in range(1, 11)]
        assert store.sync(0, 10, *changes).ok  # ten item events: more than ``keep``
        store.wait_head(10)
        assert store.store.event_window() == EventWindow(0, 10)
        assert ids_of(read(store, after=0)) == [f"m{n}" for n in range(1, 11)]
        # Supervisor events beyond ``keep`` are pruned; the floor is the newest gone.
        store.store.append_events(
            [NewEvent("health", epoch_ms(), None, {"n": n}) for n in range(5)]
        )
        store.wait_head(15)
        wait_rows(store, "SELECT id FROM events ORDER BY id", [(13,), (14,), (15,)])
        assert store.store.event_window() == EventWindow(12, 15)
        assert [json.loads(e.data)["n"] for e in read(store, after=12)] == [2, 3, 4]
    finally:
        store.close()


def test_a_read_mark_is_an_event_once(store: Store) -> None:
    assert store.sync(0, 1, change(1, 1, "a", "m1")).ok
    head = store.wait_head(1)
    assert asyncio.run(store.store.mark_read("messages", "acc", "m1", epoch_ms())) is not None
    head = store.wait_head(head + 1)
    found = read(store, after=head - 1)
    assert len(found) == 1
    assert json.loads(found[0].data)["is_read"] is True
    asyncio.run(store.store.mark_read("messages", "acc", "m1", epoch_ms()))
    store.wait_head(head + 1)
    assert read(store, after=head) == []  # already read: nothing changed


def test_pruning_deletes_supervisor_events_beyond_the_window(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_writer, "PRUNE_EVERY_S", 0.0)  # after every round of work
    monkeypatch.setattr(pg_writer, "PRUNE_EVERY_S", 0.0)
    store = Store(backend)
    try:
        store.store.set_event_window(3, 86_400)
        old = epoch_ms() - 3_600_000
        store.store.append_events([NewEvent("health", old, None, {"n": n}) for n in range(10)])
        store.wait_head(10)
        store.store.append_events([NewEvent("health", epoch_ms(), None, {"n": 10})])
        store.wait_head(11)
        wait_rows(store, "SELECT id FROM events ORDER BY id", [(9,), (10,), (11,)])
        assert store.rows("SELECT value FROM event_state WHERE key = 'floor'") == [(8,)]
        # By age: an hour is too old now; the newest stays.
        store.store.set_event_window(3, 60)
        store.store.append_events([NewEvent("health", epoch_ms(), None, {"n": 11})])
        store.wait_head(12)
        wait_rows(store, "SELECT id FROM events ORDER BY id", [(11,), (12,)])
        assert store.store.event_window().floor == 10
    finally:
        store.close()
    again = Store(backend)  # the floor is kept across a restart
    try:
        assert again.store.event_window() == EventWindow(10, 12)
    finally:
        again.close()


def wait_rows(store: Store, sql: str, expected: list[tuple[Any, ...]]) -> None:
    deadline = time.monotonic() + 10
    while (rows := store.rows(sql)) != expected:
        assert time.monotonic() < deadline, f"{sql}: {rows}, not {expected}"
        time.sleep(0.01)
