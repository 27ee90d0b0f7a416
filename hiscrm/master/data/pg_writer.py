"""The one thread that writes the PostgreSQL store, on a connection of its own: it
migrates the schema, commits syncs, and runs the reads that must follow them.

The same shape as ``sqlite_writer``: syncs that queue up while a transaction runs go into
the next one together (group commit), copied in and merged with one statement per kind.
Inside the transaction the accounts' committed sequences are read and locked, so a sync
is committed only if the store already has every change of its account up to the sync's
``base_seq`` (a gap is refused, never skipped over) even if another program wrote the
account meanwhile; each account's new ``acked_seq`` is recorded in the same transaction.
Outcomes go to the callback after the commit, and the loop acknowledges the worker only
then.

Every transaction that writes items or supervisor events takes their event ids from the
store's counter (``pg_events.reserve``) just before it writes them, and reports the new
head after its commit (``EventHead.rise``).

Any exception inside a transaction rolls it back, is logged with its traceback and
counted, and the thread goes on: a group that fails is retried sync by sync, so one bad
sync is refused with its reason while the others are committed. A connection that broke
(the server restarted) is opened again before the next group.
"""

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import psycopg
from psycopg import pq
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.data import pg_events, pg_schema
from hiscrm.master.data.lease_fence import Fence
from hiscrm.master.data.pg_events import EventHead
from hiscrm.master.data.pg_outage import Outage
from hiscrm.master.data.pg_reach import Reach, classify
from hiscrm.master.data.pg_schema import Conn
from hiscrm.master.data.store import (
    EventWindow,
    HeadCallback,
    NewEvent,
    OutcomeCallback,
    StoreError,
    StoreUnavailable,
    SyncBatch,
    SyncFailure,
    SyncOutcome,
)
from hiscrm.store_url import redacted

T = TypeVar("T")
STORE = SyncFailure.STORE_ERROR
MAX_GROUP = 512  # syncs per transaction at most
RETENTION_EVERY_S = 3600.0
PRUNE_EVERY_S = 10.0  # supervisor events beyond the window are deleted this often
CONNECT_TIMEOUT_S = 10
MAX_HELD_EVENTS = 10_000  # supervisor events held while the server is out of reach
APPLICATION_NAME = "hiscrm-master"


