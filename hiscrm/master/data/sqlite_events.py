"""Events in the SQLite store: the id counter, the supervisor events' table, and reading
events back (see ``store.Store``'s events part).

Each item table has an ``event_id`` column (indexed): the id of the item's latest
change. The counter (``event_state``: ``next`` id, and the ``floor`` below which events
were pruned) is updated in the same transaction as the rows that take ids, so ids never
go back and commit order is id order.

What can be resumed (``EventIds.window``) ends below at that floor only: item events are
read back from the items' rows whatever their number, so ``[events] keep`` and
``keep_s`` bound the supervisor events alone.
"""

import json
import sqlite3

from hiscrm.event_names import item_event
from hiscrm.items import KINDS
from hiscrm.master.data.sqlite_queries import item_row
from hiscrm.master.data.sqlite_schema import rows_as_dicts
from hiscrm.master.data.store import EventQuery, EventWindow, NewEvent, StoredEvent


class EventIds:
    """The counter as the writer thread keeps it: read once, then advanced in memory only
    after the transaction that wrote it commits (a rollback gives nothing out)."""

    def __init__(self) -> None:
        self.next = 1
        self.floor = 0

    def load(self, conn: sqlite3.Connection) -> None:
        values = dict(conn.execute("SELECT key, value FROM event_state").fetchall())
        self.next, self.floor = int(values["next"]), int(values["floor"])

    def reserve(self, conn: sqlite3.Connection, count: int) -> int:
        """Inside a transaction: ``count`` ids from the returned first one are this
        transaction's; ``committed`` makes them given out."""
        conn.execute("UPDATE event_state SET value = ? WHERE key = 'next'", (self.next + count,))
        return self.next

    def committed(self, count: int) -> int:
        """After the commit; returns the head (the last id given out)."""
        self.next += count
        return self.next - 1

    def window(self) -> EventWindow:
        """Every event above the floor is still there: supervisor events were pruned up
        to it only, and item events are read from the items' rows (an item deleted by
        retention is simply gone)."""
        return EventWindow(self.floor, self.next - 1)


def insert(conn: sqlite3.Connection, first_id: int, events: list[NewEvent]) -> None:
    conn.executemany(
        "INSERT INTO events (id, name, at, account_id, data) VALUES (?, ?, ?, ?, ?)",
        [
            (first_id + n, e.name, e.at, e.account_id, json.dumps(e.data, separators=(",", ":")))
            for n, e in enumerate(events)
        ],
    )


def prune_floor(conn: sqlite3.Connection, keep: int, keep_s: float, now_ms: int) -> int:
    """The floor that pruning supervisor events beyond the newest ``keep`` or older than
    ``keep_s`` raises to: the highest id to delete, or the floor as it is."""
    cutoff = now_ms - int(keep_s * 1000)
    row = conn.execute(
        "SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?", (keep,)
    ).fetchone()
    by_count = int(row[0]) if row else 0
    row = conn.execute("SELECT max(id) FROM events WHERE at < ?", (cutoff,)).fetchone()
    by_age = int(row[0]) if row and row[0] is not None else 0
    floor = int(conn.execute("SELECT value FROM event_state WHERE key = 'floor'").fetchone()[0])
    return max(by_count, by_age, floor)


def prune(conn: sqlite3.Connection, upto: int) -> None:
    """Delete the supervisor events up to ``upto`` and raise the floor to it."""
    conn.execute("DELETE FROM events WHERE id <= ?", (upto,))
    conn.execute("UPDATE event_state SET value = ? WHERE key = 'floor' AND value < ?", (upto, upto))


def read(conn: sqlite3.Connection, query: EventQuery) -> list[StoredEvent]:
    """Each table's matching events (on its event index), merged by id."""
    order = "DESC" if query.last else "ASC"
    account = query.filter.account_id
    found: list[StoredEvent] = []
    for kind_name in query.filter.kinds:
        kind = KINDS[kind_name]
        sql = f"SELECT * FROM {kind.collection} WHERE event_id > ? AND event_id <= ?"
        params: list[object] = [query.after, query.upto]
        if account is not None:
            sql += " AND account_id = ?"
            params.append(account)
        sql += f" ORDER BY event_id {order} LIMIT ?"
        params.append(query.limit)
        name = item_event(kind_name)
        for row in rows_as_dicts(conn.execute(sql, params)):
            event_id = int(row["event_id"])
            item = item_row(kind, row)
            found.append(StoredEvent(event_id, name, item["account_id"], _json(item)))
    names = query.filter.supervisor_events
    if names:
        marks = ", ".join("?" * len(names))
        sql = (
            "SELECT id, name, account_id, data FROM events "
            f"WHERE id > ? AND id <= ? AND name IN ({marks})"
        )
        params = [query.after, query.upto, *names]
        if account is not None:
            sql += " AND account_id = ?"
            params.append(account)
        sql += f" ORDER BY id {order} LIMIT ?"
        params.append(query.limit)
        found += [StoredEvent(r[0], r[1], r[2], r[3]) for r in conn.execute(sql, params)]
    found.sort(key=lambda e: e.id, reverse=query.last)
    del found[query.limit :]
    if query.last:
        found.reverse()
    return found


def _json(row: dict[str, object]) -> str:
    return json.dumps(row, separators=(",", ":"))
