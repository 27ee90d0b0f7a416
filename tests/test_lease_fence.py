"""Leases against a real PostgreSQL: claims by several nodes at once never overlap, the
epoch rises with every new owner, and a write with a stale epoch (a master whose lease
was taken while it was cut off, committing late) is refused in its own transaction."""

import asyncio
from collections.abc import Iterator
from typing import Any, NamedTuple

import psycopg
import pytest
from test_datastore import Store, change, conversation, postgres_backend

from hiscrm.master.data import pg_leases
from hiscrm.master.data.lease_fence import Fence
from hiscrm.master.data.outbox_entry import OutboxEntry, OutboxState
from hiscrm.master.data.postgres_store import PostgresStore
from hiscrm.master.data.store import StaleLease, StoreUnavailable, SyncFailure
from hiscrm.replies import MessageReply

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


def declare(url: str, *account_ids: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for account_id in account_ids:
            conn.execute(
                "INSERT INTO accounts (id, platform, options, enabled, source, created_at, "
                "updated_at) VALUES (%s, 'demo', '{}', true, 'api', 0, 0)",
                (account_id,),
            )


async def claim(url: str, node: str, count: int) -> dict[str, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await pg_leases.join(conn, node, 100, 10.0, None, 1)
        return await pg_leases.claim(conn, node, count, 10.0)


@pytest.fixture
def stores(pg_url: str) -> Iterator[tuple[Store, Store]]:
    a, b = Store(postgres_backend(pg_url)), Store(postgres_backend(pg_url))
    yield a, b
    a.close()
    b.close()


def fence_of(store: Store, node: str) -> tuple[Fence, list[tuple[str, str]]]:
    fence, refused = Fence(node), []
    fence.on_refused = lambda account_id, why: refused.append((account_id, why))
    assert isinstance(store.store, PostgresStore)
    store.store.writer.fence = fence
    return fence, refused


def test_nodes_claiming_at_once_share_without_overlap(pg_url: str) -> None:
    Store(postgres_backend(pg_url)).close()  # the schema
    declare(pg_url, *(f"acc-{i}" for i in range(20)))

    async def together() -> list[dict[str, int]]:
        return await asyncio.gather(*(claim(pg_url, f"n{i}", 8) for i in range(4)))

    claimed = asyncio.run(together())
    ids = [a for got in claimed for a in got]
    assert len(ids) == len(set(ids)) == 20  # all taken, none twice
    assert all(epoch == 1 for got in claimed for epoch in got.values())
    assert asyncio.run(claim(pg_url, "late", 5)) == {}  # nothing free


def test_a_late_commit_with_a_stale_epoch_is_refused(
    stores: tuple[Store, Store], pg_url: str
) -> None:
    a, b = stores
    declare(pg_url, "acc")
    fence_a, refused_a = fence_of(a, "node-a")
    fence_b, refused_b = fence_of(b, "node-b")

    assert asyncio.run(claim(pg_url, "node-a", 1)) == {"acc": 1}
    fence_a.set({"acc": 1})
    assert a.sync(0, 1, change(1, 1)).ok

    # node-a is cut off; its lease expires and node-b takes the account (epoch 2).
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE account_leases SET expires_at = now() - interval '1 second'")
    assert asyncio.run(claim(pg_url, "node-b", 1)) == {"acc": 2}
    fence_b.set({"acc": 2})
    assert b.sync(1, 2, change(2, 1, item_id="m2")).ok

    # node-a comes back and commits what it had queued, still believing in epoch 1.
    late = a.sync(1, 3, change(3, 5, "from the past", item_id="m2"))
    assert late.failure is SyncFailure.STALE_LEASE
    assert late.error is not None
    assert "lease epoch 1 of node-a is stale: now epoch 2, held by node-b" in late.error
    assert refused_a
    assert refused_a[-1][0] == "acc"
    assert a.rows("SELECT acked_seq FROM account_sync") == [(2,)]
    assert a.rows("SELECT text, version FROM messages WHERE id = 'm2'") == [("hi", 1)]

    # A read mark from node-a on the account it believes it holds is refused too.
    async def mark() -> Any:
        return await a.store.mark_read("messages", "acc", "m2", 1)

    with pytest.raises(StoreUnavailable, match="lease lost: lease epoch 1 of node-a is stale"):
        asyncio.run(mark())
    assert not refused_b

    # A node that holds no lease on the account cannot write it at all; after its own
    # lease expired (nobody took it), neither can the one that held it.
    fence_a.set({})
    assert a.sync(2, 3, change(3, 1, item_id="m3")).failure is SyncFailure.STALE_LEASE
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE account_leases SET expires_at = now() - interval '1 second'")
    expired = b.sync(2, 3, change(3, 1, item_id="m3"))
    assert expired.failure is SyncFailure.STALE_LEASE
    assert expired.error is not None
    assert "has expired" in expired.error


class SentUnderA(NamedTuple):
    fence_a: Fence
    refused_a: list[tuple[str, str]]
    fence_b: Fence
    sending: OutboxEntry  # stored by node-a under its lease, epoch 1


def sending_under_node_a(a: Store, b: Store, pg_url: str) -> SentUnderA:
    """Account ``acc`` leased by node-a (epoch 1), which stored a reply ``sending``."""
    declare(pg_url, "acc")
    fence_a, refused_a = fence_of(a, "node-a")
    fence_b, _ = fence_of(b, "node-b")
    assert asyncio.run(claim(pg_url, "node-a", 1)) == {"acc": 1}
    fence_a.set({"acc": 1})
    assert a.sync(0, 1, conversation(1, "c1", None)).ok
    queued = OutboxEntry(
        account_id="acc",
        request_id="r1",
        action=MessageReply(conversation_id="c1", text="hello"),
        state=OutboxState.QUEUED,
        created_at=1,
        updated_at=1,
    )
    assert asyncio.run(a.store.outbox_create(queued))[1]
    sending = queued.move(OutboxState.SENDING, 2)
    asyncio.run(a.store.outbox_save(sending, lease=1))  # node-a holds the lease: taken
    return SentUnderA(fence_a, refused_a, fence_b, sending)


def taken_by_node_b(pg_url: str, fence_b: Fence) -> None:
    """node-a's lease expires (it is cut off); node-b claims the account: epoch 2."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE account_leases SET expires_at = now() - interval '1 second'")
    assert asyncio.run(claim(pg_url, "node-b", 1)) == {"acc": 2}
    fence_b.set({"acc": 2})


def test_an_outbox_save_at_a_stale_epoch_is_refused(
    stores: tuple[Store, Store], pg_url: str
) -> None:
    """A master whose lease was taken cannot write a reply's state it still believes it
    sends (a late 'sent', or 'unknown' after its worker died): refused in the save's own
    transaction, and the entry stays as the new holder left it."""
    a, b = stores
    _, refused_a, fence_b, sending = sending_under_node_a(a, b, pg_url)

    # node-a is cut off; node-b takes the account (epoch 2) and calls the reply unknown.
    taken_by_node_b(pg_url, fence_b)
    unknown = sending.move(OutboxState.UNKNOWN, 3, error="its previous master lost it")
    asyncio.run(b.store.outbox_save(unknown, lease=2))

    # node-a's late word on it ('sent') is refused; the entry stays unknown.
    late = sending.move(OutboxState.SENT, 4, item_id="x1")
    with pytest.raises(StaleLease, match="lease lost: lease epoch 1 of node-a is stale"):
        asyncio.run(a.store.outbox_save(late, lease=1))
    assert refused_a
    assert refused_a[-1][0] == "acc"
    stored = asyncio.run(b.store.outbox_get("acc", "r1"))
    assert stored is not None
    assert (stored.state, stored.updated_at, stored.item_id) == (OutboxState.UNKNOWN, 3, None)


def test_a_dropped_masters_late_save_never_overwrites_the_new_holders(
    stores: tuple[Store, Store], pg_url: str
) -> None:
    """The cut-off case: node-a dropped the account (its fence no longer names it) and
    still had a reply's 'unknown' to store, made under epoch 1; node-b, the holder at
    epoch 2, stored 'sent' meanwhile. node-a's late save is refused, whether it names
    the epoch it was made under or none, and the reply stays sent."""
    a, b = stores
    fence_a, refused_a, fence_b, sending = sending_under_node_a(a, b, pg_url)

    taken_by_node_b(pg_url, fence_b)
    sent = sending.move(OutboxState.UNKNOWN, 3).move(OutboxState.SENT, 4, item_id="x1")
    asyncio.run(b.store.outbox_save(sent, lease=2))

    fence_a.set({})  # node-a dropped the account, then its outbox calls the reply unknown
    refused_before = fence_a.refused
    unknown = sending.move(OutboxState.UNKNOWN, 5, error="the lease was lost while sent")
    with pytest.raises(StaleLease, match="lease epoch 1 of node-a is stale"):
        asyncio.run(a.store.outbox_save(unknown, lease=1))
    with pytest.raises(StaleLease, match=r"node-a.* holds no lease on it"):
        asyncio.run(a.store.outbox_save(unknown, lease=None))
    assert fence_a.refused == refused_before + 2
    assert not refused_a  # a lease node-a no longer holds: nothing of its own to stop
    stored = asyncio.run(b.store.outbox_get("acc", "r1"))
    assert stored is not None
    assert (stored.state, stored.updated_at, stored.item_id) == (OutboxState.SENT, 4, "x1")

    # node-a holds the account again (epoch 3): a save made under epoch 1 is still refused,
    # and refusing it does not stop node-a's present lease.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE account_leases SET expires_at = now() - interval '1 second'")
    assert asyncio.run(claim(pg_url, "node-a", 1)) == {"acc": 3}
    fence_a.set({"acc": 3})
    with pytest.raises(StaleLease, match="lease epoch 1 of node-a is stale: now epoch 3"):
        asyncio.run(a.store.outbox_save(unknown, lease=1))
    assert not refused_a
