"""The SQLite data store: schema, migrations, and the statements that read and write it.

One table per kind of item (``conversations``, ``messages``, …) whose columns are the
fields of the item model, keyed by the canonical id ``(account_id, id)``; the table is
the kind. Merge rule per field: what the worker observes is replaced by a newer version
(``WHERE excluded.version > version``, so replays and stale resends change nothing); what
the master owns (``is_read``, ``read_at``) is never touched by a sync.

Functions here take a connection and do not own threads: ``store_thread`` is the one
writer, in its own thread.
"""

import json
import sqlite3
import types
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from hiscrm.items import COLLECTIONS, ITEM_MODELS, AnyItem
from hiscrm.protocol import ItemChange

SCHEMA_VERSION = 1
TABLES: dict[str, str] = {kind: table for table, kind in COLLECTIONS.items()}  # kind -> table
SYNC_COLUMNS = ["account_id", "id", "version", "hash", "seq", "synced_at"]
MASTER_OWNED: dict[str, list[tuple[str, str]]] = {
    "message": [("is_read", "INTEGER NOT NULL DEFAULT 0"), ("read_at", "INTEGER")],
    "comment": [("is_read", "INTEGER NOT NULL DEFAULT 0"), ("read_at", "INTEGER")],
}
# The time that retention and default ordering go by, per kind.
TIME_FIELD: dict[str, str] = {
    "conversation": "last_message_at",
    "message": "sent_at",
    "comment": "created_at",
    "content": "published_at",
    "notification": "created_at",
}
INDEXES: dict[str, list[list[str]]] = {
    "conversation": [["account_id", "last_message_at"]],
    # Each index costs every write (~30% for a third one on messages); unread filters
    # ride on the time index.
    "message": [["account_id", "sent_at"], ["account_id", "conversation_id", "sent_at"]],
    "comment": [["account_id", "created_at"], ["account_id", "content_id", "created_at"]],
    "content": [["account_id", "published_at"]],
    "notification": [["account_id", "created_at"]],
}


class StoreError(Exception):
    pass


def observed_fields(kind: str) -> list[str]:
    """The item model's fields that are columns (everything but ``id`` and ``kind``)."""
    return [name for name in ITEM_MODELS[kind].model_fields if name not in ("id", "kind")]


def _sql_type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _sql_type(inner[0])
    if origin is Literal or annotation is str:
        return "TEXT"
    if annotation in (int, bool) or (
        hasattr(annotation, "__metadata__") and int in get_args(annotation)
    ):
        return "INTEGER"
    if origin in (list, dict):
        return "TEXT"  # JSON
    if get_args(annotation) and get_args(annotation)[0] is int:  # Annotated[int, ...]
        return "INTEGER"
    return "TEXT"


def _json_fields(kind: str) -> set[str]:
    model = ITEM_MODELS[kind]
    return {n for n, f in model.model_fields.items() if get_origin(f.annotation) in (list, dict)}


def create_table_sql(kind: str) -> list[str]:
    model, table = ITEM_MODELS[kind], TABLES[kind]
    columns = [
        "account_id TEXT NOT NULL",
        "id TEXT NOT NULL",
        "version INTEGER NOT NULL",
        "hash TEXT NOT NULL",
        "seq INTEGER NOT NULL",
        "synced_at INTEGER NOT NULL",
    ]
    columns += [
        f"{name} {_sql_type(model.model_fields[name].annotation)}" for name in observed_fields(kind)
    ]
    columns += [f"{name} {decl}" for name, decl in MASTER_OWNED.get(kind, [])]
    statements = [
        f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY (account_id, id)) WITHOUT ROWID"
    ]
    for fields in INDEXES[kind]:
        statements.append(
            f"CREATE INDEX {table}_by_{'_'.join(fields[1:])} ON {table} ({', '.join(fields)})"
        )
    return statements


def _migration_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL DEFAULT 0, "
        "last_sync_at INTEGER)"
    )
    for kind in ITEM_MODELS:
        for statement in create_table_sql(kind):
            conn.execute(statement)


MIGRATIONS = {1: _migration_1}  # version -> step that brings the schema to it


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a commit survives a crash of the process
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to SCHEMA_VERSION; returns the version found before."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {found}, this program knows up to {SCHEMA_VERSION}"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[version](conn)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


class Upserter:
    """Prepared upsert statements, one per kind."""

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}
        self._fields: dict[str, list[str]] = {}
        self._json: dict[str, set[str]] = {}
        for kind, table in TABLES.items():
            fields = observed_fields(kind)
            columns = SYNC_COLUMNS + fields
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
            placeholders = ", ".join("?" * len(columns))
            self._sql[kind] = (
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
                f"ON CONFLICT (account_id, id) DO UPDATE SET {updates} "
                f"WHERE excluded.version > {table}.version"
            )
            self._fields[kind] = fields
            self._json[kind] = _json_fields(kind)

    def rows(
        self, account_id: str, changes: Iterable[ItemChange], synced_at: int
    ) -> dict[str, list[tuple[Any, ...]]]:
        by_kind: dict[str, list[tuple[Any, ...]]] = {}
        for change in changes:
            item: AnyItem = change.item
            kind = item.kind
            as_json = self._json[kind]
            values = [
                json.dumps(getattr(item, f)) if f in as_json else getattr(item, f)
                for f in self._fields[kind]
            ]
            by_kind.setdefault(kind, []).append(
                (account_id, item.id, change.version, change.hash, change.seq, synced_at, *values)
            )
        return by_kind

    def write(self, conn: sqlite3.Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        for kind, kind_rows in rows.items():
            conn.executemany(self._sql[kind], kind_rows)


def committed_seq(conn: sqlite3.Connection, account_id: str) -> int:
    row = conn.execute("SELECT acked_seq FROM accounts WHERE id = ?", (account_id,)).fetchone()
    return int(row[0]) if row else 0


def record_commit(conn: sqlite3.Connection, account_id: str, seq: int, at: int) -> None:
    conn.execute(
        "INSERT INTO accounts (id, acked_seq, last_sync_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET acked_seq = max(acked_seq, excluded.acked_seq), "
        "last_sync_at = excluded.last_sync_at",
        (account_id, seq, at),
    )


def digest(conn: sqlite3.Connection, account_id: str) -> list[tuple[str, str, int, str]]:
    """``(kind, id, version, hash)`` of every item the store holds for the account."""
    entries: list[tuple[str, str, int, str]] = []
    for kind, table in TABLES.items():
        rows = conn.execute(
            f"SELECT id, version, hash FROM {table} WHERE account_id = ?", (account_id,)
        )
        entries += [(kind, r[0], r[1], r[2]) for r in rows]
    return entries


def apply_retention(
    conn: sqlite3.Connection, keep_days: dict[str, float], now_ms: int
) -> dict[str, int]:
    """Delete items older than their kind's retention; returns how many per table."""
    deleted: dict[str, int] = {}
    for table, days in keep_days.items():
        kind = COLLECTIONS[table]
        cutoff = now_ms - int(days * 86_400_000)
        cursor = conn.execute(
            f"DELETE FROM {table} WHERE coalesce({TIME_FIELD[kind]}, synced_at) < ?", (cutoff,)
        )
        deleted[table] = cursor.rowcount
    return deleted


def count_items(conn: sqlite3.Connection, account_id: str | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for table in COLLECTIONS:
        if account_id is None:
            row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        else:
            row = conn.execute(
                f"SELECT count(*) FROM {table} WHERE account_id = ?", (account_id,)
            ).fetchone()
        counts[table] = int(row[0])
    return counts


def rows_as_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names: Sequence[str] = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]
