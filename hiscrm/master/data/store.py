"""The store as the rest of the master sees it: one small interface, whatever the backend.

The data wing writes syncs through ``submit`` (answered later, in commit order, by the
outcome callback given to ``start``), reads an account's digest when it assigns it, and
serves the API's reads. ``SqliteStore`` is the embedded default; another backend
implements the same methods with the same meaning.
"""

import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Literal, Protocol

import msgspec

from hiscrm.master.data.event_filter import EventFilter
from hiscrm.master.data.outbox_entry import OutboxEntry, PageQuery
from hiscrm.master.ports import WorkerLink
from hiscrm.sync_wire import ChangeView

Row = dict[str, Any]
DigestEntry = tuple[str, str, int, str]  # (kind, item id, version, hash)


class StoreError(Exception):
    """The store cannot be opened or used; the message says why."""


class StoreUnavailable(StoreError):
    """The store cannot take a write now (locked by another process, disk full, failing);
    the message says why. Nothing was written."""


class StaleLease(StoreUnavailable):
    """In a cluster: the write was made under a lease this master no longer holds (at
    the epoch it had, or at all); refused in its own transaction. Trying it again cannot
    succeed: the account's present holder decides."""


class SyncBatch(msgspec.Struct):
    """One ``worker:data:sync`` on its way to the store: changes ``base_seq < seq <=
    last_seq`` of an account, from the process ``link`` (acknowledged to it after the
    commit, if it still runs)."""

    link: WorkerLink
    account_id: str
    base_seq: int
    last_seq: int
    changes: Sequence[ChangeView]  # ItemChange, or its wire twin (``sync_wire``)
    received_at: float = msgspec.field(default_factory=time.monotonic)


class SyncFailure(StrEnum):
    """Why a sync was not committed (a metric label)."""

    GAP = "gap"  # the store lacks changes before the sync's base_seq
    STORE_ERROR = "store_error"  # the store could not write it
    NOT_ASSIGNED = "not_assigned"  # it came from a worker the account is not assigned to
    STALE_LEASE = "stale_lease"  # in a cluster: this master no longer holds the account


class SyncOutcome(msgspec.Struct):
    batch: SyncBatch
    committed_seq: int  # what the store has for the account afterwards
    error: str | None = None  # None: committed; else a sentence for people
    failure: SyncFailure | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class AccountRecord(msgspec.Struct, frozen=True):
    """An account in the registry: the store's ``accounts`` table."""

    id: str
    platform: str
    options: dict[str, Any]
    enabled: bool
    source: Literal["config", "api"]  # declared in the config file, or made through the API
    created_at: int  # ms
    updated_at: int  # ms
    max_memory_mb: int | None = None  # its own worker's limit while it runs alone


class AccountDigest(msgspec.Struct, frozen=True):
    """What the store holds of an account: every change up to ``acked_seq``, and these
    items."""

    acked_seq: int
    entries: list[DigestEntry]


class CollectionQuery(msgspec.Struct):
    """A page of one collection of one account; names are checked against the kind's
    filters and sorts before a query is built."""

    account_id: str
    filters: dict[str, str] = msgspec.field(default_factory=dict)
    is_read: bool | None = None
    since: int | None = None  # ms, inclusive, on the collection's time field
    until: int | None = None  # ms, exclusive
    sort: str | None = None  # default: the time field
    order: Literal["asc", "desc"] = "desc"
    limit: int = 50
    offset: int = 0
    # Stop reading rows once their stored text passes this many bytes (the row that
    # passes it included, at least one row): the caller cuts the page exactly, and a page
    # of big items is never read whole into memory. None: read ``limit`` rows.
    max_bytes: int | None = None


class StoreStats(msgspec.Struct, frozen=True):
    where: str  # a path or a URL (without secrets), for status
    alive: bool  # the writer runs
    commits: int
    items_written: int
    errors: int
    cannot_commit: str | None = None  # why the store cannot commit now; None: it can
    item_events: dict[str, int] = msgspec.field(default_factory=dict)  # items changed, by kind


OutcomeCallback = Callable[[list[SyncOutcome]], None]
HeadCallback = Callable[[int], None]  # the id of the last event committed


