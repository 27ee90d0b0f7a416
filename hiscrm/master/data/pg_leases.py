"""Leases of accounts among the masters (nodes) sharing one PostgreSQL store: the
statements, on a connection the caller gives (sync for the writer's fence, async for
the lease keeper).

``nodes`` has one row per master that runs (its capacity, API address, when it started
and last renewed, by the database's clock, and whether it is leaving). ``account_leases``
has one row per account that was ever leased: its owner node (NULL: free), the
``epoch`` (raised on every claim, so a node that lost the lease can be told apart from
the one that holds it now) and ``expires_at``. Every time is the database's ``now()``:
the masters' clocks are never compared with each other.

A node whose host's spools hold changes of an account that were never acknowledged (it
was killed or cut off while another node took the account on) marks the account
``wanted_by`` itself: the holder hands it over at its next round, other nodes do not
claim it while the wanting node is alive, and the wanting node claims it first (its
workers replay the spool, ``worker/spool_replay.py``); the claim clears the mark, and a
node that left or died wants nothing.

Rows are locked in account order everywhere (renewal, release, the writer's check), so
two of these never wait for each other in a cycle; claims skip rows locked by others
(``FOR UPDATE SKIP LOCKED``), so several masters claim at once without waiting.
"""

from typing import Any

import psycopg

from hiscrm.master.data.lease_view import ClusterView, LeaseRow, NodeRow

Conn = psycopg.Connection[Any]
AConn = psycopg.AsyncConnection[Any]
CHANNEL = "hiscrm_leases"  # NOTIFY: leases were let go (others may claim now)

LEASES_SQL = [
    'CREATE TABLE nodes (node_id text COLLATE "C" PRIMARY KEY, capacity integer NOT NULL, '
    "api_url text, pid integer, lease_ttl_s double precision NOT NULL, "
    "started_at timestamptz NOT NULL, renewed_at timestamptz NOT NULL, "
    "leaving boolean NOT NULL DEFAULT false)",
    'CREATE TABLE account_leases (account_id text COLLATE "C" PRIMARY KEY, '
    'node_id text COLLATE "C", epoch bigint NOT NULL DEFAULT 0, '
    "expires_at timestamptz NOT NULL DEFAULT '-infinity', "
    "state text, state_at bigint)",
    "CREATE INDEX account_leases_by_node ON account_leases (node_id)",
]


WANTED_SQL = 'ALTER TABLE account_leases ADD COLUMN wanted_by text COLLATE "C"'

# The node that wants the lease row ``l`` is alive and not leaving (by the database's clock).
_WANTER_ALIVE = (
    "EXISTS (SELECT 1 FROM nodes w WHERE w.node_id = l.wanted_by AND NOT w.leaving "
    "AND w.renewed_at > now() - make_interval(secs => w.lease_ttl_s))"
)


def migrate(conn: Conn) -> None:
    for statement in LEASES_SQL:
        conn.execute(statement)


def migrate_wanted(conn: Conn) -> None:
    conn.execute(WANTED_SQL)


# --- the lease keeper (async) ------------------------------------------------------------


