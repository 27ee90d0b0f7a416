"""The one thread that owns the SQLite store's writes: it opens it, migrates it, and
performs every write, so the event loop never waits on disk.

Syncs queue up while a transaction runs and go into the next one together (group
commit). A sync is committed only if the store already has every change of its account
up to the sync's ``base_seq``; otherwise it is refused as a gap, so a lost or failed
sync is never skipped over. Each outcome (committed up to which seq, or why not) goes
back to the loop, which acknowledges the worker only after the commit.

Reads that must see every queued write (the digest sent with an assignment) and other
writes (read marks) go through the same queue with ``call``. Any exception inside a
transaction rolls it back, is logged with its traceback and counted, and the thread goes
on.

Checkpoints (copying the write-ahead log back into the database) run in a second thread
on a connection of its own, in SQLite's passive mode, so they never hold up a commit.
"""

import asyncio
import os
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.data import sqlite_events, sqlite_schema
from hiscrm.master.data.sqlite_events import EventIds
from hiscrm.master.data.store import (
    EventWindow,
    HeadCallback,
    NewEvent,
    OutcomeCallback,
    StoreError,
    SyncBatch,
    SyncFailure,
    SyncOutcome,
)

T = TypeVar("T")
STORE = SyncFailure.STORE_ERROR
MAX_GROUP = 512  # syncs per transaction at most
RETENTION_EVERY_S = 3600.0
CHECKPOINT_EVERY_S = 1.0
PRUNE_EVERY_S = 10.0  # supervisor events beyond the window are deleted this often


class _Call(msgspec.Struct):
    function: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: "asyncio.Future[Any]"


class _Append(msgspec.Struct):
    events: list[NewEvent]


_STOP = object()


