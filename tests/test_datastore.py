"""The store, on each backend (SQLite and PostgreSQL): schema, merge rule per field,
version guard, gaps, group commit, retention, reads, paging and totals."""

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog

from hiscrm.items import KINDS, Content, Conversation, Message, item_hash
from hiscrm.master.data import pg_schema, sqlite_schema
from hiscrm.master.data.postgres_store import PostgresStore
from hiscrm.master.data.sqlite_store import SqliteStore
from hiscrm.master.data.store import (
    AccountRecord,
    CollectionQuery,
    StoreError,
    SyncBatch,
    SyncOutcome,
)
from hiscrm.protocol import AnyMessage, Encoder, ItemChange, WorkerDataSync
from hiscrm.sync_wire import ChangeView, fast_sync

NOW = time.time_ns() // 1_000_000

AnyStore = SqliteStore | PostgresStore


def change(
    seq: int,
    version: int,
    text: str = "hi",
    item_id: str = "m1",
    sent_at: int = NOW,
    conversation_id: str = "c",
) -> ItemChange:
    item = Message(
        id=item_id,
        conversation_id=conversation_id,
        direction="inbound",
        sender_id="u",
        text=text,
        sent_at=sent_at,
    )
    return ItemChange(
        seq=seq, version=version, hash=item_hash(item.model_dump_json().encode()), item=item
    )


def conversation(seq: int, item_id: str, last_message_at: int | None) -> ItemChange:
    item = Conversation(id=item_id, title=item_id, last_message_at=last_message_at)
    return ItemChange(seq=seq, version=1, hash="h", item=item)


class NoWorker:
    """The process a test sync claims to come from (the store never talks to it)."""

    worker_id = "worker1"
    pid = 1
    serving = True
    encoder = Encoder()

    def send(self, message: AnyMessage) -> bool:
        return False

    def send_frame(self, frame: bytes) -> bool:
        return False


LINK = NoWorker()


@dataclass
class Backend:
    """One place a store can live, and how a test reads it from outside."""

    name: str
    open: Callable[[dict[str, float]], AnyStore]  # not started
    rows: Callable[[str], list[tuple[Any, ...]]]
    execute: Callable[[str], None]
    columns: Callable[[str], list[str]]
    poison_error: str  # the exception a value out of range raises in this backend


