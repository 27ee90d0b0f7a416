"""Reading the collections from PostgreSQL for the API, and marking items read.

The same queries as ``sqlite_queries``: no SQL is built from request strings (table,
filter and sort names are looked up in the kind's registry entry), every value is a bound
parameter, and rows come out in the same shape (no ``hash``, ``seq`` or ``event_id``, JSON
fields as lists, ``is_read`` a bool; item events are rendered from the same rows). NULLs
sort first going up and last going down, as in SQLite.
"""

from typing import Any

from psycopg.rows import dict_row

from hiscrm.items import BY_COLLECTION, Kind
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.store import CollectionQuery, Row

_ORDER = {"asc": "ASC NULLS FIRST", "desc": "DESC NULLS LAST"}
_ID_ORDER = {"asc": "ASC", "desc": "DESC"}


def item_row(kind: Kind, row: Row) -> Row:
    """A stored row as the API serves it."""
    row.pop("hash", None)
    row.pop("seq", None)
    row.pop("event_id", None)
    for name in kind.json_fields:
        if row[name] is None:
            row[name] = []
    return row


def _pick(allowed: tuple[str, ...], name: str) -> str:
    """Our own constant for ``name``; KeyError if it is not one of them."""
    if name not in allowed:
        raise KeyError(name)
    return allowed[allowed.index(name)]


def _where(kind: Kind, query: CollectionQuery) -> tuple[str, list[Any]]:
    """The WHERE clause (names from the registry only) and its bound values; KeyError on
    a name outside it (the API validates before it gets here)."""
    where = ["account_id = %s"]
    params: list[Any] = [query.account_id]
    for name, value in query.filters.items():
        where.append(f"{_pick(kind.filters, name)} = %s")
        params.append(value)
    if query.is_read is not None:
        if not kind.readable:
            raise KeyError("is_read")
        where.append("is_read = %s")
        params.append(query.is_read)
    if query.since is not None:
        where.append(f"{kind.time_field} >= %s")
        params.append(query.since)
    if query.until is not None:
        where.append(f"{kind.time_field} < %s")
        params.append(query.until)
    return " AND ".join(where), params


def count_matching(conn: Conn, collection: str, query: CollectionQuery) -> int:
    kind = BY_COLLECTION[collection]
    condition, params = _where(kind, query)
    row = conn.execute(
        f"SELECT count(*) FROM {kind.collection} WHERE {condition}", params
    ).fetchone()
    assert row is not None
    return int(row[0])


def page_of(conn: Conn, collection: str, query: CollectionQuery) -> list[Row]:
    """One page of a collection, in the requested order, ties broken by id. With
    ``query.max_bytes``, the server measures the page's rows and sends only those that
    start within it (the row that passes it included): a page of big items is never read
    whole into memory."""
    kind = BY_COLLECTION[collection]
    condition, params = _where(kind, query)
    sort = _pick(kind.sort_columns, query.sort or kind.time_field)
    order = f"{sort} {_ORDER[query.order]}, id {_ID_ORDER[query.order]}"
    cursor = conn.cursor(row_factory=dict_row)
    if query.max_bytes is None:
        cursor.execute(
            f"SELECT * FROM {kind.collection} WHERE {condition} "
            f"ORDER BY {order} LIMIT %s OFFSET %s",
            [*params, query.limit, query.offset],
        )
        return [item_row(kind, row) for row in cursor.fetchall()]
    # The page's ids in order (no big column touched for the rows skipped), the bytes of
    # the rows before each one, and the rows that start within the budget.
    cursor.execute(
        f"WITH page AS (SELECT id, row_number() OVER (ORDER BY {order}) AS n "
        f"FROM {kind.collection} WHERE {condition} ORDER BY {order} LIMIT %s OFFSET %s), "
        "sized AS (SELECT p.id, p.n, octet_length(t::text) AS size FROM page AS p "
        f"JOIN {kind.collection} AS t ON t.account_id = %s AND t.id = p.id), "
        "before AS (SELECT id, n, sum(size) OVER (ORDER BY n) - size AS bytes FROM sized) "
        f"SELECT t.* FROM before AS b JOIN {kind.collection} AS t "
        "ON t.account_id = %s AND t.id = b.id WHERE b.bytes <= %s ORDER BY b.n",
        [
            *params,
            query.limit,
            query.offset,
            query.account_id,
            query.account_id,
            query.max_bytes,
        ],
    )
    return [item_row(kind, row) for row in cursor.fetchall()]


def get_item(conn: Conn, collection: str, account_id: str, item_id: str) -> Row | None:
    kind = BY_COLLECTION[collection]
    cursor = conn.cursor(row_factory=dict_row)
    cursor.execute(
        f"SELECT * FROM {kind.collection} WHERE account_id = %s AND id = %s",
        (account_id, item_id),
    )
    row = cursor.fetchone()
    return item_row(kind, row) if row is not None else None


def mark_read(
    conn: Conn, collection: str, account_id: str, item_id: str, at_ms: int, event_id: int
) -> Row | None:
    """Set ``is_read`` (keeping the first ``read_at``); None if there is no such item. An
    item not read before becomes event ``event_id``. Syncs never touch these columns, so
    the mark survives them."""
    kind = BY_COLLECTION[collection]
    if not kind.readable:
        raise KeyError(collection)
    cursor = conn.cursor(row_factory=dict_row)
    cursor.execute(
        f"UPDATE {kind.collection} SET is_read = true, read_at = coalesce(read_at, %s), "
        "event_id = %s WHERE account_id = %s AND id = %s AND NOT is_read RETURNING *",
        (at_ms, event_id, account_id, item_id),
    )
    row = cursor.fetchone()
    if row is None:  # read before, or no such item
        return get_item(conn, collection, account_id, item_id)
    return item_row(kind, row)
