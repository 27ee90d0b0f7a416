"""The SQLite store's schema, migrations, and the statements that write it.

One table per kind of item, named for its collection, whose columns are the fields of
the kind's model (``hiscrm.items.KINDS``), keyed by the canonical id ``(account_id,
id)``. Merge rule per field: what the worker observes is replaced by a newer version
(``WHERE excluded.version > version``, so replays and stale resends change nothing); what
the master owns (the kind's ``master_owned`` fields) is never touched by a sync.

Functions here take a connection and do not own threads: ``sqlite_writer`` is the one
writer, in its own thread.
"""

import json
import operator
import sqlite3
import types
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from hiscrm.items import BY_COLLECTION, KINDS, Kind
from hiscrm.master.data.store import AccountRecord, DigestEntry
from hiscrm.sync_wire import ChangeView

SCHEMA_VERSION = 6
SYNC_COLUMNS = ["account_id", "id", "version", "hash", "seq", "synced_at", "event_id"]


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


def create_table_sql(kind: Kind) -> list[str]:
    table = kind.collection
    columns = [
        "account_id TEXT NOT NULL",
        "id TEXT NOT NULL",
        "version INTEGER NOT NULL",
        "hash TEXT NOT NULL",
        "seq INTEGER NOT NULL",
        "synced_at INTEGER NOT NULL",
        "event_id INTEGER",  # its latest change's event (NULL: stored before events were)
    ]
    fields = kind.model.model_fields
    columns += [f"{name} {_sql_type(fields[name].annotation)}" for name in kind.observed_fields]
    columns += [f"{owned.name} {owned.sql}" for owned in kind.master_owned]
    statements = [
        f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY (account_id, id)) WITHOUT ROWID"
    ]
    for index in kind.indexes:
        statements.append(
            f"CREATE INDEX {table}_by_{'_'.join(index)} ON {table} (account_id, {', '.join(index)})"
        )
    statements.append(item_event_index_sql(table))
    return statements


def item_event_index_sql(collection: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {collection}_by_event ON {collection} (event_id)"


EVENTS_SQL = [
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
    "at INTEGER NOT NULL, account_id TEXT, data TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS event_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO event_state (key, value) VALUES ('next', 1), ('floor', 0)",
]


def _migration_1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, acked_seq INTEGER NOT NULL DEFAULT 0, "
        "last_sync_at INTEGER)"
    )
    for kind in KINDS.values():
        for statement in create_table_sql(kind):
            conn.execute(statement)


def _migration_2(conn: sqlite3.Connection) -> None:
    """The accounts become a registry; what the sync path keeps per account moves aside."""
    conn.execute("ALTER TABLE accounts RENAME TO account_sync")
    conn.execute(
        "CREATE TABLE accounts (id TEXT PRIMARY KEY, platform TEXT NOT NULL, "
        "options TEXT NOT NULL DEFAULT '{}', enabled INTEGER NOT NULL DEFAULT 1, "
        "source TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL)"
    )


def _migration_3(conn: sqlite3.Connection) -> None:
    """Events: an id counter, the supervisor events' table, and each item's latest
    change's event id (items stored before have none: they are not replayed)."""
    for statement in EVENTS_SQL:
        conn.execute(statement)
    for kind in KINDS.values():
        table = kind.collection
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if "event_id" not in have:  # a table made by migration 1 of this program has it
            conn.execute(f"ALTER TABLE {table} ADD COLUMN event_id INTEGER")
        conn.execute(item_event_index_sql(table))


OUTBOX_SQL = [
    "CREATE TABLE IF NOT EXISTS outbox (account_id TEXT NOT NULL, request_id TEXT NOT NULL, "
    "seq INTEGER NOT NULL, body_hash TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, "
    "state TEXT NOT NULL, error TEXT, item_id TEXT, attempts INTEGER NOT NULL, "
    "created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, sent_at INTEGER, "
    "PRIMARY KEY (account_id, request_id))",
    "CREATE INDEX IF NOT EXISTS outbox_by_account ON outbox (account_id, seq)",
    "CREATE INDEX IF NOT EXISTS outbox_by_state ON outbox (state, seq)",
]


def _migration_4(conn: sqlite3.Connection) -> None:
    """The outbox: replies waiting, being sent, and what became of them."""
    for statement in OUTBOX_SQL:
        conn.execute(statement)


def _migration_5(conn: sqlite3.Connection) -> None:
    """The outbox: when each reply last became queued (expiry counts from it; NULL in
    rows made before: their ``created_at``)."""
    conn.execute("ALTER TABLE outbox ADD COLUMN queued_at INTEGER")


def _migration_6(conn: sqlite3.Connection) -> None:
    """The accounts: each one's own memory limit while it runs alone (NULL: the workers')."""
    conn.execute("ALTER TABLE accounts ADD COLUMN max_memory_mb INTEGER")


