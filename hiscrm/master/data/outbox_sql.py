"""The outbox's statements, the same on SQLite and PostgreSQL: one row per reply, keyed
by ``(account_id, request_id)``; each change of an entry and its ``reply.state`` event
are written in one transaction (the event's id also orders the entries: ``seq`` is the
id of the event that made it).

The SQL is written once with ``?`` marks; a backend's ``Dialect`` says its mark and how
it stores supervisor events."""

from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from hiscrm.items import BY_COLLECTION
from hiscrm.master.data.outbox_entry import (
    ACTION,
    OPEN,
    OutboxEntry,
    OutboxState,
    PageQuery,
    ReplyRefused,
    body_hash,
)
from hiscrm.master.data.store import NewEvent
from hiscrm.replies import CommentReply, MessageReply


class _Rows(Protocol):
    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What sqlite3's and psycopg's connections both offer."""

    def execute(self, sql: Any, params: Any = ..., /) -> _Rows: ...


class Dialect(msgspec.Struct, frozen=True):
    mark: str  # a parameter's placeholder: "?" (sqlite3) or "%s" (psycopg)
    insert_events: Callable[[Any, int, list[NewEvent]], None]

    def run(self, conn: Connection, sql: str, params: Any = ()) -> _Rows:
        return conn.execute(sql if self.mark == "?" else sql.replace("?", self.mark), params)


COLUMNS = (
    "account_id, request_id, seq, body_hash, action, target, state, error, item_id, "
    "attempts, created_at, updated_at, sent_at, queued_at"
)


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    return OutboxEntry(
        account_id=row[0],
        request_id=row[1],
        action=ACTION.validate_json(row[4]),
        state=OutboxState(row[6]),
        error=row[7],
        item_id=row[8],
        attempts=row[9],
        created_at=row[10],
        updated_at=row[11],
        sent_at=row[12],
        queued_at=row[13],
    )


def _exists(db: Dialect, conn: Connection, collection: str, account_id: str, item_id: str) -> bool:
    assert collection in BY_COLLECTION
    row = db.run(
        conn, f"SELECT 1 FROM {collection} WHERE account_id = ? AND id = ?", (account_id, item_id)
    ).fetchone()
    return row is not None


def check_target(db: Dialect, conn: Connection, entry: OutboxEntry) -> None:
    """ReplyRefused (422) unless the store knows the reply's target for the account."""
    action, account = entry.action, entry.account_id
    if isinstance(action, MessageReply):
        if not _exists(db, conn, "conversations", account, action.conversation_id):
            raise ReplyRefused(
                422, f"conversation {action.conversation_id!r} is not one of {account!r}'s"
            )
    elif isinstance(action, CommentReply):
        if not _exists(db, conn, "contents", account, action.content_id):
            raise ReplyRefused(422, f"content {action.content_id!r} is not one of {account!r}'s")
        if action.parent_id is not None:
            row = db.run(
                conn,
                "SELECT content_id FROM comments WHERE account_id = ? AND id = ?",
                (account, action.parent_id),
            ).fetchone()
            if row is None or row[0] != action.content_id:
                raise ReplyRefused(
                    422,
                    f"comment {action.parent_id!r} is not one of {account!r}'s on content "
                    f"{action.content_id!r}",
                )


def get(db: Dialect, conn: Connection, account_id: str, request_id: str) -> OutboxEntry | None:
    row = db.run(
        conn,
        f"SELECT {COLUMNS} FROM outbox WHERE account_id = ? AND request_id = ?",
        (account_id, request_id),
    ).fetchone()
    return _entry(row) if row else None


def _event(entry: OutboxEntry) -> NewEvent:
    return NewEvent("reply.state", entry.updated_at, entry.account_id, entry.as_json())


def create(
    db: Dialect, conn: Connection, first_id: int, entry: OutboxEntry
) -> tuple[OutboxEntry, bool]:
    """Inside a transaction with one event id: the entry made (True), or the one already
    under its request id (False) if its body is the same; ReplyRefused otherwise."""
    old = get(db, conn, entry.account_id, entry.request_id)
    if old is not None:
        if body_hash(old.action) != body_hash(entry.action):
            raise ReplyRefused(
                409,
                f"request_id {entry.request_id!r} was used for another reply of "
                f"{entry.account_id!r}: send a new request_id for a new reply",
            )
        return old, False
    check_target(db, conn, entry)
    db.run(
        conn,
        f"INSERT INTO outbox ({COLUMNS}) VALUES ({', '.join('?' * 14)})",
        (
            entry.account_id,
            entry.request_id,
            first_id,
            body_hash(entry.action),
            entry.action.model_dump_json(),
            entry.target,
            str(entry.state),
            entry.error,
            entry.item_id,
            entry.attempts,
            entry.created_at,
            entry.updated_at,
            entry.sent_at,
            entry.queued_at,
        ),
    )
    db.insert_events(conn, first_id, [_event(entry)])
    return entry, True


def save(db: Dialect, conn: Connection, first_id: int, entry: OutboxEntry) -> None:
    """Inside a transaction with one event id: the entry's new state, and its event."""
    db.run(
        conn,
        "UPDATE outbox SET state = ?, error = ?, item_id = ?, attempts = ?, updated_at = ?, "
        "sent_at = ?, queued_at = ? WHERE account_id = ? AND request_id = ?",
        (
            str(entry.state),
            entry.error,
            entry.item_id,
            entry.attempts,
            entry.updated_at,
            entry.sent_at,
            entry.queued_at,
            entry.account_id,
            entry.request_id,
        ),
    )
    db.insert_events(conn, first_id, [_event(entry)])


def page(
    db: Dialect, conn: Connection, account_id: str, query: PageQuery, limit: int, offset: int
) -> tuple[list[OutboxEntry], int]:
    where, params = "account_id = ?", list[str | int]([account_id])
    for sql, value in (
        ("state = ?", query.state),
        ("created_at >= ?", query.since),
        ("created_at < ?", query.until),
    ):
        if value is not None:
            where += f" AND {sql}"
            params.append(value)
    direction = "ASC" if query.order == "asc" else "DESC"
    rows = db.run(
        conn,
        f"SELECT {COLUMNS} FROM outbox WHERE {where} ORDER BY seq {direction} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    total = db.run(conn, f"SELECT count(*) FROM outbox WHERE {where}", params).fetchone()[0]
    return [_entry(r) for r in rows], int(total)


def open_entries(
    db: Dialect, conn: Connection, account_ids: list[str] | None = None
) -> list[OutboxEntry]:
    """Entries the master still acts on (of these accounts, or all), oldest first."""
    marks = ", ".join("?" * len(OPEN))
    params: list[str] = [str(s) for s in OPEN]
    where = f"state IN ({marks})"
    if account_ids is not None:
        where += f" AND account_id IN ({', '.join('?' * len(account_ids)) or 'NULL'})"
        params += account_ids
    rows = db.run(
        conn, f"SELECT {COLUMNS} FROM outbox WHERE {where} ORDER BY seq", params
    ).fetchall()
    return [_entry(r) for r in rows]
