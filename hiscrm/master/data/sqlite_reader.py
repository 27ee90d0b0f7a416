"""Read-only connections to the SQLite store, one per thread, used off the event loop.

Counting a large collection costs far more than reading a page of it, so totals (per
collection, account and filters) are kept for ``TOTALS_TTL_S``: a page is always fresh,
its ``total`` at most a second old.
"""

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hiscrm.items import epoch_ms
from hiscrm.master.data import sqlite_queries, sqlite_schema
from hiscrm.master.data.store import CollectionQuery, Row

T = TypeVar("T")
TOTALS_TTL_S = 1.0
MAX_CACHED_COUNTS = 10_000


class SqliteReader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._totals: tuple[float, dict[str, int]] | None = None
        self._totals_lock = asyncio.Lock()
        self._counts: dict[tuple[Any, ...], tuple[float, int]] = {}

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite_schema.connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(lambda: function(self._conn()))

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        """A page and the total matching (the total cached, see the module)."""
        filters = tuple(sorted(query.filters.items()))
        key = (collection, query.account_id, filters, query.is_read, query.since, query.until)
        now = time.monotonic()
        cached = self._counts.get(key)
        if cached is not None and now - cached[0] <= TOTALS_TTL_S:
            rows = await self.run(lambda conn: sqlite_queries.page_of(conn, collection, query))
            return rows, cached[1]

        def both(conn: sqlite3.Connection) -> tuple[list[Row], int]:
            return (
                sqlite_queries.page_of(conn, collection, query),
                sqlite_queries.count_matching(conn, collection, query),
            )

        rows, total = await self.run(both)
        if len(self._counts) > MAX_CACHED_COUNTS:  # many distinct filters: start over
            self._counts.clear()
        self._counts[key] = (now, total)
        return rows, total

    async def get_item(self, collection: str, account_id: str, item_id: str) -> Row | None:
        return await self.run(
            lambda conn: sqlite_queries.get_item(conn, collection, account_id, item_id)
        )

    async def count_items(self, account_id: str) -> dict[str, int]:
        return await self.run(lambda conn: sqlite_schema.count_items(conn, account_id))

    async def totals(self) -> tuple[dict[str, int], int]:
        """Items per collection, counted at most ``TOTALS_TTL_S`` ago; and when (ms)."""
        async with self._totals_lock:
            now = time.monotonic()
            if self._totals is None or now - self._totals[0] > TOTALS_TTL_S:
                counts = await self.run(sqlite_schema.count_items)
                self._totals = (now, counts)
            taken, counts = self._totals
        return counts, epoch_ms() - int((time.monotonic() - taken) * 1000)
