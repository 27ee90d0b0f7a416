"""The PostgreSQL store's schema, migrations, and the statements that write it.

The same tables as SQLite's (``sqlite_schema``), derived from the same registry of kinds:
one table per kind named for its collection, the model's fields as columns, keyed by
``(account_id, id)``, the kind's indexes, and the same merge rule per field (observed
fields replaced by a newer version only, master-owned fields never touched by a sync).

Where PostgreSQL differs, the choice keeps SQLite's meaning:

- times, versions, counters: ``bigint`` (ms since the epoch do not fit ``integer``);
- lists and mappings: ``jsonb``: the store is shared with other programs (several
  masters, an operator's SQL), which can then query into them, and PostgreSQL checks
  them; reads come back decoded;
- text columns: ``COLLATE "C"``: sorting by ``id`` or ``title`` is by code point, as in
  SQLite, whatever the database's locale, and their indexes stay plain byte compares;
- indexes with ``NULLS FIRST``: SQLite sorts NULL first going up and last going down
  (PostgreSQL's default is the opposite), and a nullable time field (a conversation
  without messages) pages the same on both backends, from the index, either way;
- a supervisor event's ``data`` is ``text``, not ``jsonb``: it is served as stored, the
  same bytes as SQLite's (``jsonb`` would reorder and re-space it); ``data::jsonb``
  queries into it.

Events (``pg_events``): each item table's ``event_id`` (indexed) is the id of the item's
latest change, the ``events`` table holds the supervisor's events, and ``event_state``
the id counter (``next``) and the ``floor`` below which events were pruned.

Functions here take a connection and own no threads: ``pg_writer`` is the one writer.
"""

import json
import types
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import psycopg
from psycopg import pq
from psycopg.types.json import Jsonb

from hiscrm.items import BY_COLLECTION, KINDS, Kind, MasterField
from hiscrm.master.data import pg_commands, pg_leases
from hiscrm.master.data.store import AccountRecord, DigestEntry
from hiscrm.sync_wire import ChangeView

SCHEMA_VERSION = 9
SYNC_COLUMNS = {
    "account_id": "text",
    "id": "text",
    "version": "bigint",
    "hash": "text",
    "seq": "bigint",
    "synced_at": "bigint",
    "event_id": "bigint",  # its latest change's event (NULL: stored before events were)
}
NULLABLE = frozenset({"event_id"})
MIGRATION_LOCK = 0x68697363726D  # an advisory lock: masters starting together migrate in turn

Conn = psycopg.Connection[Any]


class SchemaTooNew(Exception):
    pass


