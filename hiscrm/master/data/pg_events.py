"""Events in the PostgreSQL store: the id counter, the supervisor events' table, reading
events back, and the head this master knows of (see ``store.Store``'s events part, and
``sqlite_events`` for the same on SQLite).

Several masters may write one database, so the counter lives in it alone: a transaction
that gives out ids moves ``event_state``'s ``next`` row with ``UPDATE … RETURNING``, and
that row stays locked until it commits. Writers that take ids therefore commit one after
another in id order, and a reader never sees id N+1 committed before N. (A sequence would
not do: ``nextval`` order is not commit order.) The same transaction notifies
``hiscrm_events`` with its head, which PostgreSQL delivers at the commit, to every
master's listener (``pg_listener``).
"""

import json
import threading
from typing import Any

from psycopg.rows import dict_row
from structlog.typing import FilteringBoundLogger

from hiscrm.event_names import item_event
from hiscrm.items import KINDS
from hiscrm.master.data.pg_queries import item_row
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.store import (
    EventQuery,
    EventWindow,
    HeadCallback,
    NewEvent,
    StoredEvent,
)

CHANNEL = "hiscrm_events"  # NOTIFY'd with the head by every commit that gives out ids

_RESERVE = (
    "WITH taken AS (UPDATE event_state SET value = value + %s WHERE key = 'next' "
    "RETURNING value) "
    f"SELECT value, pg_notify('{CHANNEL}', (value - 1)::text) FROM taken"
)


class EventHead:
    """The newest event id this master knows committed (its own commits', and other
    masters' as its listener hears of them) and the floor of what is kept: cached, since
    ``event_window`` is asked often and cannot wait for the database. ``on_head`` is
    called once per rise, in order, whichever thread saw it."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._lock = threading.Lock()
        self._floor_lock = threading.Lock()
        self._on_head: HeadCallback = lambda head: None
        self.head = 0
        self.floor = 0
        self.errors = 0  # the callback failed

    def watch(self, on_head: HeadCallback) -> None:
        self._on_head = on_head

    def raise_floor(self, floor: int) -> None:
        """Supervisor events up to ``floor`` are pruned, or are about to be (this master's
        writer raises it before its pruning commits; a read of the stored floor after the
        events raises it with what other masters pruned)."""
        with self._floor_lock:
            self.floor = max(self.floor, floor)

    def window(self) -> EventWindow:
        """Every event above the floor is still there: supervisor events were pruned up
        to it only, and item events are read from the items' rows whatever their number
        (an item deleted by retention is simply gone)."""
        return EventWindow(self.floor, self.head)

    def rise(self, head: int) -> None:
        """Events up to ``head`` are committed; tell the watcher if that is news."""
        with self._lock:
            if head <= self.head:
                return
            self.head = head
            try:
                self._on_head(head)
            except Exception as exc:  # the listener's bug must not stop the store
                self.errors += 1
                self._log.error("event listener failed", head=head, exc_info=exc)


def load(conn: Conn) -> tuple[int, int]:
    """The head and the floor, as stored."""
    values = dict(conn.execute("SELECT key, value FROM event_state").fetchall())
    return int(values["next"]) - 1, int(values["floor"])


def stored_floor(conn: Conn) -> int:
    row = conn.execute("SELECT value FROM event_state WHERE key = 'floor'").fetchone()
    assert row is not None, "event_state has no 'floor' row"
    return int(row[0])


def stored_head(conn: Conn) -> int:
    row = conn.execute("SELECT value - 1 FROM event_state WHERE key = 'next'").fetchone()
    assert row is not None, "event_state has no 'next' row"
    return int(row[0])


def reserve(conn: Conn, count: int) -> int:
    """Inside a transaction: ``count`` ids from the returned first one are this
    transaction's (its head ``first + count - 1`` is notified at the commit). The counter
    stays locked until the transaction ends: take the ids as late as can be."""
    row = conn.execute(_RESERVE, (count,)).fetchone()
    assert row is not None, "event_state has no 'next' row"
    return int(row[0]) - count


def insert(conn: Conn, first_id: int, events: list[NewEvent]) -> None:
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO events (id, name, at, account_id, data) VALUES (%s, %s, %s, %s, %s)",
            [
                (first_id + n, e.name, e.at, e.account_id, _json(e.data))
                for n, e in enumerate(events)
            ],
        )


def prune_floor(conn: Conn, keep: int, keep_s: float, now_ms: int) -> int:
    """The floor that pruning supervisor events beyond the newest ``keep`` or older than
    ``keep_s`` raises to: the highest id to delete, or the floor as stored (another
    master may have raised it)."""
    cutoff = now_ms - int(keep_s * 1000)
    row = conn.execute(
        "SELECT greatest("
        "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET %s), "
        "(SELECT max(id) FROM events WHERE at < %s), "
        "(SELECT value FROM event_state WHERE key = 'floor'))",
        (keep, cutoff),
    ).fetchone()
    assert row is not None
    return int(row[0])


def prune(conn: Conn, upto: int) -> None:
    """Delete the supervisor events up to ``upto`` and raise the floor to it."""
    conn.execute("DELETE FROM events WHERE id <= %s", (upto,))
    conn.execute(
        "UPDATE event_state SET value = %s WHERE key = 'floor' AND value < %s", (upto, upto)
    )


def read(conn: Conn, query: EventQuery) -> list[StoredEvent]:
    """Each table's matching events (on its event index), merged by id."""
    order = "DESC" if query.last else "ASC"
    account = query.filter.account_id
    found: list[StoredEvent] = []
    cursor = conn.cursor(row_factory=dict_row)
    for kind_name in query.filter.kinds:
        kind = KINDS[kind_name]
        sql = f"SELECT * FROM {kind.collection} WHERE event_id > %s AND event_id <= %s"
        params: list[Any] = [query.after, query.upto]
        if account is not None:
            sql += " AND account_id = %s"
            params.append(account)
        sql += f" ORDER BY event_id {order} LIMIT %s"
        params.append(query.limit)
        name = item_event(kind_name)
        for row in cursor.execute(sql, params).fetchall():
            event_id = int(row["event_id"])
            item = item_row(kind, row)
            found.append(StoredEvent(event_id, name, item["account_id"], _json(item)))
    names = query.filter.supervisor_events
    if names:
        sql = "SELECT id, name, account_id, data FROM events WHERE id > %s AND id <= %s"
        sql += " AND name = ANY(%s)"
        params = [query.after, query.upto, list(names)]
        if account is not None:
            sql += " AND account_id = %s"
            params.append(account)
        sql += f" ORDER BY id {order} LIMIT %s"
        params.append(query.limit)
        rows = cursor.execute(sql, params).fetchall()
        found += [StoredEvent(r["id"], r["name"], r["account_id"], r["data"]) for r in rows]
    found.sort(key=lambda e: e.id, reverse=query.last)
    del found[query.limit :]
    if query.last:
        found.reverse()
    return found


def _json(value: dict[str, Any]) -> str:
    """As SQLite's store writes it, so both serve the same bytes."""
    return json.dumps(value, separators=(",", ":"))
