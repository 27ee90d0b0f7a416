"""Reading the collections from SQLite for the API, and marking items read.

No SQL is built from request strings: table, filter and sort names are looked up in the
kind's registry entry (``hiscrm.items.KINDS``), and every value is a bound parameter.
"""

import json
import sqlite3
from typing import Any

from hiscrm.items import BY_COLLECTION, Kind
from hiscrm.master.data.sqlite_schema import rows_as_dicts
from hiscrm.master.data.store import CollectionQuery, Row


def item_row(kind: Kind, row: Row) -> Row:
    """A stored row as the API serves it."""
    row.pop("hash", None)
    row.pop("seq", None)
    row.pop("event_id", None)
    for name in kind.json_fields:
        row[name] = json.loads(row[name]) if row[name] else []
    if kind.readable:
        row["is_read"] = bool(row["is_read"])
    return row


def _pick(allowed: tuple[str, ...], name: str) -> str:
    """Our own constant for ``name``; KeyError if it is not one of them."""
    if name not in allowed:
        raise KeyError(name)
    return allowed[allowed.index(name)]


def _where(kind: Kind, query: CollectionQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (names from the registry only) and its bound values; KeyError on
    a name outside it (the API validates before it gets here)."""
    where = ["account_id = ?"]
    params: list[Any] = [query.account_id]
    for name, value in query.filters.items():
        where.append(f"{_pick(kind.filters, name)} = ?")
        params.append(value)
    if query.is_read is not None:
        if not kind.readable:
            raise KeyError("is_read")
        where.append("is_read = ?")
        params.append(int(query.is_read))
    if query.since is not None:
        where.append(f"{kind.time_field} >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append(f"{kind.time_field} < ?")
        params.append(query.until)
    return " AND ".join(where), params


def count_matching(conn: sqlite3.Connection, collection: str, query: CollectionQuery) -> int:
    kind = BY_COLLECTION[collection]
    condition, params = _where(kind, query)
    row = conn.execute(f"SELECT count(*) FROM {collection} WHERE {condition}", params).fetchone()
    return int(row[0])


def page_of(conn: sqlite3.Connection, collection: str, query: CollectionQuery) -> list[Row]:
    """One page of a collection. The offset is walked on an index (ids only), and only
    the rows of the page are read: a deep page costs ~10x less than a plain OFFSET. Rows
    are read one at a time and no further than ``query.max_bytes`` of their text."""
    kind = BY_COLLECTION[collection]
    condition, params = _where(kind, query)
    sort = _pick(kind.sort_columns, query.sort or kind.time_field)
    order = {"asc": "ASC", "desc": "DESC"}[query.order]
    ids = (
        f"SELECT id FROM {collection} WHERE {condition} "
        f"ORDER BY {sort} {order}, id {order} LIMIT ? OFFSET ?"
    )
    cursor = conn.execute(
        f"SELECT t.* FROM ({ids}) AS page JOIN {collection} AS t "
        f"ON t.account_id = ? AND t.id = page.id ORDER BY t.{sort} {order}, t.id {order}",
        [*params, query.limit, query.offset, query.account_id],
    )
    names = [d[0] for d in cursor.description]
    rows: list[Row] = []
    size = 0
    try:
        for values in cursor:
            # The text as stored; the JSON served is at least as long.
            size += sum(len(v) for v in values if isinstance(v, str | bytes))
            rows.append(item_row(kind, dict(zip(names, values, strict=True))))
            if query.max_bytes is not None and size > query.max_bytes:
                break
    finally:
        cursor.close()
    return rows


def get_item(
    conn: sqlite3.Connection, collection: str, account_id: str, item_id: str
) -> Row | None:
    kind = BY_COLLECTION[collection]
    cursor = conn.execute(
        f"SELECT * FROM {collection} WHERE account_id = ? AND id = ?", (account_id, item_id)
    )
    rows = rows_as_dicts(cursor)
    return item_row(kind, rows[0]) if rows else None


def mark_read(
    conn: sqlite3.Connection,
    collection: str,
    account_id: str,
    item_id: str,
    at_ms: int,
    event_id: int,
) -> Row | None:
    """Set ``is_read`` (keeping the first ``read_at``); None if there is no such item. An
    item not read before becomes event ``event_id``. Runs in the writer thread: syncs
    never touch these columns, so it survives them."""
    if not BY_COLLECTION[collection].readable:
        raise KeyError(collection)
    conn.execute(
        f"UPDATE {collection} SET is_read = 1, read_at = coalesce(read_at, ?), event_id = ? "
        "WHERE account_id = ? AND id = ? AND NOT is_read",
        (at_ms, event_id, account_id, item_id),
    )
    return get_item(conn, collection, account_id, item_id)