def pg_type(annotation: Any) -> str:
    """The column type of a model field."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return pg_type(inner[0])
    if origin in (list, dict):
        return "jsonb"
    if annotation is bool:
        return "boolean"
    if annotation is int or (get_args(annotation) and get_args(annotation)[0] is int):
        return "bigint"  # int, or Annotated[StrictInt, ...] (times, counters)
    if origin is Literal or annotation is str:
        return "text"
    return "text"


def _declared(column_type: str) -> str:
    return f'{column_type} COLLATE "C"' if column_type == "text" else column_type


def _master_owned(owned: MasterField) -> str:
    """A master-owned column, from its type: optional ones start NULL, others at the zero
    of their type."""
    column_type = pg_type(owned.annotation)
    args = get_args(owned.annotation)
    if type(None) in args:
        return f"{owned.name} {_declared(column_type)}"
    zero = {"boolean": "false", "bigint": "0", "jsonb": "'[]'"}.get(column_type, "''")
    return f"{owned.name} {_declared(column_type)} NOT NULL DEFAULT {zero}"


def column_types(kind: Kind) -> dict[str, str]:
    """Every column a sync writes, with its type, in table order."""
    fields = kind.model.model_fields
    return SYNC_COLUMNS | {name: pg_type(fields[name].annotation) for name in kind.observed_fields}


def create_table_sql(kind: Kind) -> list[str]:
    table = kind.collection
    columns = [
        f"{name} {_declared(column_type)}"
        + (" NOT NULL" if name in SYNC_COLUMNS and name not in NULLABLE else "")
        for name, column_type in column_types(kind).items()
    ]
    columns += [_master_owned(owned) for owned in kind.master_owned]
    statements = [f"CREATE TABLE {table} ({', '.join(columns)}, PRIMARY KEY (account_id, id))"]
    for index in kind.indexes:
        ordered = ", ".join(f"{column} NULLS FIRST" for column in index)
        statements.append(
            f"CREATE INDEX {table}_by_{'_'.join(index)} ON {table} (account_id, {ordered})"
        )
    statements.append(item_event_index_sql(table))
    return statements


def item_event_index_sql(collection: str) -> str:
    return f"CREATE INDEX IF NOT EXISTS {collection}_by_event ON {collection} (event_id)"


EVENTS_SQL = [
    'CREATE TABLE IF NOT EXISTS events (id bigint PRIMARY KEY, name text COLLATE "C" NOT NULL, '
    'at bigint NOT NULL, account_id text COLLATE "C", data text NOT NULL)',
    'CREATE TABLE IF NOT EXISTS event_state (key text COLLATE "C" PRIMARY KEY, '
    "value bigint NOT NULL)",
    "INSERT INTO event_state (key, value) VALUES ('next', 1), ('floor', 0) "
    "ON CONFLICT (key) DO NOTHING",
]


def _migration_1(conn: Conn) -> None:
    conn.execute(
        'CREATE TABLE accounts (id text COLLATE "C" PRIMARY KEY, '
        "acked_seq bigint NOT NULL DEFAULT 0, last_sync_at bigint)"
    )
    for kind in KINDS.values():
        for statement in create_table_sql(kind):
            conn.execute(statement)


def _migration_2(conn: Conn) -> None:
    """The accounts become a registry; what the sync path keeps per account moves aside."""
    conn.execute("ALTER TABLE accounts RENAME TO account_sync")
    conn.execute(
        'CREATE TABLE accounts (id text COLLATE "C" PRIMARY KEY, platform text NOT NULL, '
        "options jsonb NOT NULL DEFAULT '{}', enabled boolean NOT NULL DEFAULT true, "
        "source text NOT NULL, created_at bigint NOT NULL, updated_at bigint NOT NULL)"
    )


def _migration_3(conn: Conn) -> None:
    """Events: an id counter, the supervisor events' table, and each item's latest
    change's event id (items stored before have none: they are not replayed)."""
    for statement in EVENTS_SQL:
        conn.execute(statement)
    have = _existing_tables(conn)  # a kind new since is made whole by _add_missing_kinds
    for kind in KINDS.values():
        table = kind.collection
        if table in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS event_id bigint")
            conn.execute(item_event_index_sql(table))


def _migration_4(conn: Conn) -> None:
    """The outbox: replies waiting, being sent, and what became of them (``outbox_sql``;
    ``action`` as text, the same bytes SQLite keeps)."""
    conn.execute(
        'CREATE TABLE outbox (account_id text COLLATE "C" NOT NULL, '
        'request_id text COLLATE "C" NOT NULL, seq bigint NOT NULL, body_hash text NOT NULL, '
        "action text NOT NULL, target text NOT NULL, state text NOT NULL, error text, "
        "item_id text, attempts bigint NOT NULL, created_at bigint NOT NULL, "
        "updated_at bigint NOT NULL, sent_at bigint, PRIMARY KEY (account_id, request_id))"
    )
    conn.execute("CREATE INDEX outbox_by_account ON outbox (account_id, seq)")
    conn.execute("CREATE INDEX outbox_by_state ON outbox (state, seq)")


def _migration_leases(conn: Conn) -> None:
    """The cluster: the nodes (masters) and the accounts' leases (``pg_leases``)."""
    pg_leases.migrate(conn)


def _migration_commands(conn: Conn) -> None:
    """The cluster: actions routed to the master holding an account (``pg_commands``)."""
    pg_commands.migrate(conn)


def _migration_wanted(conn: Conn) -> None:
    """The cluster: an account wanted by the node whose spool holds its unacknowledged
    changes (``pg_leases.want``)."""
    pg_leases.migrate_wanted(conn)


def _migration_queued_at(conn: Conn) -> None:
    """The outbox: when each reply last became queued (expiry counts from it; NULL in
    rows made before: their ``created_at``)."""
    conn.execute("ALTER TABLE outbox ADD COLUMN queued_at bigint")


def _migration_max_memory(conn: Conn) -> None:
    """The accounts: each one's own memory limit while it runs alone (NULL: the workers')."""
    conn.execute("ALTER TABLE accounts ADD COLUMN max_memory_mb integer")


MIGRATIONS = {
    1: _migration_1,
    2: _migration_2,
    3: _migration_3,
    4: _migration_4,
    5: _migration_leases,
    6: _migration_commands,
    7: _migration_wanted,
    8: _migration_queued_at,
    9: _migration_max_memory,
}  # version -> step that brings it there


