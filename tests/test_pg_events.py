"""Events in the PostgreSQL store where it differs from SQLite's: several masters share
one counter (ids in commit order across them, each hearing of the others' commits), a
store of schema 2 migrates, and both backends serve an item event as the same JSON."""

import asyncio
import json
import threading
import time
from pathlib import Path

import psycopg
import pytest
from harness import wait_until
from test_datastore import Store, change, postgres_backend, sqlite_backend

from hiscrm.master.data import pg_schema, pg_writer
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.store import EventQuery, NewEvent, StoredEvent

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def read(store: Store, after: int = 0, upto: int | None = None) -> list[StoredEvent]:
    head = store.store.event_window().head if upto is None else upto
    return asyncio.run(store.store.events(EventQuery(after=after, upto=head, limit=100_000)))


def wait_window_head(store: Store, at_least: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (head := store.store.event_window().head) < at_least:
        assert time.monotonic() < deadline, f"event head {head} < {at_least}"
        time.sleep(0.005)
    return head


def test_two_masters_share_one_counter_and_hear_each_other(pg_url: str) -> None:
    first = Store(postgres_backend(pg_url))
    second = Store(postgres_backend(pg_url))
    try:
        assert first.sync(0, 2, change(1, 1, "a", "m1"), change(2, 1, "b", "m2")).ok
        # The second master did not write: it hears of the first's commit.
        assert second.wait_head(2) == 2
        assert wait_window_head(second, 2) == 2
        assert second.sync(0, 1, change(1, 1, "c", "m3"), account="other").ok
        assert first.wait_head(3) == 3
        first.store.append_events(
            [NewEvent("health", int(time.time() * 1000), None, {"status": "ok"})]
        )
        second.wait_head(4)
        first.wait_head(4)  # its own writer may report it after the other master hears it
        found = read(second)
        assert [(e.id, e.name, e.account_id) for e in found] == [
            (1, "item.message", "acc"),
            (2, "item.message", "acc"),
            (3, "item.message", "other"),
            (4, "health", None),
        ]
        assert read(first) == found
        # Each head was reported once, going up, whichever thread saw it first.
        assert second.heads == sorted(set(second.heads))
        assert first.heads == sorted(set(first.heads))
    finally:
        first.close()
        second.close()
    # The counter is the database's: a master started later goes on from it.
    third = Store(postgres_backend(pg_url))
    try:
        assert third.store.event_window().head == 4
    finally:
        third.close()


def test_a_master_reading_events_learns_the_floor_another_master_pruned_to(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each master prunes on its own; one that did not prune must not take a cursor the
    other pruned past for whole: a read of events raises its window's floor (read after
    the events, so a stream checking it after a page knows whether the page is whole)."""
    monkeypatch.setattr(pg_writer, "PRUNE_EVERY_S", 0.0)  # after every round of work
    first = Store(postgres_backend(pg_url))
    second = Store(postgres_backend(pg_url))  # writes nothing, so never prunes
    try:
        first.store.set_event_window(3, 86_400)
        first.store.append_events(
            [NewEvent("health", int(time.time() * 1000), None, {"n": n}) for n in range(10)]
        )
        first.wait_head(10)
        wait_until(lambda: first.store.event_window().floor >= 7, 10, "pruned to 7")
        assert wait_window_head(second, 10) == 10
        assert second.store.event_window().floor == 0  # nothing told it yet
        assert [e.id for e in read(second)] == [8, 9, 10]
        assert second.store.event_window().floor == 7  # a stream on it resets below 7
    finally:
        first.close()
        second.close()


@pytest.mark.timeout(120)
def test_ids_follow_commit_order_across_masters_writing_at_once(pg_url: str) -> None:
    # A reader that always resumes after the head it last read misses nothing only if no
    # event is committed below a head already reported (ids in commit order).
    writers = [Store(postgres_backend(pg_url)) for _ in range(2)]
    reader = Store(postgres_backend(pg_url))
    syncs, per_sync = 150, 4
    total = len(writers) * syncs * per_sync  # every change a new item: ids 1..total
    seen: set[str] = set()
    try:

        def write(store: Store, account: str) -> None:
            for n in range(syncs):  # one at a time: a transaction each, interleaved
                items = [
                    change(n * per_sync + k + 1, 1, "x", f"{account}-{n}-{k}")
                    for k in range(per_sync)
                ]
                store.sync(n * per_sync, (n + 1) * per_sync, *items, account=account)

        threads = [
            threading.Thread(target=write, args=(store, f"acc{i}"))
            for i, store in enumerate(writers)
        ]
        for thread in threads:
            thread.start()
        cursor, reads = 0, 0
        deadline = time.monotonic() + 60
        while cursor < total:
            assert time.monotonic() < deadline, f"head {cursor} of {total}"
            head = reader.store.event_window().head
            if head > cursor:
                seen.update(json.loads(e.data)["id"] for e in read(reader, cursor, head))
                cursor, reads = head, reads + 1
            else:
                time.sleep(0.002)
        for thread in threads:
            thread.join(30)
        assert all(outcome.ok for store in writers for outcome in store.outcomes)
        assert reads > 10  # it did read while they wrote
        assert len(seen) == total, f"{total - len(seen)} items committed below a head read"
    finally:
        for store in [*writers, reader]:
            store.close()


def test_a_lost_listening_connection_is_made_again(pg_url: str) -> None:
    first = Store(postgres_backend(pg_url))
    second = Store(postgres_backend(pg_url))
    try:
        assert first.store.listener.listening.wait(10)
        assert second.store.listener.listening.wait(10)
        with psycopg.connect(pg_url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "application_name = 'hiscrm-master-listen' AND datname = current_database()"
            ).fetchall()
        assert killed == [(True,), (True,)]  # one per master
        # Committed while the listener may be away: heard from the counter on return.
        assert first.sync(0, 1, change(1, 1, "a", "m1")).ok
        assert second.wait_head(1) == 1
        deadline = time.monotonic() + 10
        while second.store.listener.errors < 1 or not second.store.listener.listening.is_set():
            assert time.monotonic() < deadline, "the listener did not connect again"
            time.sleep(0.01)
        assert first.sync(1, 2, change(2, 1, "b", "m2")).ok
        assert second.wait_head(2) == 2
        assert second.store.stats().errors >= 1  # the lost connection was counted
    finally:
        first.close()
        second.close()


def test_a_schema_2_store_migrates_to_events(pg_url: str) -> None:
    # A store as a schema-2 program left it: no event_id columns, no events tables.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE schema_version (version integer NOT NULL)")
            pg_schema.MIGRATIONS[1](conn)
            pg_schema.MIGRATIONS[2](conn)
            for kind in pg_schema.KINDS.values():
                conn.execute(f"ALTER TABLE {kind.collection} DROP COLUMN event_id")
            conn.execute("INSERT INTO schema_version VALUES (2)")
            conn.execute(
                "INSERT INTO account_sync (id, acked_seq, last_sync_at) VALUES ('acc', 1, 5)"
            )
            conn.execute(
                "INSERT INTO messages (account_id, id, version, hash, seq, synced_at, "
                "conversation_id, direction, sender_id, text, sent_at) "
                "VALUES ('acc', 'old', 1, 'h', 1, 5, 'c', 'inbound', 'u', 'before', 5)"
            )
        assert pg_schema.migrate(conn) == (2, [])
        assert pg_schema.migrate(conn) == (pg_schema.SCHEMA_VERSION, [])  # once only
    store = Store(postgres_backend(pg_url))
    try:
        assert store.rows("SELECT version FROM schema_version") == [(pg_schema.SCHEMA_VERSION,)]
        assert "event_id" in store.backend.columns("messages")
        indexes = {r[0] for r in store.rows("SELECT indexname FROM pg_indexes")}
        assert {f"{k.collection}_by_event" for k in pg_schema.KINDS.values()} <= indexes
        assert store.store.event_window().head == 0
        # What was stored before is no event; what changes from now on is.
        assert store.sync(1, 3, change(2, 1, "new", "m2"), change(3, 2, "after", "old")).ok
        store.wait_head(2)
        found = read(store)
        assert [(e.id, json.loads(e.data)["id"]) for e in found] == [(1, "m2"), (2, "old")]
        assert json.loads(found[1].data)["text"] == "after"
    finally:
        store.close()


def test_both_backends_serve_an_item_event_as_the_same_json(pg_url: str, tmp_path: Path) -> None:
    stores = [Store(sqlite_backend(tmp_path / "hiscrm.db")), Store(postgres_backend(pg_url))]
    try:
        texts = []
        for store in stores:
            assert store.sync(0, 1, change(1, 1, 'héllo "q" ✓', "m1")).ok
            store.wait_head(1)
            asyncio.run(store.store.mark_read("messages", "acc", "m1", 1234))
            store.wait_head(2)
            (event,) = asyncio.run(
                store.store.events(EventQuery(0, 2, EventFilter(("item.message",))))
            )
            synced_at = json.loads(event.data)["synced_at"]
            texts.append(event.data.replace(f'"synced_at":{synced_at}', '"synced_at":0'))
        assert texts[0] == texts[1]
        assert '"is_read":true,"read_at":1234' in texts[1]
    finally:
        for store in stores:
            store.close()
