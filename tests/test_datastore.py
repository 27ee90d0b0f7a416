"""The SQLite store: schema, merge rule per field, version guard, gaps, retention."""

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import structlog

from hiscrm.items import KINDS, Content, Conversation, Message, item_hash
from hiscrm.master.data import sqlite_schema
from hiscrm.master.data.sqlite_store import SqliteStore
from hiscrm.master.data.store import StoreError, SyncBatch, SyncOutcome
from hiscrm.protocol import AnyMessage, Encoder, ItemChange

NOW = time.time_ns() // 1_000_000


def change(
    seq: int, version: int, text: str = "hi", item_id: str = "m1", sent_at: int = NOW
) -> ItemChange:
    item = Message(
        id=item_id,
        conversation_id="c",
        direction="inbound",
        sender_id="u",
        text=text,
        sent_at=sent_at,
    )
    return ItemChange(
        seq=seq, version=version, hash=item_hash(item.model_dump_json().encode()), item=item
    )


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


class Store:
    def __init__(self, path: Path, retention: dict[str, float] | None = None) -> None:
        self.outcomes: list[SyncOutcome] = []
        self.arrived = threading.Event()
        self.store = SqliteStore(path, retention or {}, structlog.get_logger())
        self.store.start(self._got)
        self.thread = self.store.writer
        self.path = path

    def _got(self, outcomes: list[SyncOutcome]) -> None:
        self.outcomes += outcomes
        self.arrived.set()

    def sync(self, base: int, last: int, *changes: ItemChange, account: str = "acc") -> SyncOutcome:
        self.arrived.clear()
        count = len(self.outcomes)
        self.store.submit(SyncBatch(LINK, account, base, last, list(changes)))
        deadline = time.monotonic() + 5
        while len(self.outcomes) == count:
            assert time.monotonic() < deadline
            self.arrived.wait(0.1)
        return self.outcomes[-1]

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        conn = sqlite_schema.connect(self.path, readonly=True)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "hiscrm.db")
    yield s
    s.thread.stop()


def test_schema_follows_the_models(store: Store) -> None:
    columns = [r[1] for r in store.rows("PRAGMA table_info(messages)")]
    assert columns[:6] == ["account_id", "id", "version", "hash", "seq", "synced_at"]
    assert set(KINDS["message"].observed_fields) <= set(columns)
    assert {"is_read", "read_at"} <= set(columns)
    assert "is_read" not in [r[1] for r in store.rows("PRAGMA table_info(notifications)")]
    assert store.rows("SELECT version FROM schema_version") == [(sqlite_schema.SCHEMA_VERSION,)]
    assert store.rows("PRAGMA journal_mode") == [("wal",)]


def test_updates_replace_observed_fields_and_keep_master_owned_ones(store: Store) -> None:
    assert store.sync(0, 1, change(1, 1, "first")).ok
    conn = sqlite3.connect(store.path)
    conn.execute("UPDATE messages SET is_read = 1, read_at = 5 WHERE id = 'm1'")
    conn.commit()
    conn.close()
    outcome = store.sync(1, 2, change(2, 2, "second"))
    assert (outcome.ok, outcome.committed_seq) == (True, 2)
    assert store.rows("SELECT text, version, seq, is_read, read_at FROM messages") == [
        ("second", 2, 2, 1, 5)
    ]


def test_replays_and_stale_versions_change_nothing(store: Store) -> None:
    store.sync(0, 2, change(1, 1, "first"), change(2, 2, "second"))
    assert store.sync(0, 1, change(1, 1, "first")).ok  # a resend from the start
    assert store.rows("SELECT text, version FROM messages") == [("second", 2)]
    assert store.rows("SELECT acked_seq FROM accounts") == [(2,)]


def test_a_sync_after_a_gap_is_refused(store: Store) -> None:
    assert store.sync(0, 3, change(3, 1)).ok
    refused = store.sync(5, 6, change(6, 1, item_id="m6"))
    assert not refused.ok
    assert refused.error is not None
    assert refused.error.startswith("gap: the store has up to 3")
    assert store.rows("SELECT count(*) FROM messages") == [(1,)]
    assert store.sync(3, 6, change(6, 1, item_id="m6")).ok


def test_many_syncs_commit_together_in_order(store: Store) -> None:
    for n in range(200):
        store.store.submit(SyncBatch(LINK, "acc", n, n + 1, [change(n + 1, 1, item_id=f"m{n}")]))
    deadline = time.monotonic() + 10
    while len(store.outcomes) < 200:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert all(o.ok for o in store.outcomes)
    assert [o.committed_seq for o in store.outcomes] == list(range(1, 201))
    assert store.thread.commits < 200  # grouped


def test_digest_and_committed_seq_are_read_after_queued_writes(store: Store) -> None:
    import asyncio

    store.store.submit(SyncBatch(LINK, "acc", 0, 2, [change(1, 1), change(2, 1, item_id="m2")]))
    digest = asyncio.run(store.store.digest("acc"))
    assert digest.acked_seq == 2
    assert sorted(e[1] for e in digest.entries) == ["m1", "m2"]


def test_retention_deletes_only_old_items_of_the_named_collection(tmp_path: Path) -> None:
    old = NOW - 10 * 86_400_000
    store = Store(tmp_path / "r.db")
    conversation = Conversation(id="c", title="t")
    store.sync(
        0,
        3,
        change(1, 1, item_id="old", sent_at=old),
        change(2, 1, item_id="new"),
        ItemChange(seq=3, version=1, hash="x", item=conversation),
    )
    store.thread.stop()
    again = Store(tmp_path / "r.db", retention={"messages": 5})  # applied at start
    again.thread.stop()
    assert again.rows("SELECT id FROM messages") == [("new",)]
    assert again.rows("SELECT count(*) FROM conversations") == [(1,)]


def test_a_store_from_a_newer_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (99)")
    conn.commit()
    conn.close()
    store = SqliteStore(path, {}, structlog.get_logger())
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
    refused = store.sync(0, 1, poison)  # type: ignore[arg-type]
    assert not refused.ok
    assert refused.error is not None
    assert "OverflowError" in refused.error
    assert store.thread.alive
    assert store.thread.errors >= 1
    assert store.sync(0, 2, change(2, 1)).ok  # later syncs of the account are committed
    assert store.rows("SELECT id FROM messages") == [("m1",)]
    assert store.rows("SELECT count(*) FROM contents") == [(0,)]