def _existing_tables(conn: Conn) -> set[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    ).fetchall()
    return {r[0] for r in rows}


def _add_missing_kinds(conn: Conn) -> list[str]:
    """Tables for kinds added to the registry since the store was made."""
    have = _existing_tables(conn)
    added = [kind for kind in KINDS.values() if kind.collection not in have]
    for kind in added:
        for statement in create_table_sql(kind):
            conn.execute(statement)
    return [kind.collection for kind in added]


def migrate(conn: Conn) -> tuple[int, list[str]]:
    """Bring the schema to SCHEMA_VERSION in one transaction (DDL is transactional here);
    returns the version found before and the tables of new kinds it added."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the store has schema version {found}, this program knows up to {SCHEMA_VERSION}"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
        added = _add_missing_kinds(conn)
    return found, added


class Upserter:
    """One merge per kind for a whole group of changes: the rows are copied (``COPY``, the
    fastest way in) into a temporary table of the session, then upserted from it in one
    statement; the temporary table empties itself at the commit. (Rows sent as arrays
    through ``unnest`` took twice as long: ``bench/pg_sync.py``.)

    One statement cannot change a row twice, so each item's changes are first reduced to
    the one a sequence of single upserts would have kept: the first with the highest
    version (a later change of equal version is not newer, so it changes nothing).

    Each change of the group is numbered in commit order (from 0, whether it wins or
    not, as SQLite gives each one an id); the merge adds the group's first event id, so
    the ids can be taken from the counter after the copy, just before the merge: the
    counter's row stays locked for as short a time as can be."""

    def __init__(self) -> None:
        self._prepare: list[str] = []
        self._copy: dict[str, str] = {}
        self._merge: dict[str, str] = {}
        self._fields: dict[str, list[str]] = {}
        self._json: dict[str, frozenset[str]] = {}
        for name, kind in KINDS.items():
            table = kind.collection
            stage = f"staged_{table}"
            columns = list(column_types(kind))
            listed = ", ".join(columns)
            selected = ", ".join("event_id + %s" if c == "event_id" else c for c in columns)
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns[2:])
            self._prepare.append(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} "
                f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            self._copy[name] = f"COPY {stage} ({listed}) FROM STDIN"
            self._merge[name] = (
                f"INSERT INTO {table} AS t ({listed}) SELECT {selected} FROM {stage} "
                f"ON CONFLICT (account_id, id) DO UPDATE SET {updates} "
                f"WHERE excluded.version > t.version"
            )
            self._fields[name] = kind.observed_fields
            self._json[name] = kind.json_fields

    def prepare(self, conn: Conn) -> None:
        """Make the session's temporary tables; once per connection, after ``migrate``,
        outside any transaction (one rolled back would take them with it)."""
        for statement in self._prepare:
            conn.execute(statement)

    def rows(
        self, batches: Iterable[tuple[str, Sequence[ChangeView]]], synced_at: int
    ) -> dict[str, list[tuple[Any, ...]]]:
        """Rows by kind for ``(account id, changes)`` in commit order: per item, the change
        that would win, with its number among all the changes."""
        by_kind: dict[str, dict[tuple[str, str], tuple[Any, ...]]] = {}
        number = -1
        for account_id, changes in batches:
            for change in changes:
                number += 1
                item = change.item
                kind = item.kind
                rows = by_kind.setdefault(kind, {})
                kept = rows.get((account_id, item.id))
                if kept is not None and kept[2] >= change.version:
                    continue
                as_json = self._json[kind]
                values = [
                    json.dumps(getattr(item, f)) if f in as_json else getattr(item, f)
                    for f in self._fields[kind]
                ]
                rows[account_id, item.id] = (
                    account_id,
                    item.id,
                    change.version,
                    change.hash,
                    change.seq,
                    synced_at,
                    number,
                    *values,
                )
        return {kind: list(rows.values()) for kind, rows in by_kind.items()}

    def stage(self, conn: Conn, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        """Copy the rows in; inside a transaction (at its commit the temporary tables
        empty themselves)."""
        if conn.info.transaction_status != pq.TransactionStatus.INTRANS:
            raise RuntimeError("Upserter.stage needs a transaction")
        with conn.cursor() as cursor:
            for kind, kind_rows in rows.items():
                if not kind_rows:
                    continue
                with cursor.copy(self._copy[kind]) as copy:
                    for row in kind_rows:
                        copy.write_row(row)

    def merge(self, conn: Conn, rows: dict[str, list[tuple[Any, ...]]], first_event: int) -> None:
        """Upsert what ``stage`` copied in, the changes numbered from ``first_event``."""
        for kind, kind_rows in rows.items():
            if kind_rows:
                conn.execute(self._merge[kind], (first_event,))


def committed_seqs(conn: Conn, account_ids: list[str], *, lock: bool = False) -> dict[str, int]:
    """What the store has for each account (0 for one it has never seen); ``lock`` holds
    their rows until the transaction ends, so no other writer moves them meanwhile."""
    sql = "SELECT id, acked_seq FROM account_sync WHERE id = ANY(%s)"
    rows = conn.execute(sql + (" FOR UPDATE" if lock else ""), (account_ids,)).fetchall()
    found = {r[0]: int(r[1]) for r in rows}
    return {account_id: found.get(account_id, 0) for account_id in account_ids}


def record_commits(conn: Conn, seqs: dict[str, int], at: int) -> None:
    conn.execute(
        "INSERT INTO account_sync (id, acked_seq, last_sync_at) "
        "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) "
        "ON CONFLICT (id) DO UPDATE SET "
        "acked_seq = greatest(account_sync.acked_seq, excluded.acked_seq), "
        "last_sync_at = excluded.last_sync_at",
        (list(seqs), list(seqs.values()), [at] * len(seqs)),
    )


def digest(conn: Conn, account_id: str) -> list[DigestEntry]:
    """``(kind, id, version, hash)`` of every item the store holds for the account."""
    selects = " UNION ALL ".join(
        f"SELECT '{name}', id, version, hash FROM {kind.collection} WHERE account_id = %(a)s"
        for name, kind in KINDS.items()
    )
    rows = conn.execute(selects, {"a": account_id}).fetchall()
    return [(r[0], r[1], int(r[2]), r[3]) for r in rows]


def apply_retention(conn: Conn, keep_days: dict[str, float], now_ms: int) -> dict[str, int]:
    """Delete items older than their collection's retention; returns how many per table."""
    deleted: dict[str, int] = {}
    for collection, days in keep_days.items():
        kind = BY_COLLECTION[collection]
        cutoff = now_ms - int(days * 86_400_000)
        cursor = conn.execute(
            f"DELETE FROM {collection} WHERE coalesce({kind.time_field}, synced_at) < %s",
            (cutoff,),
        )
        deleted[collection] = cursor.rowcount
    return deleted


def count_items(conn: Conn, account_id: str | None = None) -> dict[str, int]:
    """Items per collection (of one account, or all), in one round trip."""
    where = "" if account_id is None else " WHERE account_id = %(a)s"
    counts = ", ".join(f"(SELECT count(*) FROM {c}{where})" for c in BY_COLLECTION)
    row = conn.execute(f"SELECT {counts}", {"a": account_id}).fetchone()
    assert row is not None
    return {collection: int(n) for collection, n in zip(BY_COLLECTION, row, strict=True)}


# --- the registry of accounts -----------------------------------------------------------


ACCOUNT_COLUMNS = "id, platform, options, enabled, source, created_at, updated_at, max_memory_mb"


def list_accounts(conn: Conn) -> list[AccountRecord]:
    rows = conn.execute(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY created_at, id")
    return [AccountRecord(*row) for row in rows.fetchall()]


def put_account(conn: Conn, record: AccountRecord) -> None:
    conn.execute(
        f"INSERT INTO accounts ({ACCOUNT_COLUMNS}) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE SET "
        "platform = excluded.platform, options = excluded.options, enabled = excluded.enabled, "
        "source = excluded.source, updated_at = excluded.updated_at, "
        "max_memory_mb = excluded.max_memory_mb",
        (
            record.id,
            record.platform,
            Jsonb(record.options),
            record.enabled,
            record.source,
            record.created_at,
            record.updated_at,
            record.max_memory_mb,
        ),
    )


def delete_account(conn: Conn, account_id: str, purge: bool) -> dict[str, int]:
    conn.execute("DELETE FROM accounts WHERE id = %s", (account_id,))
    if not purge:
        return {}
    deleted: dict[str, int] = {}
    for kind in KINDS.values():
        cursor = conn.execute(f"DELETE FROM {kind.collection} WHERE account_id = %s", (account_id,))
        deleted[kind.collection] = cursor.rowcount
    conn.execute("DELETE FROM account_sync WHERE id = %s", (account_id,))
    deleted["outbox"] = conn.execute(
        "DELETE FROM outbox WHERE account_id = %s", (account_id,)
    ).rowcount
    return deleted