# version -> the step that brings it there
MIGRATIONS = {
    1: _migration_1,
    2: _migration_2,
    3: _migration_3,
    4: _migration_4,
    5: _migration_5,
    6: _migration_6,
}


def _add_missing_kinds(conn: sqlite3.Connection) -> list[str]:
    """Tables for kinds added to the registry since the store was made (a new kind needs
    no migration of its own)."""
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    added = [kind for kind in KINDS.values() if kind.collection not in have]
    for kind in added:
        for statement in create_table_sql(kind):
            conn.execute(statement)
    return [kind.collection for kind in added]


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


class SchemaTooNew(Exception):
    pass


class Damaged(Exception):
    """The file is not a usable store; the message says how and what to do."""


REMEDY = "restore it from a backup, or move it away to start an empty store"


def open_checked(path: Path) -> sqlite3.Connection:
    """Open the store for writing after SQLite's own quick check (about 0.2 s a quarter
    gigabyte): a damaged or foreign file stops the master at start, not later."""
    conn = connect_quietly(path)
    try:
        result = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise Damaged(f"it is not a usable SQLite database ({exc}): {REMEDY}") from exc
    if result != ["ok"]:
        conn.close()
        raise Damaged(f"it is damaged ({'; '.join(result)}): {REMEDY}")
    return conn


def connect_quietly(path: Path) -> sqlite3.Connection:
    try:
        return connect(path)
    except sqlite3.DatabaseError as exc:
        raise Damaged(f"it is not a usable SQLite database ({exc}): {REMEDY}") from exc


def check_columns(conn: sqlite3.Connection) -> None:
    """Every table and column this program writes is there (a table dropped or altered
    by hand is refused at start, not discovered at the first write)."""
    expected = {
        "account_sync": ["id", "acked_seq", "last_sync_at"],
        "accounts": [
            *("id", "platform", "options", "enabled", "source", "created_at", "updated_at"),
            "max_memory_mb",
        ],
        "events": ["id", "name", "at", "account_id", "data"],
        "event_state": ["key", "value"],
        "outbox": ["account_id", "request_id", "seq", "state", "action", "updated_at", "queued_at"],
    }
    for kind in KINDS.values():
        expected[kind.collection] = (
            SYNC_COLUMNS + kind.observed_fields + [owned.name for owned in kind.master_owned]
        )
    for table, columns in expected.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if not have:
            raise Damaged(f"table {table!r} is missing: {REMEDY}")
        missing = [c for c in columns if c not in have]
        if missing:
            raise Damaged(f"table {table!r} lacks columns {', '.join(missing)}: {REMEDY}")


