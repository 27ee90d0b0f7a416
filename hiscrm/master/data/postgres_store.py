"""The store in PostgreSQL, chosen by ``[store] url = "postgresql://…"``.

The same split as ``SqliteStore``: one writer thread on a connection of its own
(``PgWriter``) does every write and the reads that must follow them (an account's
digest); a small pool of connections (``PgReader``) serves the API's reads from threads;
a third thread (``EventListener``) hears of events other masters commit to the same
database.
"""

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg_pool import PoolTimeout
from structlog.typing import FilteringBoundLogger

from hiscrm.master.data import outbox_sql, pg_commands, pg_events, pg_queries, pg_schema
from hiscrm.master.data.outbox_entry import OutboxEntry, PageQuery
from hiscrm.master.data.pg_listener import EventListener
from hiscrm.master.data.pg_reader import PgReader
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.pg_writer import PgWriter
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
    StaleLease,
    StoredEvent,
    StoreError,
    StoreStats,
    StoreUnavailable,
    SyncBatch,
)

T = TypeVar("T")
OUTBOX = outbox_sql.Dialect("%s", pg_events.insert)
WRITE_TIMEOUT_S = 10.0  # an API write waits this long for the writer, then answers 503
STUCK_AFTER_S = 10.0  # a write waiting or running this long means the store is stuck


