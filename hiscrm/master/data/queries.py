"""Reading the five collections for the API, and marking items read.

No SQL is built from request strings: table, filter and sort names are looked up in the
per-collection whitelists below, and every value is a bound parameter. Reads run on
read-only connections (one per thread); marking read is a write and goes through the
store thread like every other write.
"""

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from hiscrm.items import COLLECTIONS, epoch_ms
from hiscrm.master.data import datastore

T = TypeVar("T")
TOTALS_TTL_S = 1.0


@dataclass(frozen=True)
class CollectionSpec:
    table: str
    time_field: str
    filters: tuple[str, ...] = ()  # equality filters, each a column of the table
    sorts: tuple[str, ...] = ()  # columns it may be sorted by, besides the time field
    readable: bool = False  # has is_read / read_at

    @property
    def sort_columns(self) -> tuple[str, ...]:
        return (self.time_field, "synced_at", "version", "id", *self.sorts)


SPECS: dict[str, CollectionSpec] = {
    "conversations": CollectionSpec("conversations", "last_message_at", sorts=("title",)),
    "messages": CollectionSpec(
        "messages", "sent_at", filters=("conversation_id", "direction", "sender_id"), readable=True
    ),
    "comments": CollectionSpec(
        "comments", "created_at", filters=("content_id", "direction", "author_id"), readable=True
    ),
    "contents": CollectionSpec(
        "contents", "published_at", sorts=("views", "likes", "comment_count")
    ),
    "notifications": CollectionSpec("notifications", "created_at", filters=("category",)),
}
assert set(SPECS) == set(COLLECTIONS)


@dataclass
class CollectionQuery:
    account_id: str
    filters: dict[str, str] = field(default_factory=dict)
    is_read: bool | None = None
    since: int | None = None  # ms, inclusive, on the collection's time field
    until: int | None = None  # ms, exclusive
    sort: str | None = None  # default: the time field
    order: Literal["asc", "desc"] = "desc"
    limit: int = 50
    offset: int = 0


def _row(spec: CollectionSpec, row: dict[str, Any]) -> dict[str, Any]:
    row.pop("hash", None)
    row.pop("seq", None)
    if "participants" in row:
        row["participants"] = json.loads(row["participants"]) if row["participants"] else []
    if spec.readable:
        row["is_read"] = bool(row["is_read"])
    return row


def _where(spec: CollectionSpec, query: CollectionQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (names from the whitelists only) and its bound values; KeyError
    on a name outside the whitelists (the API validates before it gets here)."""
    where = ["account_id = ?"]
    params: list[Any] = [query.account_id]
    for name, value in query.filters.items():
        column = spec.filters[spec.filters.index(name)]  # our constant, not the request's
        where.append(f"{column} = ?")
        params.append(value)
    if query.is_read is not None:
        if not spec.readable:
            raise KeyError("is_read")
        where.append("is_read = ?")
        params.append(int(query.is_read))
    if query.since is not None:
        where.append(f"{spec.time_field} >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append(f"{spec.time_field} < ?")
        params.append(query.until)
    return " AND ".join(where), params


def count_matching(conn: sqlite3.Connection, collection: str, query: CollectionQuery) -> int:
    spec = SPECS[collection]
    condition, params = _where(spec, query)
    row = conn.execute(f"SELECT count(*) FROM {spec.table} WHERE {condition}", params).fetchone()
    return int(row[0])


def page_of(
    conn: sqlite3.Connection, collection: str, query: CollectionQuery
) -> list[dict[str, Any]]:
    """One page of a collection. The offset is walked on an index (ids only), and only
    the rows of the page are read: a deep page costs ~10x less than a plain OFFSET."""
    spec = SPECS[collection]
    condition, params = _where(spec, query)
    sort = spec.sort_columns[spec.sort_columns.index(query.sort or spec.time_field)]
    order = {"asc": "ASC", "desc": "DESC"}[query.order]
    ids = (
        f"SELECT id FROM {spec.table} WHERE {condition} "
        f"ORDER BY {sort} {order}, id {order} LIMIT ? OFFSET ?"
    )
    cursor = conn.execute(
        f"SELECT t.* FROM ({ids}) AS page JOIN {spec.table} AS t "
        f"ON t.account_id = ? AND t.id = page.id ORDER BY t.{sort} {order}, t.id {order}",
        [*params, query.limit, query.offset, query.account_id],
    )
    return [_row(spec, row) for row in datastore.rows_as_dicts(cursor)]


def get_item(
    conn: sqlite3.Connection, collection: str, account_id: str, item_id: str
) -> dict[str, Any] | None:
    spec = SPECS[collection]
    cursor = conn.execute(
        f"SELECT * FROM {spec.table} WHERE account_id = ? AND id = ?", (account_id, item_id)
    )
    rows = datastore.rows_as_dicts(cursor)
    return _row(spec, rows[0]) if rows else None


def mark_read(
    conn: sqlite3.Connection, collection: str, account_id: str, item_id: str, at_ms: int
) -> dict[str, Any] | None:
    """Set ``is_read`` (keeping the first ``read_at``); None if there is no such item.
    Runs in the store thread: syncs never touch these columns, so it survives them."""
    spec = SPECS[collection]
    if not spec.readable:
        raise KeyError(collection)
    conn.execute(
        f"UPDATE {spec.table} SET is_read = 1, read_at = coalesce(read_at, ?) "
        "WHERE account_id = ? AND id = ?",
        (at_ms, account_id, item_id),
    )
    return get_item(conn, collection, account_id, item_id)


class StoreReader:
    """Read-only connections to the store, one per thread, used off the event loop.

    Counting a large collection costs far more than reading a page of it, so totals
    (per collection, account and filters) are kept for ``TOTALS_TTL_S``: a page is always
    fresh, its ``total`` at most a second old."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._totals: tuple[float, dict[str, int]] | None = None
        self._totals_lock = asyncio.Lock()
        self._counts: dict[tuple[Any, ...], tuple[float, int]] = {}

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = datastore.connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    async def run(self, function: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.to_thread(lambda: function(self._conn()))

    async def page(
        self, collection: str, query: CollectionQuery
    ) -> tuple[list[dict[str, Any]], int]:
        """A page and the total matching (the total cached, see the class)."""
        filters = tuple(sorted(query.filters.items()))
        key = (collection, query.account_id, filters, query.is_read, query.since, query.until)
        now = time.monotonic()
        cached = self._counts.get(key)
        if cached is not None and now - cached[0] <= TOTALS_TTL_S:
            return await self.run(lambda conn: page_of(conn, collection, query)), cached[1]

        def both(conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], int]:
            return page_of(conn, collection, query), count_matching(conn, collection, query)

        rows, total = await self.run(both)
        if len(self._counts) > 10_000:  # many distinct filters: start over
            self._counts.clear()
        self._counts[key] = (now, total)
        return rows, total

    async def totals(self) -> tuple[dict[str, int], int]:
        """Items per collection, counted at most ``TOTALS_TTL_S`` ago; and when (ms)."""
        async with self._totals_lock:
            now = time.monotonic()
            if self._totals is None or now - self._totals[0] > TOTALS_TTL_S:
                counts = await self.run(datastore.count_items)
                self._totals = (now, counts)
            taken, counts = self._totals
        return counts, epoch_ms() - int((time.monotonic() - taken) * 1000)