def connect(url: str, application_name: str = APPLICATION_NAME) -> Conn:
    """A connection in autocommit mode (transactions are explicit); the URL's own
    ``connect_timeout`` and ``application_name`` win over these defaults."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    defaults: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": application_name,
    }
    options = {k: v for k, v in defaults.items() if k not in given}
    return psycopg.connect(url, autocommit=True, **options)


class _Call(msgspec.Struct):
    function: Callable[[Conn], Any]
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]"


class _Append(msgspec.Struct):
    events: list[NewEvent]


_STOP = object()


class PgWriter:
    def __init__(self, url: str, retention_days: dict[str, float], log: FilteringBoundLogger):
        self.url = url
        self.where = redacted(url)
        self._on_outcomes: OutcomeCallback = lambda outcomes: None
        self._retention = retention_days  # replaced whole by set_retention (atomic)
        self._log = log
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store", daemon=True)
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._upserter = pg_schema.Upserter()
        self.events = EventHead(log)
        self.fence: Fence | None = None  # in a cluster: every account's write checks its lease
        self.keep_events, self.keep_events_s = 100_000, 86_400.0
        self.commits = 0
        self.items_written = 0
        self.errors = 0
        # Read by the loop for health; written by the writer thread only.
        self.busy_since: float | None = None  # a write (or the wait for the server) began
        self.failing: str | None = None  # the last write failed because of the server
        self.failing_since: float | None = None
        self.on_opened: Callable[[bool], None] = lambda at_start: None  # in this thread
        self.opened = False  # connected and migrated once (False: out of reach so far)
        self.opened_at_start = False  # before ``start`` returned
        self.outage = Outage(self.where, log)  # the server out of reach since the start
        self._held_events: list[NewEvent] = []  # supervisor events told meanwhile
        self.events_dropped = 0  # beyond MAX_HELD_EVENTS while out of reach

    def start(self, on_outcomes: OutcomeCallback) -> None:
        """Connect and migrate in the writer thread; raise StoreError here if the store
        cannot be used as configured. A server out of reach for now (``pg_reach``) does
        not fail this: the writer keeps trying (``connected`` tells)."""
        self._on_outcomes = on_outcomes
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            reason = " ".join(str(self._startup_error).split())  # libpq's are several lines
            raise StoreError(
                f"cannot use the store {self.where}: {reason}"
            ) from self._startup_error

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def set_retention(self, days: dict[str, float]) -> None:
        """Days to keep per collection from the next pass on (a new configuration)."""
        self._retention = dict(days)

    def submit(self, batch: SyncBatch) -> None:
        self._queue.put(batch)

    def watch_events(self, on_head: HeadCallback) -> None:
        self.events.watch(on_head)

    def append_events(self, events: list[NewEvent]) -> None:
        self._queue.put(_Append(events))

    def set_event_window(self, keep: int, keep_s: float) -> None:
        self.keep_events, self.keep_events_s = keep, keep_s

    def event_window(self) -> EventWindow:
        return self.events.window()

    def with_events(self, conn: Conn, count: int, function: Callable[[Conn, int], T]) -> T:
        """In the writer thread: ``function(conn, first_id)`` in a transaction that gives
        out ``count`` event ids from ``first_id``."""
        with conn.transaction():
            first = pg_events.reserve(conn, count)
            result = function(conn, first)
        self.events.rise(first + count - 1)
        return result

    async def call(self, function: Callable[[Conn], T], timeout_s: float = 60.0) -> T:
        """Run ``function(connection)`` in the writer thread, after everything queued."""
        if not self.alive:
            raise StoreError("the store's writer thread is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(function, loop, future))
        async with asyncio.timeout(timeout_s):
            return await future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then close the connection."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._log.error("store thread did not finish in time", timeout_s=timeout_s)

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            conn = self._open_with_retries()
        except BaseException as exc:  # a bug: ``start`` must not wait for ever
            self.errors += 1
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
            self._log.critical("store thread died before it opened the store", exc_info=exc)
            raise
        if conn is None:  # stopped while the server was out of reach, or cannot be used
            return
        at_start = not self._ready.is_set()
        self.opened, self.opened_at_start = True, at_start
        self._ready.set()
        try:
            self.on_opened(at_start)
        except Exception as exc:  # a bug: the writer goes on; reads will say they fail
            self.errors += 1
            self._log.error("store opened, but what follows failed", exc_info=exc)
        next_retention = next_prune = time.monotonic()
        try:
            while True:
                work = [self._queue.get()]
                while len(work) < MAX_GROUP:
                    try:
                        work.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                try:
                    conn = self._usable(conn)
                    syncs = [w for w in work if isinstance(w, SyncBatch)]
                    if syncs:
                        self._on_outcomes(self._commit(conn, syncs))
                    appended = [e for w in work if isinstance(w, _Append) for e in w.events]
                    if appended:
                        self._append(conn, appended)
                    for call in (w for w in work if isinstance(w, _Call)):
                        self._answer(conn, call)
                    if time.monotonic() >= next_prune:
                        next_prune = time.monotonic() + PRUNE_EVERY_S
                        self._prune_events(conn)
                    if time.monotonic() >= next_retention:
                        next_retention = time.monotonic() + RETENTION_EVERY_S
                        self._apply_retention(conn)
                except Exception as exc:  # a bug: counted and logged, and the store goes on
                    self.errors += 1
                    self._log.error("store thread error", errors=self.errors, exc_info=exc)
                if any(w is _STOP for w in work):
                    return
        except BaseException as exc:  # a bug here would silently stop every sync
            self.errors += 1
            self._log.critical("store thread died", exc_info=exc)
            raise
        finally:
            conn.close()

    def _open(self) -> Conn:
        """Connect, migrate, and load what the writer keeps of the store; said in the log."""
        conn = connect(self.url)
        try:
            found, added = pg_schema.migrate(conn)
            self._upserter.prepare(conn)
            head, self.events.floor = pg_events.load(conn)
            self.events.rise(head)  # a master that started without it: the hub hears
        except BaseException:
            conn.close()
            raise
        self._log.info(
            "store opened",
            url=self.where,
            server_version=conn.info.server_version,
            schema_version=pg_schema.SCHEMA_VERSION,
        )
        if found != pg_schema.SCHEMA_VERSION or added:
            self._log.info(
                "store migrated",
                url=self.where,
                old=found,
                new=pg_schema.SCHEMA_VERSION,
                new_tables=added,
            )
        return conn

    def _open_with_retries(self) -> Conn | None:
        """The first connection. A server out of reach for now (``pg_reach``) is tried
        again with backoff while ``start`` has returned and the master runs: meanwhile
        syncs and calls are refused (workers keep their changes in their spools) and
        supervisor events are held. A store that can never be used as configured fails
        ``start``; found only later (the server came back with a newer schema), it is
        tried again too, and health says why. None: stopped meanwhile, or failed start."""
        while True:
            try:
                conn = self._open()
            except Exception as exc:
                if not self._ready.is_set() and classify(exc) is Reach.PERMANENT:
                    self._startup_error = exc
                    self._ready.set()
                    return None
                self.errors += 1
                delay = self.outage.failed(exc)
                self._ready.set()  # ``start`` returns: the master starts without it
                if self._refuse_while_down(delay):
                    return None
                continue
            self.outage.reached()
            held, self._held_events = self._held_events, []
            if held:
                self._append(conn, held)
            return conn

    def _refuse_while_down(self, delay_s: float) -> bool:
        """For ``delay_s``: what comes in is refused (syncs, calls) or held (events) with
        the outage's reason. True if asked to stop."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                work = self._queue.get(timeout=left)
            except queue.Empty:
                return False
            if work is _STOP:
                return True
            reason = self.outage.reason() or "the store is out of reach"
            if isinstance(work, SyncBatch):
                self._on_outcomes([SyncOutcome(work, -1, f"store error: {reason}", STORE)])
            elif isinstance(work, _Call):
                error = StoreUnavailable(reason)
                work.loop.call_soon_threadsafe(_set_exception, work.future, error)
            elif isinstance(work, _Append):
                self._held_events += work.events
                dropped = len(self._held_events) - MAX_HELD_EVENTS
                if dropped > 0:
                    del self._held_events[:dropped]
                    self.events_dropped += dropped
        return False

    def cannot_commit(self, now: float, stuck_after_s: float) -> str | None:
        """Why the store cannot commit now (for health), or None."""
        out_of_reach = self.outage.reason()
        if out_of_reach is not None:
            return out_of_reach
        busy_since = self.busy_since
        if busy_since is not None and now - busy_since > stuck_after_s:
            return f"a write has been waiting or running for {now - busy_since:.1f} s"
        failing, since = self.failing, self.failing_since
        if failing is not None and since is not None:
            return f"{failing} (for {now - since:.1f} s)"
        return None

    def _note(self, error: BaseException | None) -> None:
        """The outcome of a write, for health: the server failed us, or it worked."""
        if error is None:
            self.failing = self.failing_since = None
        else:
            if self.failing is None:
                self.failing_since = time.monotonic()
            self.failing = f"{type(error).__name__}: {' '.join(str(error).split())}"

    def _usable(self, conn: Conn) -> Conn:
        """``conn``, or a new connection if it broke; if none can be made, the broken one
        (what uses it fails, with the reason, and the next round tries again)."""
        if not (conn.closed or conn.broken):
            return conn
        fresh: Conn | None = None
        try:
            fresh = connect(self.url)
            self._upserter.prepare(fresh)
        except psycopg.Error as exc:
            if fresh is not None:
                fresh.close()
            self.errors += 1
            self._note(exc)
            self._log.error("store connection lost; cannot reconnect", url=self.where, exc_info=exc)
            return conn
        self._log.warning("store connection lost; reconnected", url=self.where)
        conn.close()
        return fresh

    def _commit(self, conn: Conn, syncs: list[SyncBatch]) -> list[SyncOutcome]:
        """Commit the group; if that fails, each sync alone, so one bad sync (whatever the
        error) is refused with its reason while the others, and the thread, go on. If the
        server itself fails (connection lost, server shutting down, a lock or statement
        timeout), every sync of the group is refused at once."""
        self.busy_since = time.monotonic()
        try:
            outcomes = self._commit_group(conn, syncs)
            self._note(None)
            return outcomes
        except psycopg.OperationalError as exc:
            self.errors += 1
            self._note(exc)
            self._log.error("the store cannot commit", syncs=len(syncs), exc_info=exc)
            reason = f"store error: {type(exc).__name__}: {' '.join(str(exc).split())}"
            return [
                SyncOutcome(b, self._safe_committed_seq(conn, b.account_id), reason, STORE)
                for b in syncs
            ]
        except Exception as exc:
            self.errors += 1
            self._log.error(
                "store commit failed; retrying syncs one by one", syncs=len(syncs), exc_info=exc
            )
        finally:
            self.busy_since = None
        outcomes = []
        for batch in syncs:
            try:
                outcomes += self._commit_group(conn, [batch])
            except Exception as single:
                self.errors += 1
                self._log.error(
                    "sync refused by the store",
                    account_id=batch.account_id,
                    base_seq=batch.base_seq,
                    last_seq=batch.last_seq,
                    exc_info=single,
                )
                done = self._safe_committed_seq(conn, batch.account_id)
                reason = f"store error: {type(single).__name__}: {single}"
                outcomes.append(SyncOutcome(batch, done, reason, STORE))
        return outcomes

    def _safe_committed_seq(self, conn: Conn, account_id: str) -> int:
        if conn.closed or conn.broken:
            return -1  # unknown: the connection is gone (the error is logged already)
        try:
            return pg_schema.committed_seqs(conn, [account_id])[account_id]
        except psycopg.Error as exc:  # the store itself is failing; the outcome says so
            self._log.error(
                "cannot read the committed sequence", account_id=account_id, exc_info=exc
            )
            return -1

    def _commit_group(self, conn: Conn, syncs: list[SyncBatch]) -> list[SyncOutcome]:
        now_ms = epoch_ms()
        outcomes: list[SyncOutcome] = []
        accepted: list[tuple[SyncBatch, int]] = []  # with what the store has after it
        account_ids = list(dict.fromkeys(batch.account_id for batch in syncs))
        with conn.transaction():
            planned = pg_schema.committed_seqs(conn, account_ids, lock=True)
            fenced = self.fence.check(conn, account_ids) if self.fence is not None else {}
            moved: dict[str, int] = {}
            for batch in syncs:
                done = planned[batch.account_id]
                if batch.account_id in fenced:
                    why = f"lease lost: {fenced[batch.account_id]}"
                    outcomes.append(SyncOutcome(batch, done, why, SyncFailure.STALE_LEASE))
                    continue
                if batch.base_seq > done:
                    gap = (
                        f"gap: the store has up to {done}, "
                        f"this sync continues from {batch.base_seq}"
                    )
                    outcomes.append(SyncOutcome(batch, done, gap, SyncFailure.GAP))
                    continue
                planned[batch.account_id] = moved[batch.account_id] = max(done, batch.last_seq)
                accepted.append((batch, planned[batch.account_id]))
            if not accepted:
                return outcomes
            rows = self._upserter.rows(((b.account_id, b.changes) for b, _ in accepted), now_ms)
            written = sum(len(batch.changes) for batch, _ in accepted)
            self._upserter.stage(conn, rows)
            # The counter stays locked from here to the commit.
            first = pg_events.reserve(conn, written) if written else 0
            self._upserter.merge(conn, rows, first)
            pg_schema.record_commits(conn, moved, now_ms)
        if written:
            self.events.rise(first + written - 1)
        self.commits += 1
        self.items_written += written
        outcomes += [SyncOutcome(batch, seq) for batch, seq in accepted]
        return outcomes

    def _answer(self, conn: Conn, call: _Call) -> None:
        if call.future.cancelled():  # the caller gave up (timed out) before its turn
            return
        self.busy_since = time.monotonic()
        try:
            result = call.function(conn)
        except Exception as exc:  # the caller gets it; a transaction left open is undone
            if not conn.broken and conn.info.transaction_status != pq.TransactionStatus.IDLE:
                conn.rollback()
            if isinstance(exc, psycopg.OperationalError):
                self._note(exc)
            call.loop.call_soon_threadsafe(_set_exception, call.future, exc)
        else:
            call.loop.call_soon_threadsafe(_set_result, call.future, result)
        finally:
            self.busy_since = None

    def _append(self, conn: Conn, events: list[NewEvent]) -> None:
        self.busy_since = time.monotonic()
        try:
            self.with_events(conn, len(events), lambda c, first: pg_events.insert(c, first, events))
            self._note(None)
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, psycopg.OperationalError):
                self._note(exc)
            names = sorted({e.name for e in events})
            self._log.error("events not stored", events=len(events), names=names, exc_info=exc)
        finally:
            self.busy_since = None

    def _prune_events(self, conn: Conn) -> None:
        self.busy_since = time.monotonic()
        try:
            with conn.transaction():
                upto = pg_events.prune_floor(conn, self.keep_events, self.keep_events_s, epoch_ms())
                # Raised before the deletion commits: a client that resumes from below
                # it meanwhile gets a reset, never a gap.
                self.events.raise_floor(upto)
                pg_events.prune(conn, upto)
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, psycopg.OperationalError):
                self._note(exc)
            self._log.error("pruning old events failed", errors=self.errors, exc_info=exc)
        finally:
            self.busy_since = None

    def _apply_retention(self, conn: Conn) -> None:
        if not self._retention:
            return
        self.busy_since = time.monotonic()
        try:
            with conn.transaction():
                deleted = pg_schema.apply_retention(conn, self._retention, epoch_ms())
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, psycopg.OperationalError):
                self._note(exc)
            self._log.error("retention failed", errors=self.errors, exc_info=exc)
            return
        finally:
            self.busy_since = None
        if any(deleted.values()):
            self._log.info("retention applied", deleted=deleted, keep_days=self._retention)


def _set_result(future: "asyncio.Future[Any]", result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: "asyncio.Future[Any]", exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