def migrate(conn: sqlite3.Connection) -> tuple[int, list[str]]:
    """Bring the schema to SCHEMA_VERSION; returns the version found before and the
    tables of new kinds it added."""
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    found = row[0] if row else 0
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"the store has schema version {found}, this program knows up to {SCHEMA_VERSION}"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
        added = _add_missing_kinds(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found, added


class Upserter:
    """Prepared upsert statements, one per kind. A row lists the item's own values first
    (``id``, then the observed fields in the model's order: one ``attrgetter`` reads them
    all, from a pydantic item or its wire twin alike), then the sync's columns."""

    def __init__(self) -> None:
        self._sql: dict[str, str] = {}
        self._columns: dict[str, list[str]] = {}
        self._read: dict[str, Callable[[Any], tuple[Any, ...]]] = {}
        self._json_at: dict[str, frozenset[int]] = {}  # positions of JSON text in a row
        for name, kind in KINDS.items():
            table = kind.collection
            fields = kind.observed_fields
            columns = ["id", *fields, *(c for c in SYNC_COLUMNS if c != "id")]
            updates = ", ".join(
                f"{c} = excluded.{c}" for c in columns if c not in ("id", "account_id")
            )
            placeholders = ", ".join("?" * len(columns))
            self._sql[name] = (
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders}) "
                f"ON CONFLICT (account_id, id) DO UPDATE SET {updates} "
                f"WHERE excluded.version > {table}.version"
            )
            self._columns[name] = columns
            self._read[name] = operator.attrgetter("id", *fields)
            self._json_at[name] = frozenset(
                n for n, f in enumerate(fields, 1) if f in kind.json_fields
            )

    def statement(self, kind: str) -> str:
        """The upsert of one kind's rows; their columns are ``columns(kind)``."""
        return self._sql[kind]

    def columns(self, kind: str) -> list[str]:
        return self._columns[kind]

    def rows(
        self, account_id: str, changes: Iterable[ChangeView], synced_at: int, first_event: int
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Rows by kind; the changes take event ids from ``first_event`` on, in order."""
        by_kind: dict[str, list[tuple[Any, ...]]] = {}
        read, json_at = self._read, self._json_at
        for event_id, change in enumerate(changes, first_event):
            item = change.item
            kind = item.kind
            values = read[kind](item)
            if json_at[kind]:
                at = json_at[kind]
                values = tuple(json.dumps(v) if n in at else v for n, v in enumerate(values))
            rows = by_kind.get(kind)
            if rows is None:
                rows = by_kind[kind] = []
            rows.append(
                (*values, account_id, change.version, change.hash, change.seq, synced_at, event_id)
            )
        return by_kind

    def write(
        self, conn: sqlite3.Connection, rows: dict[str, list[tuple[Any, ...]]]
    ) -> dict[str, int]:
        """Rows changed per kind (new or of a newer version): the item events."""
        return {kind: conn.executemany(self._sql[kind], r).rowcount for kind, r in rows.items()}


def committed_seq(conn: sqlite3.Connection, account_id: str) -> int:
    row = conn.execute("SELECT acked_seq FROM account_sync WHERE id = ?", (account_id,)).fetchone()
    return int(row[0]) if row else 0


def record_commit(conn: sqlite3.Connection, account_id: str, seq: int, at: int) -> None:
    conn.execute(
        "INSERT INTO account_sync (id, acked_seq, last_sync_at) VALUES (?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET acked_seq = max(acked_seq, excluded.acked_seq), "
        "last_sync_at = excluded.last_sync_at",
        (account_id, seq, at),
    )


def digest(conn: sqlite3.Connection, account_id: str) -> list[DigestEntry]:
    """``(kind, id, version, hash)`` of every item the store holds for the account."""
    entries: list[DigestEntry] = []
    for name, kind in KINDS.items():
        rows = conn.execute(
            f"SELECT id, version, hash FROM {kind.collection} WHERE account_id = ?", (account_id,)
        )
        entries += [(name, r[0], r[1], r[2]) for r in rows]
    return entries


def apply_retention(
    conn: sqlite3.Connection, keep_days: dict[str, float], now_ms: int
) -> dict[str, int]:
    """Delete items older than their collection's retention; returns how many per table."""
    deleted: dict[str, int] = {}
    for collection, days in keep_days.items():
        kind = BY_COLLECTION[collection]
        cutoff = now_ms - int(days * 86_400_000)
        cursor = conn.execute(
            f"DELETE FROM {collection} WHERE coalesce({kind.time_field}, synced_at) < ?", (cutoff,)
        )
        deleted[collection] = cursor.rowcount
    return deleted


def count_items(conn: sqlite3.Connection, account_id: str | None = None) -> dict[str, int]:
    counts: dict[str, int] = {}
    for collection in BY_COLLECTION:
        if account_id is None:
            row = conn.execute(f"SELECT count(*) FROM {collection}").fetchone()
        else:
            row = conn.execute(
                f"SELECT count(*) FROM {collection} WHERE account_id = ?", (account_id,)
            ).fetchone()
        counts[collection] = int(row[0])
    return counts


def rows_as_dicts(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    names: Sequence[str] = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor]


# --- the registry of accounts -----------------------------------------------------------


def list_accounts(conn: sqlite3.Connection) -> list[AccountRecord]:
    rows = conn.execute(
        "SELECT id, platform, options, enabled, source, created_at, updated_at, max_memory_mb "
        "FROM accounts ORDER BY created_at, id"
    )
    return [
        AccountRecord(r[0], r[1], json.loads(r[2]), bool(r[3]), r[4], r[5], r[6], r[7])
        for r in rows
    ]


def put_account(conn: sqlite3.Connection, record: AccountRecord) -> None:
    conn.execute(
        "INSERT INTO accounts (id, platform, options, enabled, source, created_at, updated_at, "
        "max_memory_mb) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
        "platform = excluded.platform, options = excluded.options, enabled = excluded.enabled, "
        "source = excluded.source, updated_at = excluded.updated_at, "
        "max_memory_mb = excluded.max_memory_mb",
        (
            record.id,
            record.platform,
            json.dumps(record.options),
            int(record.enabled),
            record.source,
            record.created_at,
            record.updated_at,
            record.max_memory_mb,
        ),
    )


def delete_account(conn: sqlite3.Connection, account_id: str, purge: bool) -> dict[str, int]:
    conn.execute("DELETE FROM accounts WHERE id = ?", (account_id,))
    if not purge:
        return {}
    deleted = {
        kind.collection: conn.execute(
            f"DELETE FROM {kind.collection} WHERE account_id = ?", (account_id,)
        ).rowcount
        for kind in KINDS.values()
    }
    conn.execute("DELETE FROM account_sync WHERE id = ?", (account_id,))
    deleted["outbox"] = conn.execute(
        "DELETE FROM outbox WHERE account_id = ?", (account_id,)
    ).rowcount
    return deleted