class SqliteWriter:
    def __init__(
        self,
        path: Path,
        retention_days: dict[str, float],
        log: FilteringBoundLogger,
    ) -> None:
        self.path = path
        self._on_outcomes: OutcomeCallback = lambda outcomes: None
        self._retention = retention_days  # replaced whole by set_retention (atomic)
        self._log = log
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="store", daemon=True)
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="checkpoint", daemon=True
        )
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._upserter = sqlite_schema.Upserter()
        self._committed: dict[str, int] = {}
        self._on_head: HeadCallback = lambda head: None
        self.event_ids = EventIds()
        self.keep_events, self.keep_events_s = 100_000, 86_400.0
        self.commits = 0
        self.items_written = 0
        self.item_events: Counter[str] = Counter()  # items changed (new or newer), by kind
        self.errors = 0
        # Read by the loop for health; written by the writer thread only.
        self.busy_since: float | None = None  # a write (or the wait for its lock) began
        self.failing: str | None = None  # the last write failed because of the store itself
        self.failing_since: float | None = None

    def start(self, on_outcomes: OutcomeCallback) -> None:
        """Open and migrate the store in its thread; raise StoreError here if that fails."""
        self._on_outcomes = on_outcomes
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            error = self._startup_error
            raise StoreError(f"cannot use the store {self.path}: {error}") from error
        self._checkpointer.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def set_retention(self, days: dict[str, float]) -> None:
        """Days to keep per collection from the next pass on (a new configuration)."""
        self._retention = dict(days)

    def submit(self, batch: SyncBatch) -> None:
        self._queue.put(batch)

    def watch_events(self, on_head: HeadCallback) -> None:
        self._on_head = on_head

    def append_events(self, events: list[NewEvent]) -> None:
        self._queue.put(_Append(events))

    def set_event_window(self, keep: int, keep_s: float) -> None:
        self.keep_events, self.keep_events_s = keep, keep_s

    def event_window(self) -> EventWindow:
        return self.event_ids.window()

    def with_events(
        self, conn: sqlite3.Connection, count: int, function: Callable[[sqlite3.Connection, int], T]
    ) -> T:
        """In the writer thread: ``function(conn, first_id)`` in a transaction that gives
        out ``count`` event ids from ``first_id``."""
        with transaction(conn):
            first = self.event_ids.reserve(conn, count)
            result = function(conn, first)
        self._gave_out(count)
        return result

    def _gave_out(self, count: int) -> None:
        head = self.event_ids.committed(count)
        try:
            self._on_head(head)
        except Exception as exc:  # the listener's bug must not stop the store
            self.errors += 1
            self._log.error("event listener failed", exc_info=exc)

    async def call(self, function: Callable[[sqlite3.Connection], T], timeout_s: float = 60.0) -> T:
        """Run ``function(connection)`` in the store thread, after everything queued."""
        if not self.alive:
            raise StoreError("the store's writer thread is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Call(function, loop, future))
        async with asyncio.timeout(timeout_s):
            return await future

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then close the store."""
        self._stopping.set()
        if self._checkpointer.is_alive():
            self._checkpointer.join(timeout_s)
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._log.error("store thread did not finish in time", timeout_s=timeout_s)

    # --- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            began = time.monotonic()
            conn = sqlite_schema.open_checked(self.path)
            found, added = sqlite_schema.migrate(conn)
            sqlite_schema.check_columns(conn)
            self.event_ids.load(conn)
            conn.execute("PRAGMA wal_autocheckpoint=0")  # the checkpoint thread does it
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._log.info(
            "store opened", path=str(self.path), took_ms=round((time.monotonic() - began) * 1000)
        )
        if found != sqlite_schema.SCHEMA_VERSION or added:
            self._log.info(
                "store migrated",
                path=str(self.path),
                old=found,
                new=sqlite_schema.SCHEMA_VERSION,
                new_tables=added,
            )
        self._ready.set()
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
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # leave a small WAL behind
                    return
        except BaseException as exc:  # a bug here would silently stop every sync
            self.errors += 1
            self._log.critical("store thread died", exc_info=exc)
            raise
        finally:
            conn.close()

    def _checkpoints(self) -> None:
        try:
            conn = sqlite_schema.connect(self.path)
        except sqlite3.Error as exc:
            self.errors += 1
            self._log.error("cannot open the store for checkpoints", exc_info=exc)
            return
        try:
            checkpointed: tuple[int, int] | None = None
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                wal = _file_state(f"{self.path}-wal")
                if wal is not None and wal == checkpointed:
                    continue  # nothing written since the last one: nothing to copy back
                checkpointed = wal
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    self.errors += 1
                    self._log.error("checkpoint failed", exc_info=exc)
        finally:
            conn.close()

    def _committed_seq(self, conn: sqlite3.Connection, account_id: str) -> int:
        if account_id not in self._committed:
            self._committed[account_id] = sqlite_schema.committed_seq(conn, account_id)
        return self._committed[account_id]

    def cannot_commit(self, now: float, stuck_after_s: float) -> str | None:
        """Why the store cannot commit now (for health), or None."""
        busy_since = self.busy_since
        if busy_since is not None and now - busy_since > stuck_after_s:
            return f"a write has been waiting or running for {now - busy_since:.1f} s"
        failing, since = self.failing, self.failing_since
        if failing is not None and since is not None:
            return f"{failing} (for {now - since:.1f} s)"
        return None

    def _note(self, error: BaseException | None) -> None:
        """The outcome of a write, for health: the store itself failed, or it worked."""
        if error is None:
            self.failing = self.failing_since = None
        else:
            if self.failing is None:
                self.failing_since = time.monotonic()
            self.failing = f"{type(error).__name__}: {error}"

    def _commit(self, conn: sqlite3.Connection, syncs: list[SyncBatch]) -> list[SyncOutcome]:
        """Commit the group; if that fails, each sync alone, so one bad sync (whatever the
        error) is refused with its reason while the others, and the thread, go on. If the
        store itself fails (locked by another process, disk full, I/O error), every sync
        of the group is refused at once: trying them one by one would only wait for the
        lock once per sync."""
        self.busy_since = time.monotonic()
        try:
            outcomes = self._commit_group(conn, syncs)
            self._note(None)
            return outcomes
        except sqlite3.OperationalError as exc:
            self.errors += 1
            self._note(exc)
            self._committed.clear()
            self._log.error("the store cannot commit", syncs=len(syncs), exc_info=exc)
            reason = f"store error: {type(exc).__name__}: {exc}"
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
        self._committed.clear()
        outcomes = []
        for batch in syncs:
            try:
                outcomes += self._commit_group(conn, [batch])
            except Exception as single:
                self.errors += 1
                self._committed.clear()
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

    def _safe_committed_seq(self, conn: sqlite3.Connection, account_id: str) -> int:
        try:
            return self._committed_seq(conn, account_id)
        except sqlite3.Error as exc:  # the store itself is failing; the outcome says so
            self._log.error(
                "cannot read the committed sequence", account_id=account_id, exc_info=exc
            )
            return -1

    def _commit_group(self, conn: sqlite3.Connection, syncs: list[SyncBatch]) -> list[SyncOutcome]:
        now_ms = epoch_ms()
        outcomes: list[SyncOutcome] = []
        accepted: list[tuple[SyncBatch, int]] = []  # with what the store has after it
        planned: dict[str, int] = {}
        for batch in syncs:
            done = planned.get(batch.account_id, self._committed_seq(conn, batch.account_id))
            if batch.base_seq > done:
                gap = f"gap: the store has up to {done}, this sync continues from {batch.base_seq}"
                outcomes.append(SyncOutcome(batch, done, gap, SyncFailure.GAP))
                continue
            planned[batch.account_id] = max(done, batch.last_seq)
            accepted.append((batch, planned[batch.account_id]))
        if not accepted:
            return outcomes
        written = sum(len(batch.changes) for batch, _ in accepted)
        changed: Counter[str] = Counter()
        with transaction(conn):
            event_id = self.event_ids.reserve(conn, written)
            for batch, _ in accepted:
                rows = self._upserter.rows(batch.account_id, batch.changes, now_ms, event_id)
                changed.update(self._upserter.write(conn, rows))
                sqlite_schema.record_commit(conn, batch.account_id, batch.last_seq, now_ms)
                event_id += len(batch.changes)
        self._committed.update(planned)
        self.item_events.update(changed)
        if written:
            self._gave_out(written)
        self.commits += 1
        self.items_written += written
        outcomes += [SyncOutcome(batch, seq) for batch, seq in accepted]
        return outcomes

    def _answer(self, conn: sqlite3.Connection, call: _Call) -> None:
        if call.future.cancelled():  # the caller gave up (timed out) before its turn
            return
        self.busy_since = time.monotonic()
        try:
            result = call.function(conn)
        except Exception as exc:  # the caller gets it; a transaction left open is undone
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                self._note(exc)
            call.loop.call_soon_threadsafe(_set_exception, call.future, exc)
        else:
            call.loop.call_soon_threadsafe(_set_result, call.future, result)
        finally:
            self.busy_since = None

    def _append(self, conn: sqlite3.Connection, events: list[NewEvent]) -> None:
        try:
            self.with_events(
                conn, len(events), lambda c, first: sqlite_events.insert(c, first, events)
            )
        except sqlite3.Error as exc:
            self.errors += 1
            if isinstance(exc, sqlite3.OperationalError):
                self._note(exc)
            names = sorted({e.name for e in events})
            self._log.error("events not stored", events=len(events), names=names, exc_info=exc)

    def _prune_events(self, conn: sqlite3.Connection) -> None:
        try:
            with transaction(conn):
                upto = sqlite_events.prune_floor(
                    conn, self.keep_events, self.keep_events_s, epoch_ms()
                )
                if upto > self.event_ids.floor:
                    # Raised before the deletion commits: a client that resumes from
                    # below it meanwhile gets a reset, never a gap.
                    self.event_ids.floor = upto
                    sqlite_events.prune(conn, upto)
        except sqlite3.Error as exc:
            self.errors += 1
            if isinstance(exc, sqlite3.OperationalError):
                self._note(exc)
            self._log.error("pruning old events failed", exc_info=exc)

    def _apply_retention(self, conn: sqlite3.Connection) -> None:
        if not self._retention:
            return
        self.busy_since = time.monotonic()
        try:
            with transaction(conn):
                deleted = sqlite_schema.apply_retention(conn, self._retention, epoch_ms())
        except Exception as exc:
            self.errors += 1
            if isinstance(exc, sqlite3.OperationalError):
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


def _file_state(path: str) -> tuple[int, int] | None:
    """Size and modification time of a file (None if it cannot be read): a write to it
    changes them."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT; whatever is raised inside rolls it back first."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