async def join(
    conn: AConn, node_id: str, capacity: int, ttl_s: float, api_url: str | None, pid: int
) -> None:
    """This node runs (again): its row, renewed now."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO nodes (node_id, capacity, api_url, pid, lease_ttl_s, started_at, "
            "renewed_at, leaving) VALUES (%s, %s, %s, %s, %s, now(), now(), false) "
            "ON CONFLICT (node_id) DO UPDATE SET capacity = excluded.capacity, "
            "api_url = excluded.api_url, pid = excluded.pid, lease_ttl_s = excluded.lease_ttl_s, "
            "started_at = now(), renewed_at = now(), leaving = false",
            (node_id, capacity, api_url, pid, ttl_s),
        )


async def renew(
    conn: AConn, node_id: str, held: dict[str, int], ttl_s: float, leaving: bool
) -> set[str]:
    """Extend this node's leases it still holds at the epochs given; the node's row is
    renewed too. Returns the accounts renewed: one missing was taken (or let go)."""
    ids = sorted(held)
    async with conn.transaction():
        await conn.execute(
            "UPDATE nodes SET renewed_at = now(), leaving = %s WHERE node_id = %s",
            (leaving, node_id),
        )
        cursor = await conn.execute(
            "WITH mine AS (SELECT l.account_id FROM account_leases l "
            "JOIN unnest(%s::text[], %s::bigint[]) AS h(id, epoch) "
            "ON l.account_id = h.id AND l.epoch = h.epoch "
            "WHERE l.node_id = %s ORDER BY l.account_id FOR UPDATE OF l) "
            "UPDATE account_leases SET expires_at = now() + make_interval(secs => %s) "
            "FROM mine WHERE account_leases.account_id = mine.account_id "
            "RETURNING account_leases.account_id",
            (ids, [held[i] for i in ids], node_id, ttl_s),
        )
        return {r[0] for r in await cursor.fetchall()}


async def claim(
    conn: AConn, node_id: str, count: int, ttl_s: float, only: list[str] | None = None
) -> dict[str, int]:
    """Up to ``count`` enabled accounts that nobody holds (free, or their lease expired),
    skipping those another node is claiming right now and those another live node wants;
    their new epochs. ``only``: of these accounts alone."""
    if count <= 0 or (only is not None and not only):
        return {}
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO account_leases (account_id) SELECT id FROM accounts WHERE enabled "
            "ON CONFLICT (account_id) DO NOTHING"
        )
        cursor = await conn.execute(
            "WITH free AS (SELECT l.account_id FROM account_leases l "
            "JOIN accounts a ON a.id = l.account_id "
            "WHERE a.enabled AND (l.node_id IS NULL OR l.expires_at <= now()) "
            "AND (l.wanted_by IS NULL OR l.wanted_by = %(me)s OR NOT " + _WANTER_ALIVE + ") "
            "AND (%(only)s::text[] IS NULL OR l.account_id = ANY(%(only)s)) "
            "ORDER BY l.account_id LIMIT %(count)s FOR UPDATE OF l SKIP LOCKED) "
            "UPDATE account_leases SET node_id = %(me)s, epoch = account_leases.epoch + 1, "
            "expires_at = now() + make_interval(secs => %(ttl)s), wanted_by = NULL "
            "FROM free WHERE account_leases.account_id = free.account_id "
            "RETURNING account_leases.account_id, account_leases.epoch",
            {"count": count, "me": node_id, "ttl": ttl_s, "only": only},
        )
        return {r[0]: int(r[1]) for r in await cursor.fetchall()}


async def want(conn: AConn, node_id: str, account_ids: list[str]) -> None:
    """This node's spools hold changes of these accounts the store may lack: mark them
    wanted by it (their holders hand them over; nobody else claims them meanwhile)."""
    if not account_ids:
        return
    await conn.execute(
        "INSERT INTO account_leases (account_id, wanted_by) "
        "SELECT id, %(me)s FROM accounts WHERE id = ANY(%(ids)s) AND enabled ORDER BY id "
        "ON CONFLICT (account_id) DO UPDATE SET wanted_by = %(me)s "
        "WHERE account_leases.node_id IS DISTINCT FROM %(me)s "
        "AND account_leases.wanted_by IS DISTINCT FROM %(me)s",
        {"me": node_id, "ids": sorted(account_ids)},
    )


async def wanted_from(conn: AConn, node_id: str) -> dict[str, str]:
    """The accounts this node holds that another live node wants, and which node."""
    cursor = await conn.execute(
        "SELECT l.account_id, l.wanted_by FROM account_leases l "
        "WHERE l.node_id = %s AND l.wanted_by IS NOT NULL AND l.wanted_by <> l.node_id "
        "AND " + _WANTER_ALIVE + " ORDER BY l.account_id",
        (node_id,),
    )
    return {r[0]: r[1] for r in await cursor.fetchall()}


async def release(conn: AConn, node_id: str, held: dict[str, int]) -> set[str]:
    """Let these leases go (free for any node to claim at once); those let go."""
    ids = sorted(held)
    if not ids:
        return set()
    async with conn.transaction():
        cursor = await conn.execute(
            "WITH mine AS (SELECT l.account_id FROM account_leases l "
            "JOIN unnest(%s::text[], %s::bigint[]) AS h(id, epoch) "
            "ON l.account_id = h.id AND l.epoch = h.epoch "
            "WHERE l.node_id = %s ORDER BY l.account_id FOR UPDATE OF l) "
            "UPDATE account_leases SET node_id = NULL, expires_at = '-infinity' "
            "FROM mine WHERE account_leases.account_id = mine.account_id "
            "RETURNING account_leases.account_id",
            (ids, [held[i] for i in ids], node_id),
        )
        released = {r[0] for r in await cursor.fetchall()}
        await conn.execute(f"NOTIFY {CHANNEL}")
        return released


async def leave(conn: AConn, node_id: str) -> int:
    """A graceful stop: every lease of this node let go, and its row gone."""
    async with conn.transaction():
        ids = [
            r[0]
            for r in await (
                await conn.execute(
                    "SELECT account_id FROM account_leases WHERE node_id = %s "
                    "ORDER BY account_id FOR UPDATE",
                    (node_id,),
                )
            ).fetchall()
        ]
        await conn.execute(
            "UPDATE account_leases SET node_id = NULL, expires_at = '-infinity' "
            "WHERE account_id = ANY(%s)",
            (ids,),
        )
        await conn.execute("DELETE FROM nodes WHERE node_id = %s", (node_id,))
        await conn.execute(f"NOTIFY {CHANNEL}")
        return len(ids)


async def report_states(conn: AConn, node_id: str, states: dict[str, tuple[str, int]]) -> None:
    """The state of each account this node holds, as it last saw it (other masters show
    it); only rows this node owns are written."""
    ids = sorted(states)
    if not ids:
        return
    await conn.execute(
        "UPDATE account_leases l SET state = s.state, state_at = s.at "
        "FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS s(id, state, at) "
        "WHERE l.account_id = s.id AND l.node_id = %s "
        "AND (l.state IS DISTINCT FROM s.state OR l.state_at IS DISTINCT FROM s.at)",
        (ids, [states[i][0] for i in ids], [states[i][1] for i in ids], node_id),
    )


async def view(conn: AConn) -> ClusterView:
    """The nodes and how many leases each holds; the enabled and the free accounts."""
    cursor = await conn.execute(
        "SELECT n.node_id, n.capacity, n.api_url, n.pid, n.lease_ttl_s, "
        "(extract(epoch FROM n.started_at) * 1000)::bigint, "
        "(extract(epoch FROM n.renewed_at) * 1000)::bigint, "
        "extract(epoch FROM now() - n.renewed_at)::float8, n.leaving, "
        "(SELECT count(*) FROM account_leases l WHERE l.node_id = n.node_id "
        "AND l.expires_at > now()) "
        "FROM nodes n ORDER BY n.node_id"
    )
    nodes = [
        NodeRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9])
        for r in await cursor.fetchall()
    ]
    cursor = await conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE l.node_id IS NULL OR l.expires_at <= now() "
        "OR l.account_id IS NULL), (extract(epoch FROM now()) * 1000)::bigint "
        "FROM accounts a LEFT JOIN account_leases l ON l.account_id = a.id WHERE a.enabled"
    )
    row = await cursor.fetchone()
    assert row is not None
    return ClusterView(nodes, int(row[0]), int(row[1]), int(row[2]))


async def leases(conn: AConn) -> list[LeaseRow]:
    cursor = await conn.execute(
        "SELECT account_id, CASE WHEN expires_at > now() THEN node_id END, epoch, "
        "CASE WHEN isfinite(expires_at) THEN extract(epoch FROM expires_at - now())::float8 "
        "ELSE -1e9 END, state, state_at "
        "FROM account_leases ORDER BY account_id"
    )
    return [LeaseRow(r[0], r[1], int(r[2]), r[3], r[4], r[5]) for r in await cursor.fetchall()]


# --- the writer's fence (sync) -----------------------------------------------------------


def stale(conn: Conn, node_id: str, epochs: dict[str, int | None]) -> dict[str, str]:
    """Inside a writer's transaction: of these accounts, those this node may not write
    (and why). Holds their lease rows until the commit, so no claim changes them
    meanwhile; an account with epoch None is one this node does not hold at all."""
    ids = sorted(epochs)
    rows = conn.execute(
        "SELECT account_id, node_id, epoch, expires_at > now() FROM account_leases "
        "WHERE account_id = ANY(%s) ORDER BY account_id FOR SHARE",
        (ids,),
    ).fetchall()
    found = {r[0]: (r[1], int(r[2]), bool(r[3])) for r in rows}
    refused: dict[str, str] = {}
    for account_id in ids:
        mine = epochs[account_id]
        owner, epoch, live = found.get(account_id, (None, 0, False))
        if mine is None:
            refused[account_id] = f"this node ({node_id}) holds no lease on it"
        elif owner != node_id or epoch != mine:
            refused[account_id] = (
                f"lease epoch {mine} of {node_id} is stale: "
                f"now epoch {epoch}, held by {owner or 'nobody'}"
            )
        elif not live:
            refused[account_id] = f"lease epoch {mine} of {node_id} has expired"
    return refused
