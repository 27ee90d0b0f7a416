"""The embedded default store: SQLite in WAL mode in the state directory.

One writer thread (``SqliteWriter``) does every write and the reads that must follow
them (an account's digest); read-only connections in threads (``SqliteReader``) serve
the API.
"""

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from structlog.typing import FilteringBoundLogger

from hiscrm.master.data import outbox_sql, sqlite_events, sqlite_queries, sqlite_schema
from hiscrm.master.data.outbox_entry import OutboxEntry, PageQuery
from hiscrm.master.data.sqlite_reader import SqliteReader
from hiscrm.master.data.sqlite_writer import SqliteWriter, transaction
from hiscrm.master.data.store import (
    AccountDigest,
    AccountRecord,
    CollectionQuery,
    EventQuery,
    EventWindow,
    HeadCallback,
    NewEvent,
    OutcomeCallback,
    Row,
    StoredEvent,
    StoreStats,
    StoreUnavailable,
    SyncBatch,
)

T = TypeVar("T")
OUTBOX = outbox_sql.Dialect("?", sqlite_events.insert)
WRITE_TIMEOUT_S = 10.0  # an API write waits this long for the writer, then answers 503
STUCK_AFTER_S = 2.0  # a write waiting or running this long means the store is stuck


class SqliteStore:
    def __init__(
        self, path: Path, retention_days: dict[str, float], log: FilteringBoundLogger
    ) -> None:
        self.path = path
        self.writer = SqliteWriter(path, retention_days, log)
        self.reader = SqliteReader(path)

    def start(self, on_outcomes: OutcomeCallback) -> None:
        self.writer.start(on_outcomes)

    def stop(self) -> None:
        self.writer.stop()

    def stats(self) -> StoreStats:
        writer = self.writer
        return StoreStats(
            where=str(self.path),
            alive=writer.alive,
            commits=writer.commits,
            items_written=writer.items_written,
            errors=writer.errors,
            cannot_commit=writer.cannot_commit(time.monotonic(), STUCK_AFTER_S),
            item_events=dict(writer.item_events),
        )

    def set_retention(self, days: dict[str, float]) -> None:
        self.writer.set_retention(days)

    def submit(self, batch: SyncBatch) -> None:
        self.writer.submit(batch)

    async def digest(self, account_id: str) -> AccountDigest:
        def read(conn: sqlite3.Connection) -> AccountDigest:
            return AccountDigest(
                sqlite_schema.committed_seq(conn, account_id),
                sqlite_schema.digest(conn, account_id),
            )

        return await self.writer.call(read)

    async def mark_read(
        self, collection: str, account_id: str, item_id: str, at_ms: int
    ) -> Row | None:
        return await self._call_writing(
            lambda conn: self.writer.with_events(
                conn,
                1,
                lambda c, event_id: sqlite_queries.mark_read(
                    c, collection, account_id, item_id, at_ms, event_id
                ),
            )
        )

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        return await self.reader.page(collection, query)

    async def get_item(self, collection: str, account_id: str, item_id: str) -> Row | None:
        return await self.reader.get_item(collection, account_id, item_id)

    async def totals(self) -> tuple[dict[str, int], int]:
        return await self.reader.totals()

    async def count_items(self, account_id: str) -> dict[str, int]:
        return await self.reader.count_items(account_id)

    async def accounts(self) -> list[AccountRecord]:
        return await self.writer.call(sqlite_schema.list_accounts)

    async def put_account(self, record: AccountRecord) -> None:
        await self._write(lambda conn: sqlite_schema.put_account(conn, record))

    async def delete_account(self, account_id: str, purge: bool) -> dict[str, int]:
        return await self._write(lambda conn: sqlite_schema.delete_account(conn, account_id, purge))

    def watch_events(self, on_head: HeadCallback) -> None:
        self.writer.watch_events(on_head)

    def append_events(self, events: list[NewEvent]) -> None:
        self.writer.append_events(events)

    def set_event_window(self, keep: int, keep_s: float) -> None:
        self.writer.set_event_window(keep, keep_s)

    def event_window(self) -> EventWindow:
        return self.writer.event_window()

    async def events(self, query: EventQuery) -> list[StoredEvent]:
        return await self.reader.run(lambda conn: sqlite_events.read(conn, query))

    async def outbox_create(self, entry: OutboxEntry) -> tuple[OutboxEntry, bool]:
        return await self._call_writing(
            lambda conn: self.writer.with_events(
                conn, 1, lambda c, first: outbox_sql.create(OUTBOX, c, first, entry)
            )
        )

    async def outbox_save(self, entry: OutboxEntry, *, lease: int | None) -> None:
        # One host: the master owns every account; there is no lease to check.
        await self._call_writing(
            lambda conn: self.writer.with_events(
                conn, 1, lambda c, first: outbox_sql.save(OUTBOX, c, first, entry)
            )
        )

    async def outbox_get(self, account_id: str, request_id: str) -> OutboxEntry | None:
        return await self.reader.run(
            lambda conn: outbox_sql.get(OUTBOX, conn, account_id, request_id)
        )

    async def outbox_page(
        self, account_id: str, query: PageQuery, limit: int, offset: int
    ) -> tuple[list[OutboxEntry], int]:
        return await self.reader.run(
            lambda conn: outbox_sql.page(OUTBOX, conn, account_id, query, limit, offset)
        )

    async def outbox_open(self, account_ids: list[str] | None = None) -> list[OutboxEntry]:
        return await self.writer.call(
            lambda conn: outbox_sql.open_entries(OUTBOX, conn, account_ids)
        )

    async def _call_writing(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """A write that makes its own transaction, in the writer thread; 503 (as
        StoreUnavailable) if the store cannot take it in time."""
        try:
            return await self.writer.call(function, WRITE_TIMEOUT_S)
        except TimeoutError:
            why = self.writer.cannot_commit(time.monotonic(), 0.0) or "it is busy"
            raise StoreUnavailable(
                f"the store did not take the write within {WRITE_TIMEOUT_S:.0f} s: {why}"
            ) from None
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the store cannot write: {exc}") from exc

    async def _write(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """One write of the API in its own transaction (see ``_call_writing``)."""

        def in_transaction(conn: sqlite3.Connection) -> T:
            with transaction(conn):
                return function(conn)

        return await self._call_writing(in_transaction)