class NewEvent(msgspec.Struct, frozen=True):
    """A supervisor event on its way to the store, which gives it its id."""

    name: str
    at: int  # ms
    account_id: str | None
    data: dict[str, Any]


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as the stream sends it: ``data`` is its JSON text (an item as the API
    serves it, or a supervisor event's fields)."""

    id: int
    name: str
    account_id: str | None
    data: str


class EventQuery(msgspec.Struct, frozen=True):
    """Events with ``after < id <= upto`` matching ``filter``, oldest first, at most
    ``limit``; with ``last``, the newest ``limit`` of them (still oldest first)."""

    after: int
    upto: int
    filter: EventFilter = msgspec.field(default_factory=EventFilter)
    limit: int = 1000
    last: bool = False


class EventWindow(msgspec.Struct, frozen=True):
    """What can be resumed: every event after ``floor`` up to ``head`` is kept (a cursor
    below ``floor`` is too old). Ids never go back, across restarts too."""

    floor: int
    head: int


class Store(Protocol):
    def start(self, on_outcomes: OutcomeCallback) -> None:
        """Open (and migrate) the store; raise StoreError if that fails. Outcomes of
        submitted syncs go to ``on_outcomes``, from whatever thread commits them."""

    def stop(self) -> None:
        """Finish what is queued, then close."""

    def stats(self) -> StoreStats: ...

    def set_retention(self, days: dict[str, float]) -> None:
        """Days to keep per collection from now on (a new configuration)."""

    def submit(self, batch: SyncBatch) -> None:
        """Commit these changes (after everything submitted before), or refuse them with a
        reason: a gap (the store lacks changes before ``base_seq``) or an error."""

    async def digest(self, account_id: str) -> AccountDigest:
        """After every sync submitted before."""

    async def mark_read(
        self, collection: str, account_id: str, item_id: str, at_ms: int
    ) -> Row | None: ...

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        """One page and the total matching (the total may be up to a second old)."""

    async def get_item(self, collection: str, account_id: str, item_id: str) -> Row | None: ...

    async def totals(self) -> tuple[dict[str, int], int]:
        """Items per collection, and when they were counted (ms)."""

    async def count_items(self, account_id: str) -> dict[str, int]: ...

    async def accounts(self) -> list[AccountRecord]:
        """The registry, in the order accounts were made."""

    async def put_account(self, record: AccountRecord) -> None:
        """Create or replace an account of the registry."""

    async def delete_account(self, account_id: str, purge: bool) -> dict[str, int]:
        """Take an account out of the registry; with ``purge`` its items and sync state
        too (how many rows per collection went). Without, a later account of the same id
        goes on where it left off."""

    # --- events --------------------------------------------------------------------------
    # Every committed new or changed item (a sync, a read mark) is an event, and so is
    # every supervisor event appended here. Ids are given in commit order from one
    # counter kept in the store; item events are read back from the items' tables (an
    # item changed twice is found at its latest change), supervisor events from a table
    # of their own, pruned to ``keep`` events and ``keep_s`` seconds.

    def watch_events(self, on_head: HeadCallback) -> None:
        """``on_head(head)`` after every commit that gave out event ids, from whatever
        thread commits or hears of it (another master's, on a shared PostgreSQL); heads
        only go up. Set before ``start``."""

    def append_events(self, events: list[NewEvent]) -> None:
        """Store these supervisor events (queued; committed soon, in this order)."""

    def set_event_window(self, keep: int, keep_s: float) -> None:
        """How many supervisor events, and for how long, are kept from now on."""

    def event_window(self) -> EventWindow: ...

    async def events(self, query: EventQuery) -> list[StoredEvent]: ...

    # --- the outbox (replies) ------------------------------------------------------------
    # Each write of an entry also stores its ``reply.state`` event, in one transaction.

    async def outbox_create(self, entry: OutboxEntry) -> tuple[OutboxEntry, bool]:
        """Store a new entry (True), or return the one already under its request id if
        its reply is the same (False); ReplyRefused if it is another reply (409), or its
        conversation, content or parent comment is not the account's (422)."""

    async def outbox_save(self, entry: OutboxEntry, *, lease: int | None) -> None:
        """An entry's new state (and what came with it). In a cluster, ``lease`` is the
        epoch of the account's lease this master held when it made the change (None:
        none); the write checks it in its own transaction and raises StaleLease if the
        lease is no longer this master's at that epoch. On one host it is ignored."""

    async def outbox_get(self, account_id: str, request_id: str) -> OutboxEntry | None: ...

    async def outbox_page(
        self, account_id: str, query: PageQuery, limit: int, offset: int
    ) -> tuple[list[OutboxEntry], int]:
        """A page of the account's entries (``query`` says which, in which order), and
        how many match."""

    async def outbox_open(self, account_ids: list[str] | None = None) -> list[OutboxEntry]:
        """Entries queued or being sent (of these accounts, or all), oldest first (read
        at start, and in a cluster when this master takes accounts or replies in)."""