class PostgresStore:
    def __init__(self, url: str, retention_days: dict[str, float], log: FilteringBoundLogger):
        self.writer = PgWriter(url, retention_days, log)
        self.reader = PgReader(url)
        self.listener = EventListener(url, self.writer.events, log)
        self.where = self.writer.where  # the URL without its password
        self._lifecycle = threading.Lock()
        self._stopped = False
        # A cluster's routed commands (``command_router``), told from the listener's
        # thread; nothing listens to them until the router is attached.
        self.commands_heard: Callable[[str], None] = lambda payload: None
        self.commands_connected: Callable[[], None] = lambda: None
        self.listener.hear(
            pg_commands.CHANNEL,
            lambda payload: self.commands_heard(payload),
            lambda: self.commands_connected(),
        )

    def start(self, on_outcomes: OutcomeCallback) -> None:
        """Open the store; StoreError if it cannot be used as configured. A server out
        of reach for now does not stop the master: the writer keeps trying, health says
        so, reads answer 503, and the reads' pool and the listener start once it opened."""
        self.reader.unreachable = self.writer.outage.reason
        self.writer.on_opened = self._opened
        self.writer.start(on_outcomes)
        if not self.writer.opened_at_start:
            return
        try:
            self.reader.open()
        except (PoolTimeout, psycopg.Error) as exc:
            self.writer.stop()
            self.reader.close()
            raise StoreError(
                f"cannot use the store {self.where}: cannot open connections for reads: {exc}"
            ) from exc
        self.listener.start()

    def _opened(self, at_start: bool) -> None:
        """In the writer's thread: the store is open, after it was out of reach at the
        start; the reads' pool fills in the background, the listener starts."""
        if at_start:
            return  # ``start`` opens them, and fails if they cannot be opened
        with self._lifecycle:
            if self._stopped:
                return
            self.reader.open_later()
            self.listener.start()

    def stop(self) -> None:
        with self._lifecycle:
            self._stopped = True
        self.listener.stop()
        self.writer.stop()
        self.reader.close()

    def stats(self) -> StoreStats:
        writer = self.writer
        return StoreStats(
            where=self.where,
            alive=writer.alive,
            commits=writer.commits,
            items_written=writer.items_written,
            errors=writer.errors + writer.events.errors + self.listener.errors,
            cannot_commit=writer.cannot_commit(time.monotonic(), STUCK_AFTER_S),
        )

    def set_retention(self, days: dict[str, float]) -> None:
        self.writer.set_retention(days)

    def submit(self, batch: SyncBatch) -> None:
        self.writer.submit(batch)

    async def digest(self, account_id: str) -> AccountDigest:
        def read(conn: Conn) -> AccountDigest:
            with conn.transaction():  # one snapshot: the items and the seq they reach
                seq = pg_schema.committed_seqs(conn, [account_id])[account_id]
                return AccountDigest(seq, pg_schema.digest(conn, account_id))

        return await self.writer.call(read)

    async def mark_read(
        self, collection: str, account_id: str, item_id: str, at_ms: int
    ) -> Row | None:
        def mark(conn: Conn, event_id: int) -> Row | None:
            self._fenced(conn, account_id)
            return pg_queries.mark_read(conn, collection, account_id, item_id, at_ms, event_id)

        return await self._call_writing(lambda conn: self.writer.with_events(conn, 1, mark))

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        return await self.reader.page(collection, query)

    async def get_item(self, collection: str, account_id: str, item_id: str) -> Row | None:
        return await self.reader.get_item(collection, account_id, item_id)

    async def totals(self) -> tuple[dict[str, int], int]:
        return await self.reader.totals()

    async def count_items(self, account_id: str) -> dict[str, int]:
        return await self.reader.count_items(account_id)

    async def accounts(self) -> list[AccountRecord]:
        return await self.writer.call(pg_schema.list_accounts)

    async def put_account(self, record: AccountRecord) -> None:
        def put(conn: Conn) -> None:
            pg_schema.put_account(conn, record)
            pg_commands.notify(conn, "accounts")  # every master follows the registry now

        await self._write(put)

    async def delete_account(self, account_id: str, purge: bool) -> dict[str, int]:
        def delete(conn: Conn) -> dict[str, int]:
            deleted = pg_schema.delete_account(conn, account_id, purge)
            pg_commands.notify(conn, "accounts")
            return deleted

        return await self._write(delete)

    def watch_events(self, on_head: HeadCallback) -> None:
        """Called from the writer thread after its own commits, and from the listener's
        for other masters' (each head once, in order)."""
        self.writer.watch_events(on_head)

    def append_events(self, events: list[NewEvent]) -> None:
        self.writer.append_events(events)

    def set_event_window(self, keep: int, keep_s: float) -> None:
        self.writer.set_event_window(keep, keep_s)

    def event_window(self) -> EventWindow:
        return self.writer.event_window()

    async def events(self, query: EventQuery) -> list[StoredEvent]:
        def read(conn: Conn) -> tuple[list[StoredEvent], int]:
            return pg_events.read(conn, query), pg_events.stored_floor(conn)

        found, floor = await self.reader.run(read)
        # Read after the events: what other masters pruned reaches the window before a
        # stream trusts the page (``EventStream`` checks the floor after each).
        self.writer.events.raise_floor(floor)
        return found

    async def outbox_create(self, entry: OutboxEntry) -> tuple[OutboxEntry, bool]:
        def create(conn: Conn, first: int) -> tuple[OutboxEntry, bool]:
            stored, made = outbox_sql.create(OUTBOX, conn, first, entry)
            if made:  # the account's master, if another one, takes it in at the commit
                by = "" if self.writer.fence is None else self.writer.fence.node_id
                pg_commands.notify(conn, f"outbox:{by}/{entry.account_id}")
            return stored, made

        return await self._call_writing(lambda conn: self.writer.with_events(conn, 1, create))

    async def outbox_save(self, entry: OutboxEntry, *, lease: int | None) -> None:
        def save(conn: Conn, first: int) -> None:
            # The owner's word on a reply, at the lease it was made under: a master that
            # lost the lease (or holds it again at a later epoch) is refused here.
            fence = self.writer.fence
            if fence is not None:
                why = fence.check_at(conn, entry.account_id, lease)
                if why is not None:
                    raise StaleLease(f"lease lost: {why}")
            outbox_sql.save(OUTBOX, conn, first, entry)

        await self._call_writing(lambda conn: self.writer.with_events(conn, 1, save))

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

    def _fenced(self, conn: Conn, account_id: str) -> None:
        """In a cluster, inside the write's transaction: refuse (StoreUnavailable) if this
        master believes it holds the account's lease and the store says it does not."""
        fence = self.writer.fence
        if fence is None:
            return
        refused = fence.check(conn, [account_id], held_only=True)
        if refused:
            raise StoreUnavailable(f"lease lost: {refused[account_id]}")

    async def _write(self, function: Callable[[Conn], T]) -> T:
        """One write of the API in its own transaction, in the writer thread."""

        def in_transaction(conn: Conn) -> T:
            with conn.transaction():
                return function(conn)

        return await self._call_writing(in_transaction)

    async def _call_writing(self, function: Callable[[Conn], T]) -> T:
        """A write that makes its own transaction, in the writer thread; 503 (as
        StoreUnavailable) if the store cannot take it in time."""
        try:
            return await self.writer.call(function, WRITE_TIMEOUT_S)
        except TimeoutError:
            why = self.writer.cannot_commit(time.monotonic(), 0.0) or "it is busy"
            raise StoreUnavailable(
                f"the store did not take the write within {WRITE_TIMEOUT_S:.0f} s: {why}"
            ) from None
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"the store cannot write: {exc}") from exc
