"""The outbox's rules without a master (states, which entries go next), and the outbox in
the store on each backend (idempotent by request id, conflicts, targets, events)."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_datastore import Backend, Store, postgres_backend, sqlite_backend

from hiscrm.items import Content, Conversation, epoch_ms
from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.outbox import Outbox, ready
from hiscrm.master.data.outbox_entry import (
    BadMove,
    OutboxEntry,
    OutboxState,
    PageQuery,
    ReplyRefused,
)
from hiscrm.master.data.store import EventQuery, StaleLease
from hiscrm.protocol import ItemChange
from hiscrm.replies import CommentReply, MessageReply

pytestmark = pytest.mark.timeout(30)
Q, S = OutboxState.QUEUED, OutboxState.SENDING


def entry(
    request_id: str,
    state: OutboxState = Q,
    conversation: str = "c1",
    text: str = "hi",
    account: str = "acc",
) -> OutboxEntry:
    return OutboxEntry(
        account_id=account,
        request_id=request_id,
        action=MessageReply(conversation_id=conversation, text=text),
        state=state,
        created_at=1,
        updated_at=1,
    )


# --- rules ---------------------------------------------------------------------------


def test_one_at_a_time_per_conversation_in_order() -> None:
    entries = [
        entry("a", S, "c1"),
        entry("b", Q, "c1"),  # waits for a
        entry("c", Q, "c2"),
        entry("d", Q, "c2"),  # waits for c
        entry("e", Q, "c3"),
    ]
    assert [e.request_id for e in ready(entries, set())] == ["c", "e"]
    # One being written counts as under way too.
    assert [e.request_id for e in ready(entries, {("acc", "c")})] == ["e"]


def test_states_change_only_as_the_rules_say() -> None:
    queued = entry("a")
    sending = queued.move(S, 5)
    assert sending.attempts == 1
    sent = sending.move(OutboxState.SENT, 9, item_id="out-a")
    assert (sent.item_id, sent.sent_at) == ("out-a", 9)
    with pytest.raises(BadMove):
        sent.move(Q, 10)  # a sent reply is never sent again
    with pytest.raises(BadMove):
        sending.move(OutboxState.CANCELLED, 10)  # too late to cancel
    unknown = sending.move(OutboxState.UNKNOWN, 10, error="worker1 died")
    assert unknown.move(Q, 11).state is Q  # an operator's retry
    assert unknown.move(OutboxState.SENT, 11, item_id="x").state is OutboxState.SENT  # late news
    with pytest.raises(BadMove):
        queued.move(OutboxState.SENT, 2)  # never sent without being handed over


def test_the_api_form_of_an_entry() -> None:
    shown = entry("a").as_json()
    assert shown["kind"] == "message"
    assert shown["conversation_id"] == "c1"
    assert shown["state"] == "queued"
    assert shown["request_id"] == "a"


# --- in the store --------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return sqlite_backend(tmp_path / "hiscrm.db")
    return postgres_backend(request.getfixturevalue("pg_url"))


@pytest.fixture
def store(backend: Backend) -> Iterator[Store]:
    s = Store(backend)
    changes = [
        ItemChange(seq=1, version=1, hash="h1", item=Conversation(id="c1", title="one")),
        ItemChange(seq=2, version=1, hash="h2", item=Content(id="p1", title="post")),
    ]
    assert s.sync(0, 2, *changes).ok
    yield s
    s.close()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_request_id_makes_one_entry(store: Store) -> None:
    made, new = run(store.store.outbox_create(entry("r1")))
    assert new
    assert made.state is Q
    again, new = run(store.store.outbox_create(entry("r1")))
    assert not new
    assert again.request_id == "r1"
    with pytest.raises(ReplyRefused, match="another reply") as refused:
        run(store.store.outbox_create(entry("r1", text="something else")))
    assert refused.value.status == 409
    entries, total = run(store.store.outbox_page("acc", PageQuery(), 10, 0))
    assert total == 1
    assert [e.request_id for e in entries] == ["r1"]


def test_a_target_the_account_does_not_have_is_refused(store: Store) -> None:
    cases = [
        (entry("x", conversation="nope"), "conversation 'nope'"),
        (entry("y", account="other"), "conversation 'c1' is not one of 'other'"),
    ]
    comment = OutboxEntry(
        account_id="acc",
        request_id="z",
        action=CommentReply(content_id="p1", parent_id="missing", text="t"),
        state=Q,
        created_at=1,
        updated_at=1,
    )
    cases.append((comment, "comment 'missing'"))
    for bad, problem in cases:
        with pytest.raises(ReplyRefused, match=problem) as refused:
            run(store.store.outbox_create(bad))
        assert refused.value.status == 422
    ok = OutboxEntry(
        account_id="acc",
        request_id="on-post",
        action=CommentReply(content_id="p1", text="t"),
        state=Q,
        created_at=1,
        updated_at=1,
    )
    assert run(store.store.outbox_create(ok))[1]


def test_every_state_is_stored_with_its_event(store: Store) -> None:
    head = store.wait_head(2)
    made, _ = run(store.store.outbox_create(entry("r1")))
    sending = made.move(S, epoch_ms())
    run(store.store.outbox_save(sending, lease=None))
    sent = sending.move(OutboxState.SENT, epoch_ms(), item_id="out-r1")
    run(store.store.outbox_save(sent, lease=None))
    store.wait_head(head + 3)
    window = store.store.event_window()
    query = EventQuery(head, window.head, EventFilter(("reply",)))
    events = run(store.store.events(query))
    assert [json.loads(e.data)["state"] for e in events] == ["queued", "sending", "sent"]
    assert {e.name for e in events} == {"reply.state"}
    assert {e.account_id for e in events} == {"acc"}
    assert json.loads(events[-1].data)["item_id"] == "out-r1"
    stored = run(store.store.outbox_get("acc", "r1"))
    assert stored.state is OutboxState.SENT
    assert stored.attempts == 1


def test_open_entries_are_read_back_oldest_first(store: Store) -> None:
    for n in range(3):
        run(store.store.outbox_create(entry(f"r{n}")))
    first, _ = run(store.store.outbox_page("acc", PageQuery(state="queued"), 10, 0))
    done = next(e for e in first if e.request_id == "r1")
    run(
        store.store.outbox_save(
            done.move(S, epoch_ms()).move(OutboxState.FAILED, epoch_ms()), lease=None
        )
    )
    assert [e.request_id for e in run(store.store.outbox_open())] == ["r0", "r2"]
    failed, total = run(store.store.outbox_page("acc", PageQuery(state="failed"), 10, 0))
    assert total == 1
    assert failed[0].request_id == "r1"


def test_a_page_of_replies_by_time_and_in_either_order(store: Store) -> None:
    from msgspec.structs import replace

    for n in range(5):  # made at 100, 200, ... 500
        made = replace(entry(f"r{n}"), created_at=100 * (n + 1), updated_at=100 * (n + 1))
        run(store.store.outbox_create(made))

    def ids(query: PageQuery, limit: int = 10, offset: int = 0) -> tuple[list[str], int]:
        entries, total = run(store.store.outbox_page("acc", query, limit, offset))
        return [e.request_id for e in entries], total

    assert ids(PageQuery()) == (["r4", "r3", "r2", "r1", "r0"], 5)  # newest first
    assert ids(PageQuery(order="asc"), 2, 2) == (["r2", "r3"], 5)
    assert ids(PageQuery(since=200, until=400)) == (["r2", "r1"], 2)  # since <= t < until
    assert ids(PageQuery(since=200, until=400, order="asc", state="queued")) == (["r1", "r2"], 2)
    assert ids(PageQuery(since=200, state="sent")) == ([], 0)


# --- the outbox at work, on a store that records its writes --------------------------


class Recorder:
    """The outbox's store: records each save with the lease it names; refuses those made
    under a lease other than ``lease_now`` (as the PostgreSQL fence does)."""

    def __init__(self) -> None:
        self.saves: list[tuple[OutboxState, int | None]] = []
        self.refused: list[tuple[OutboxState, int | None]] = []
        self.lease_now: int | None = 1
        self.fenced = True
        self.opened: list[OutboxEntry] = []

    async def outbox_save(self, entry: OutboxEntry, *, lease: int | None) -> None:
        if self.fenced and (lease is None or lease != self.lease_now):
            self.refused.append((entry.state, lease))
            raise StaleLease(f"lease lost: lease epoch {lease} is stale")
        self.saves.append((entry.state, lease))

    async def outbox_open(self, account_ids: list[str] | None = None) -> list[OutboxEntry]:
        return list(self.opened)


class Link:
    worker_id, pid, serving = "worker1", 4242, True

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, message: Any) -> bool:
        self.sent.append(message)
        return True


class Errors:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        self.count += 1
        return self.count


def outbox_on(
    store: Recorder,
    link: Link | None,
    held: dict[str, int] | None,
    idempotent: bool = False,
    expire_after_s: float = 60.0,
) -> tuple[Outbox, Errors]:
    import structlog

    errors = Errors()
    outbox = Outbox(
        store,  # type: ignore[arg-type]
        structlog.get_logger(),
        errors,
        expire_after_s,
        lambda account_id: link,  # type: ignore[arg-type,return-value]
        lambda account_id: idempotent,
        lambda account_id: held is None or account_id in held,
    )
    if held is not None:
        outbox.lease_of = held.get
    return outbox, errors


async def settle(outbox: Outbox) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while outbox._tasks:  # the outbox's writes in the background
        assert asyncio.get_running_loop().time() < deadline, "the outbox's writes never ended"
        await asyncio.wait(set(outbox._tasks), timeout=1)


def test_a_master_that_lost_the_lease_leaves_what_it_was_sending() -> None:
    """The cut-off case: the lease keeper drops the account (its fence no longer names
    it), then the account leaves its worker. The reply being sent is not written (the
    next holder calls it unknown); a late write made under the lost lease is refused
    once, counted, and never tried again."""

    async def scenario() -> None:
        store, link, held = Recorder(), Link(), {"acc": 1}
        outbox, errors = outbox_on(store, link, held)
        outbox.add(entry("r1"))
        await settle(outbox)
        assert store.saves == [(S, 1)]  # handed over under epoch 1
        assert len(link.sent) == 1

        held.clear()  # the keeper's drop: the fence first, then the manager
        store.lease_now = 2  # another master holds it now
        outbox.account_left("acc", "its lease is gone")
        outbox.forget(["acc"])
        await settle(outbox)
        assert store.saves == [(S, 1)]
        assert store.refused == []  # nothing written at all
        assert outbox.open == {}

        # A result that arrived while the lease was held, written only now: refused once.
        held["acc"] = 1
        store.lease_now = 1
        outbox.add(entry("r2", conversation="c2"))
        await settle(outbox)
        sending = outbox.open[("acc", "r2")]
        assert sending.state is S
        store.lease_now = 2  # taken meanwhile; this master has not heard yet
        outbox.on_result(link, _result("r2", "sent"))  # type: ignore[arg-type]
        await settle(outbox)
        assert store.refused == [(OutboxState.SENT, 1)]  # made under epoch 1: refused
        assert outbox.refused == 1
        assert errors.count == 0  # an expected refusal, not an error tried again

    asyncio.run(scenario())


def _result(request_id: str, outcome: str) -> Any:
    from hiscrm.protocol import WorkerSendResult

    return WorkerSendResult(
        account_id="acc", request_id=request_id, outcome=outcome, item_id="x", error=None
    )


def test_a_reply_stored_before_queued_at_expires_from_when_it_was_made(tmp_path: Path) -> None:
    """Schema 4 had no ``queued_at``: the migration adds it, and a row from before counts
    its expiry from ``created_at``."""
    from hiscrm.master.data import outbox_sql, sqlite_schema
    from hiscrm.master.data.sqlite_store import OUTBOX

    path = tmp_path / "v4.db"
    conn = sqlite_schema.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version in range(1, 5):
        sqlite_schema.MIGRATIONS[version](conn)
    conn.execute("INSERT INTO schema_version VALUES (4)")
    conn.execute(
        "INSERT INTO outbox (account_id, request_id, seq, body_hash, action, target, state, "
        "attempts, created_at, updated_at) VALUES ('acc', 'old', 1, 'h', ?, 'conversation:c1', "
        "'queued', 0, 1000, 1000)",
        (entry("old").action.model_dump_json(),),
    )
    conn.commit()
    conn.close()
    conn = sqlite_schema.connect(path)
    assert sqlite_schema.migrate(conn)[0] == 4
    sqlite_schema.check_columns(conn)
    old = outbox_sql.get(OUTBOX, conn, "acc", "old")
    assert old is not None
    assert (old.queued_at, old.queued_since, old.as_json()["queued_at"]) == (None, 1000, 1000)
    retried = old.move(S, 2000).move(OutboxState.FAILED, 3000).move(Q, 4000)
    assert retried.queued_since == 4000
    conn.close()
