"""Reads of the PostgreSQL store for the API: a small pool of connections, used from
threads, off the event loop.

As with SQLite, counting a large collection costs far more than reading a page of it, so
totals (per collection, account and filters) are kept for ``TOTALS_TTL_S``: a page is
always fresh, its ``total`` at most a second old.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from hiscrm.items import epoch_ms
from hiscrm.master.data import pg_queries, pg_schema
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.pg_writer import APPLICATION_NAME, CONNECT_TIMEOUT_S
from hiscrm.master.data.store import CollectionQuery, Row, StoreUnavailable

T = TypeVar("T")
TOTALS_TTL_S = 1.0
MAX_CACHED_COUNTS = 10_000
POOL_SIZE = 4  # at most this many reads at once; more wait for a connection
WAIT_FOR_CONNECTION_S = 5.0  # a read waits this long for a connection, then answers 503


class PgReader:
    def __init__(self, url: str) -> None:
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            open=False,
            name="store-read",
            timeout=WAIT_FOR_CONNECTION_S,
            kwargs={"autocommit": True, "application_name": f"{APPLICATION_NAME}-read"},
        )
        self._totals: tuple[float, dict[str, int]] | None = None
        self._totals_lock = asyncio.Lock()
        self._counts: dict[tuple[Any, ...], tuple[float, int]] = {}
        # Why the server is out of reach since the start (the writer's outage), or None.
        self.unreachable: Callable[[], str | None] = lambda: None

    def open(self) -> None:
        """Raises psycopg_pool.PoolTimeout if no connection can be made in time."""
        self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)

    def open_later(self) -> None:
        """Open without waiting: the pool connects in the background (the server was out
        of reach at the start and has just been reached)."""
        self._pool.open(wait=False)

    def close(self) -> None:
        self._pool.close()

    def _with_connection(self, function: Callable[[Conn], T]) -> T:
        """``function`` on a pooled connection; StoreUnavailable (the API's 503) if the
        server cannot be reached or fails us (a broken connection leaves the pool)."""
        unreachable = self.unreachable()
        if unreachable is not None:
            raise StoreUnavailable(unreachable)
        try:
            with self._pool.connection() as conn:
                return function(conn)
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no connection to the store: {exc}") from exc
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise StoreUnavailable(f"the store cannot be read: {reason}") from exc

    async def run(self, function: Callable[[Conn], T]) -> T:
        return await asyncio.to_thread(self._with_connection, function)

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        """A page and the total matching (the total cached, see the module)."""
        filters = tuple(sorted(query.filters.items()))
        key = (collection, query.account_id, filters, query.is_read, query.since, query.until)
        now = time.monotonic()
        cached = self._counts.get(key)
        if cached is not None and now - cached[0] <= TOTALS_TTL_S:
            rows = await self.run(lambda conn: pg_queries.page_of(conn, collection, query))
            return rows, cached[1]

        def both(conn: Conn) -> tuple[list[Row], int]:
            return (
                pg_queries.page_of(conn, collection, query),
                pg_queries.count_matching(conn, collection, query),
            )

        rows, total = await self.run(both)
        if len(self._counts) > MAX_CACHED_COUNTS:  # many distinct filters: start over
            self._counts.clear()
        self._counts[key] = (now, total)
        return rows, total

    async def get_item(self, collection: str, account_id: str, item_id: str) -> Row | None:
        return await self.run(
            lambda conn: pg_queries.get_item(conn, collection, account_id, item_id)
        )

    async def count_items(self, account_id: str) -> dict[str, int]:
        return await self.run(lambda conn: pg_schema.count_items(conn, account_id))

    async def totals(self) -> tuple[dict[str, int], int]:
        """Items per collection, counted at most ``TOTALS_TTL_S`` ago; and when (ms)."""
        async with self._totals_lock:
            now = time.monotonic()
            if self._totals is None or now - self._totals[0] > TOTALS_TTL_S:
                counts = await self.run(pg_schema.count_items)
                self._totals = (now, counts)
            taken, counts = self._totals
        return counts, epoch_ms() - int((time.monotonic() - taken) * 1000)
