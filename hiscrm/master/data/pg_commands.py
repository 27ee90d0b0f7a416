"""Commands routed between the masters of a cluster through the store: an action on an
account that another master holds (``POST /accounts/{id}/sync``, a reply's cancel or
retry) is written to ``commands`` by the master that took the request, and carried out
once by the master holding the account's lease.

Every insert notifies ``hiscrm_commands`` (``cmd:<id>``) at its commit; every master
hears it, and the one whose lease on the account is live *takes* the command (``pending``
→ ``running``, in one statement that also checks the lease), so it runs once at most,
whichever masters hear it. The taker writes the outcome (``done`` with its result, or
``failed`` with why) and notifies ``done:<id>``; the requester, waiting, reads it back. A
command nobody took in time is ``expired`` by its requester, in a statement that takes
it from ``pending`` too: it is either carried out or expired, never both.

The same channel carries ``outbox:<node>/<account>`` (a reply was stored through ``node``:
the account's holder, if another master, takes it in)
and ``accounts`` (the registry changed: every master follows it now rather than at its
next renewal).
"""

import json
from typing import Any

import msgspec
import psycopg

AConn = psycopg.AsyncConnection[Any]
Conn = psycopg.Connection[Any]
CHANNEL = "hiscrm_commands"

COMMANDS_SQL = [
    "CREATE TABLE commands (id bigserial PRIMARY KEY, "
    'account_id text COLLATE "C" NOT NULL, kind text NOT NULL, args text NOT NULL, '
    "requested_by text NOT NULL, state text NOT NULL DEFAULT 'pending', node text, "
    "result text, error text, created_at timestamptz NOT NULL DEFAULT now(), "
    "done_at timestamptz)",
    "CREATE INDEX commands_pending ON commands (account_id) WHERE state = 'pending'",
]
KEEP_DONE = "1 hour"  # finished commands are deleted after this


def migrate(conn: Conn) -> None:
    for statement in COMMANDS_SQL:
        conn.execute(statement)


def notify(conn: Conn, payload: str) -> None:
    """Inside a transaction: tell every master at the commit."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


class Command(msgspec.Struct, frozen=True):
    id: int
    account_id: str
    kind: str
    args: dict[str, Any]


class Outcome(msgspec.Struct, frozen=True):
    state: str  # pending, running, done, failed, expired
    node: str | None
    result: dict[str, Any] | None
    error: str | None


async def submit(conn: AConn, account_id: str, kind: str, args: dict[str, Any], by: str) -> int:
    async with conn.transaction():
        cursor = await conn.execute(
            "INSERT INTO commands (account_id, kind, args, requested_by) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (account_id, kind, json.dumps(args), by),
        )
        row = await cursor.fetchone()
        assert row is not None
        command_id = int(row[0])
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"cmd:{command_id}"))
        await conn.execute(f"DELETE FROM commands WHERE done_at < now() - interval '{KEEP_DONE}'")
    return command_id


async def take(conn: AConn, command_id: int, node: str) -> Command | None:
    """The command, if it is still pending and this node holds a live lease on its
    account (it is then this node's to carry out); None otherwise."""
    cursor = await conn.execute(
        "UPDATE commands c SET state = 'running', node = %s "
        "WHERE c.id = %s AND c.state = 'pending' AND EXISTS (SELECT 1 FROM account_leases l "
        "WHERE l.account_id = c.account_id AND l.node_id = %s AND l.expires_at > now()) "
        "RETURNING c.id, c.account_id, c.kind, c.args",
        (node, command_id, node),
    )
    row = await cursor.fetchone()
    return None if row is None else Command(int(row[0]), row[1], row[2], json.loads(row[3]))


async def pending_here(conn: AConn, node: str) -> list[int]:
    """Pending commands on accounts this node holds (missed while it was not listening)."""
    cursor = await conn.execute(
        "SELECT c.id FROM commands c JOIN account_leases l ON l.account_id = c.account_id "
        "WHERE c.state = 'pending' AND l.node_id = %s AND l.expires_at > now() ORDER BY c.id",
        (node,),
    )
    return [int(r[0]) for r in await cursor.fetchall()]


async def finish(
    conn: AConn, command_id: int, result: dict[str, Any] | None, error: str | None
) -> None:
    async with conn.transaction():
        await conn.execute(
            "UPDATE commands SET state = %s, result = %s, error = %s, done_at = now() "
            "WHERE id = %s AND state = 'running'",
            (
                "failed" if error is not None else "done",
                None if result is None else json.dumps(result),
                error,
                command_id,
            ),
        )
        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"done:{command_id}"))


async def expire(conn: AConn, command_id: int) -> bool:
    """The requester gives up on a command nobody took: True if it was still pending."""
    cursor = await conn.execute(
        "UPDATE commands SET state = 'expired', done_at = now() "
        "WHERE id = %s AND state = 'pending' RETURNING id",
        (command_id,),
    )
    return await cursor.fetchone() is not None


async def outcome(conn: AConn, command_id: int) -> Outcome:
    cursor = await conn.execute(
        "SELECT state, node, result, error FROM commands WHERE id = %s", (command_id,)
    )
    row = await cursor.fetchone()
    if row is None:
        return Outcome("expired", None, None, "the command is gone")
    return Outcome(row[0], row[1], None if row[2] is None else json.loads(row[2]), row[3])