def sqlite_backend(path: Path) -> Backend:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        conn = sqlite_schema.connect(path, readonly=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def execute(sql: str) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute(sql)
            conn.commit()
        finally:
            conn.close()

    return Backend(
        "sqlite",
        lambda retention: SqliteStore(path, retention, structlog.get_logger()),
        rows,
        execute,
        lambda table: [r[1] for r in rows(f"PRAGMA table_info({table})")],
        "OverflowError",
    )


def postgres_backend(url: str) -> Backend:
    def rows(sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(sql).fetchall()  # type: ignore[arg-type]

    def execute(sql: str) -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def columns(table: str) -> list[str]:
        return [
            r[0]
            for r in rows(
                "SELECT column_name FROM information_schema.columns "
                f"WHERE table_name = '{table}' ORDER BY ordinal_position"
            )
        ]

    return Backend(
        "postgres",
        lambda retention: PostgresStore(url, retention, structlog.get_logger()),
        rows,
        execute,
        columns,
        "NumericValueOutOfRange",
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(tmp_path / "hiscrm.db")
    return postgres_backend(request.getfixturevalue("pg_url"))


def as_received(account: str, base: int, last: int, changes: list[ItemChange]) -> list[ChangeView]:
    """The changes as the master hands them to the store: read from the frame by the fast
    path (``sync_wire``) when it accepts them, else the models (what ``protocol.decode``
    gives)."""
    sync = WorkerDataSync.model_construct(
        account_id=account, base_seq=base, last_seq=last, changes=changes
    )
    fast = fast_sync(Encoder().encode(sync))
    return list(changes if fast is None else fast.changes)


class Store:
    def __init__(
        self, backend: Backend, retention: dict[str, float] | None = None, wire: bool = False
    ) -> None:
        self.wire = wire  # syncs go in as the master's fast path reads them
        self.outcomes: list[SyncOutcome] = []
        self.arrived = threading.Event()
        self.backend = backend
        self.store = backend.open(retention or {})
        self.heads: list[int] = []  # event heads, as the store reports them
        self.store.watch_events(self.heads.append)
        self.store.start(self._got)
        self.thread = self.store.writer
        self.rows = backend.rows

    def _got(self, outcomes: list[SyncOutcome]) -> None:
        self.outcomes += outcomes
        self.arrived.set()

    def submit(self, base: int, last: int, *changes: ItemChange, account: str = "acc") -> None:
        received = as_received(account, base, last, list(changes)) if self.wire else changes
        self.store.submit(SyncBatch(LINK, account, base, last, list(received)))

    def wait_outcomes(self, n: int, timeout: float = 10) -> list[SyncOutcome]:
        deadline = time.monotonic() + timeout
        while len(self.outcomes) < n:
            assert time.monotonic() < deadline, f"{len(self.outcomes)} of {n} outcomes"
            self.arrived.wait(0.05)
            self.arrived.clear()
        return self.outcomes

    def sync(self, base: int, last: int, *changes: ItemChange, account: str = "acc") -> SyncOutcome:
        count = len(self.outcomes)
        self.submit(base, last, *changes, account=account)
        return self.wait_outcomes(count + 1)[-1]

    def wait_head(self, at_least: int, timeout: float = 10) -> int:
        """Until the store reports event ``at_least`` committed; the head then."""
        deadline = time.monotonic() + timeout
        while not self.heads or self.heads[-1] < at_least:
            assert time.monotonic() < deadline, f"event head {self.heads[-1:]} < {at_least}"
            time.sleep(0.005)
        return self.heads[-1]

    def close(self) -> None:
        self.store.stop()


@pytest.fixture(params=["models", "wire"])
def store(backend: Backend, request: pytest.FixtureRequest) -> Iterator[Store]:
    s = Store(backend, wire=request.param == "wire")
    yield s
    s.close()


def test_schema_follows_the_models(store: Store) -> None:
    columns = store.backend.columns("messages")
    assert columns[:6] == ["account_id", "id", "version", "hash", "seq", "synced_at"]
    assert set(KINDS["message"].observed_fields) <= set(columns)
    assert {"is_read", "read_at"} <= set(columns)
    assert "is_read" not in store.backend.columns("notifications")
    assert "event_id" in columns  # the item's latest change's event
    versions = {"sqlite": sqlite_schema.SCHEMA_VERSION, "postgres": pg_schema.SCHEMA_VERSION}
    assert store.rows("SELECT version FROM schema_version") == [(versions[store.backend.name],)]
    if store.backend.name == "sqlite":
        assert store.rows("PRAGMA journal_mode") == [("wal",)]


def test_updates_replace_observed_fields_and_keep_master_owned_ones(store: Store) -> None:
    assert store.sync(0, 1, change(1, 1, "first")).ok
    marked = asyncio.run(store.store.mark_read("messages", "acc", "m1", NOW))
    assert marked is not None
    assert (marked["is_read"], marked["read_at"]) == (True, NOW)
    outcome = store.sync(1, 2, change(2, 2, "second"))
    assert (outcome.ok, outcome.committed_seq) == (True, 2)
    assert store.rows("SELECT text, version, seq, is_read, read_at FROM messages") == [
        ("second", 2, 2, 1, NOW)
    ]
    again = asyncio.run(store.store.mark_read("messages", "acc", "m1", NOW + 5))
    assert again is not None
    assert again["read_at"] == NOW  # the first read stays
    assert asyncio.run(store.store.mark_read("messages", "acc", "nope", NOW)) is None


def test_replays_and_stale_versions_change_nothing(store: Store) -> None:
    store.sync(0, 2, change(1, 1, "first"), change(2, 2, "second"))
    assert store.sync(0, 1, change(1, 1, "first")).ok  # a resend from the start
    assert store.rows("SELECT text, version FROM messages") == [("second", 2)]
    assert store.rows("SELECT acked_seq FROM account_sync") == [(2,)]


def test_versions_of_one_item_in_one_group_keep_the_first_highest(store: Store) -> None:
    # Queued together, these go into one transaction: the result must be what one
    # upsert after the other gives.
    store.submit(0, 1, change(1, 1, "a"))
    store.submit(1, 3, change(2, 3, "b"), change(3, 2, "c"))
    store.submit(3, 4, change(4, 3, "d"))
    store.submit(4, 5, change(5, 1, "e", item_id="m2"), change(5, 2, "f", item_id="m2"))
    outcomes = store.wait_outcomes(4)
    assert all(o.ok for o in outcomes)
    assert store.rows("SELECT id, text, version, seq FROM messages ORDER BY id") == [
        ("m1", "b", 3, 2),
        ("m2", "f", 2, 5),
    ]


def test_a_sync_after_a_gap_is_refused(store: Store) -> None:
    assert store.sync(0, 3, change(3, 1)).ok
    refused = store.sync(5, 6, change(6, 1, item_id="m6"))
    assert not refused.ok
    assert refused.error is not None
    assert refused.error.startswith("gap: the store has up to 3")
    assert store.rows("SELECT count(*) FROM messages") == [(1,)]
    assert store.sync(3, 6, change(6, 1, item_id="m6")).ok


def test_a_gap_inside_a_group_refuses_only_that_sync(store: Store) -> None:
    store.submit(0, 1, change(1, 1))
    store.submit(5, 6, change(6, 1, item_id="m6"))
    store.submit(1, 2, change(2, 1, item_id="m2"))
    store.submit(0, 1, change(1, 1, item_id="b1"), account="other")
    outcomes = store.wait_outcomes(4)
    by_seq = {(o.batch.account_id, o.batch.last_seq): o for o in outcomes}
    assert not by_seq["acc", 6].ok
    assert [by_seq[k].committed_seq for k in [("acc", 1), ("acc", 2), ("other", 1)]] == [1, 2, 1]
    assert store.rows("SELECT id, acked_seq FROM account_sync ORDER BY id") == [
        ("acc", 2),
        ("other", 1),
    ]


def test_many_syncs_commit_together_in_order(store: Store) -> None:
    for n in range(200):
        store.submit(n, n + 1, change(n + 1, 1, item_id=f"m{n}"))
    outcomes = store.wait_outcomes(200)
    assert all(o.ok for o in outcomes)
    assert [o.committed_seq for o in outcomes] == list(range(1, 201))
    assert store.thread.commits < 200  # grouped


def test_digest_and_committed_seq_are_read_after_queued_writes(store: Store) -> None:
    store.submit(0, 2, change(1, 1), change(2, 1, item_id="m2"))
    digest = asyncio.run(store.store.digest("acc"))
    assert digest.acked_seq == 2
    assert sorted(e[1] for e in digest.entries) == ["m1", "m2"]
    assert {(e[0], e[2]) for e in digest.entries} == {("message", 1)}


def test_retention_deletes_only_old_items_of_the_named_collection(backend: Backend) -> None:
    old = NOW - 10 * 86_400_000
    store = Store(backend)
    store.sync(
        0,
        3,
        change(1, 1, item_id="old", sent_at=old),
        change(2, 1, item_id="new"),
        ItemChange(seq=3, version=1, hash="x", item=Conversation(id="c", title="t")),
    )
    store.close()
    again = Store(backend, retention={"messages": 5})  # applied at start
    again.close()
    assert again.rows("SELECT id FROM messages") == [("new",)]
    assert again.rows("SELECT count(*) FROM conversations") == [(1,)]


def test_a_store_from_a_newer_program_is_refused(backend: Backend) -> None:
    backend.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    backend.execute("INSERT INTO schema_version VALUES (99)")
    store = backend.open({})
    with pytest.raises(StoreError, match="schema version 99"):
        store.start(lambda outcomes: None)


def test_a_poison_sync_is_refused_and_the_store_goes_on(store: Store) -> None:
    huge = Content.model_construct(
        id="c1",
        kind="content",
        title="t",
        url="",
        published_at=None,
        views=2**64,
        likes=0,
        comment_count=0,
    )
    poison = ItemChange.model_construct(seq=1, version=1, hash="x", item=huge)
    store.submit(0, 1, change(1, 1, item_id="other"), account="bystander")
    store.submit(0, 1, poison)  # type: ignore[arg-type]
    # The two may commit in one group or one after the other: the poison's own outcome.
    (refused,) = [o for o in store.wait_outcomes(2) if o.batch.account_id == "acc"]
    assert not refused.ok
    assert refused.error is not None
    assert store.backend.poison_error in refused.error
    assert store.thread.alive
    assert store.thread.errors >= 1
    assert store.sync(0, 2, change(2, 1)).ok  # later syncs of the account are committed
    assert store.rows("SELECT id FROM messages ORDER BY id") == [("m1",), ("other",)]
    assert store.rows("SELECT count(*) FROM contents") == [(0,)]


def test_pages_filters_sorts_and_totals(store: Store) -> None:
    changes = [
        change(n, 1, f"t{n}", item_id=f"m{n}", sent_at=NOW + n * 1000, conversation_id=f"c{n % 2}")
        for n in range(1, 11)
    ]
    assert store.sync(0, 10, *changes).ok
    asyncio.run(store.store.mark_read("messages", "acc", "m4", NOW))
    page = store.store.page

    def ids(query: CollectionQuery) -> tuple[list[str], int]:
        rows, total = asyncio.run(page("messages", query))
        return [r["id"] for r in rows], total

    assert ids(CollectionQuery("acc", limit=3)) == (["m10", "m9", "m8"], 10)
    assert ids(CollectionQuery("acc", order="asc", limit=2, offset=3)) == (["m4", "m5"], 10)
    assert ids(CollectionQuery("acc", filters={"conversation_id": "c0"}, limit=2)) == (
        ["m10", "m8"],
        5,
    )
    assert ids(CollectionQuery("acc", is_read=True)) == (["m4"], 1)
    assert ids(CollectionQuery("acc", is_read=False, limit=1)) == (["m10"], 9)
    since, until = NOW + 3000, NOW + 6000
    assert ids(CollectionQuery("acc", since=since, until=until, order="asc")) == (
        ["m3", "m4", "m5"],
        3,
    )
    assert ids(CollectionQuery("acc", sort="id", order="asc", limit=3)) == (
        ["m1", "m10", "m2"],
        10,
    )
    assert ids(CollectionQuery("other")) == ([], 0)
    rows, _ = asyncio.run(page("messages", CollectionQuery("acc", limit=1)))
    assert "hash" not in rows[0]
    assert "seq" not in rows[0]
    assert rows[0]["is_read"] is False
    assert rows[0]["text"] == "t10"


def test_missing_times_sort_first_going_up_and_last_going_down(store: Store) -> None:
    assert store.sync(
        0,
        4,
        conversation(1, "a", NOW + 2),
        conversation(2, "b", None),
        conversation(3, "c", NOW + 1),
        conversation(4, "d", None),
    ).ok

    def ids(order: str) -> list[str]:
        query = CollectionQuery("acc", order=order)  # type: ignore[arg-type]
        rows, _ = asyncio.run(store.store.page("conversations", query))
        return [r["id"] for r in rows]

    assert ids("asc") == ["b", "d", "c", "a"]
    assert ids("desc") == ["a", "c", "d", "b"]


def test_items_counts_and_totals(store: Store) -> None:
    assert store.sync(
        0,
        3,
        change(1, 1),
        change(2, 1, item_id="m2"),
        ItemChange(
            seq=3,
            version=1,
            hash="x",
            item=Conversation(id="c", title="t", participants=["u", "v"]),
        ),
    ).ok
    assert store.sync(0, 1, change(1, 1), account="b").ok
    item = asyncio.run(store.store.get_item("conversations", "acc", "c"))
    assert item is not None
    assert item["participants"] == ["u", "v"]
    assert asyncio.run(store.store.get_item("conversations", "acc", "nope")) is None
    counts = asyncio.run(store.store.count_items("acc"))
    assert counts == {
        "conversations": 1,
        "messages": 2,
        "comments": 0,
        "contents": 0,
        "notifications": 0,
    }
    totals, counted_at = asyncio.run(store.store.totals())
    assert totals["messages"] == 3
    assert abs(counted_at - time.time() * 1000) < 5000
    stats = store.store.stats()
    assert (stats.alive, stats.items_written, stats.errors) == (True, 4, 0)


def test_a_first_schema_store_migrates_keeping_what_the_sync_path_knows(tmp_path: Path) -> None:
    from hiscrm.master.data import sqlite_schema as schema

    path = tmp_path / "v1.db"
    conn = schema.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    schema.MIGRATIONS[1](conn)
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO accounts (id, acked_seq, last_sync_at) VALUES ('acc', 7, 5)")
    conn.close()
    conn = schema.connect(path)
    assert schema.migrate(conn) == (1, [])
    schema.check_columns(conn)
    assert schema.committed_seq(conn, "acc") == 7
    assert schema.list_accounts(conn) == []
    conn.close()


def test_an_accounts_own_memory_limit_is_kept_changed_and_cleared(store: Store) -> None:
    with_limit = AccountRecord("acc", "demo", {"rate": 1}, True, "api", 1, 1, 64)
    without = AccountRecord("other", "demo", {}, False, "config", 2, 2)
    for record in (with_limit, without):
        asyncio.run(store.store.put_account(record))
    assert asyncio.run(store.store.accounts()) == [with_limit, without]
    for limit in (128, None):
        changed = AccountRecord("acc", "demo", {"rate": 1}, True, "api", 1, 3, limit)
        asyncio.run(store.store.put_account(changed))
        assert asyncio.run(store.store.accounts())[0] == changed


def test_a_store_of_schema_5_migrates_keeping_its_accounts(tmp_path: Path) -> None:
    from hiscrm.master.data import sqlite_schema as schema

    path = tmp_path / "v5.db"
    conn = schema.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in range(1, 6):
        schema.MIGRATIONS[version](conn)
    conn.execute("INSERT INTO schema_version VALUES (5)")
    conn.execute(
        "INSERT INTO accounts (id, platform, options, enabled, source, created_at, updated_at) "
        "VALUES ('acc', 'demo', '{}', 1, 'api', 1, 2)"
    )
    conn.close()
    conn = schema.connect(path)
    assert schema.migrate(conn) == (5, [])
    schema.check_columns(conn)
    assert schema.list_accounts(conn) == [AccountRecord("acc", "demo", {}, True, "api", 1, 2)]
    conn.close()


def test_wire_stores_get_the_fast_paths_structs() -> None:
    received = as_received("acc", 0, 2, [change(1, 1), conversation(2, "c", None)])
    assert [type(c).__name__ for c in received] == ["WireChange", "WireChange"]
    assert [c.item.kind for c in received] == ["message", "conversation"]


def test_a_page_of_big_items_is_read_only_as_far_as_its_byte_budget(store: Store) -> None:
    big = "x" * 100_000
    changes = [change(n, 1, big, item_id=f"m{n:02d}", sent_at=NOW + n * 1000) for n in range(1, 41)]
    for n in range(0, 40, 10):  # syncs under the 1 MB frame of a real worker
        assert store.sync(n, n + 10, *changes[n : n + 10]).ok

    def ids(query: CollectionQuery) -> list[str]:
        rows, total = asyncio.run(store.store.page("messages", query))
        assert total == 40
        return [r["id"] for r in rows]

    # 40 rows of 100 kB asked for, 350 kB allowed: the rows that start within it.
    first = ids(CollectionQuery("acc", order="asc", limit=40, max_bytes=350_000))
    assert first == ["m01", "m02", "m03", "m04"]
    deep = ids(CollectionQuery("acc", order="asc", limit=40, offset=30, max_bytes=150_000))
    assert deep == ["m31", "m32"]
    # One row is always read, however small the budget; no budget reads the page.
    assert ids(CollectionQuery("acc", limit=40, max_bytes=1)) == ["m40"]
    assert len(ids(CollectionQuery("acc", limit=40))) == 40
