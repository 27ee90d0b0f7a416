"""The outbox at work: replies handed, at most once each, to the worker that runs their
account, in order per conversation (or content), and what became of them.

An entry is stored as ``sending`` *before* it goes to the worker, so a master that dies
then finds it ``sending`` at its next start and calls it ``unknown``: it is never sent
twice by accident. The worker answers with ``worker:send:result``; when the account
leaves its worker (released, or the worker died) while one of its replies was being
sent, that reply becomes ``unknown`` — or is queued again if the account's platform
says its sends are idempotent. Queued replies wait while their account does not run,
and expire after ``[outbox] expire_after_s``.

Which entries may go now is a pure decision (``ready``); every store write of an entry
also stores its ``reply.state`` event (see ``Store.outbox_save``).

In a cluster, a master keeps the entries of the accounts it holds only (``mine``): a
reply stored through another master is taken in when the store tells of it
(``take_in``), and so are the open entries of an account whose lease this master gains
(those the previous holder was sending become ``unknown``); an account it loses is
forgotten here (its queued entries wait in the store for the next holder).

Every store write of an entry in a cluster carries the epoch of the account's lease this
master held when it made the change (``lease_of``), and the store checks it in the
write's own transaction: a master that lost the lease (cut off, its lease taken) never
overwrites what the new holder stored. A write refused so (``StaleLease``) is logged,
counted (``refused``) and never tried again. A master whose lease is gone leaves the
replies it was sending as they are in the store (``sending``): the next holder calls
them ``unknown`` when it takes the account in.

An entry this master itself made ``unknown`` when it took it in (left ``sending`` by a
master that died or lost the account) is queued again once the account runs here and
its platform says its sends are idempotent (known only once its worker has reported).
"""

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.items import epoch_ms
from hiscrm.master.data.outbox_entry import (
    BadMove,
    OutboxEntry,
    OutboxState,
    ReplyRefused,
)
from hiscrm.master.data.store import StaleLease, Store
from hiscrm.master.ports import WorkerLink
from hiscrm.protocol import MasterSend, WorkerSendResult

Key = tuple[str, str]  # (account id, request id)
SAVE_RETRY_S = 1.0


def ready(entries: Iterable[OutboxEntry], busy: set[Key]) -> list[OutboxEntry]:
    """The entries that may be handed to the worker now, oldest first: per target
    (conversation, content), the oldest queued one, unless an older one of that target is
    still being sent (or written: ``busy``)."""
    held: set[str] = set()
    out: list[OutboxEntry] = []
    for entry in entries:
        key = (entry.account_id, entry.request_id)
        if entry.target in held:
            continue
        if entry.state is OutboxState.SENDING or key in busy:
            held.add(entry.target)
        elif entry.state is OutboxState.QUEUED:
            held.add(entry.target)
            out.append(entry)
    return out


class Outbox:
    def __init__(
        self,
        store: Store,
        log: FilteringBoundLogger,
        count_error: Callable[[], object],
        expire_after_s: float,
        link_of: Callable[[str], WorkerLink | None],
        idempotent: Callable[[str], bool],
        mine: Callable[[str], bool] = lambda account_id: True,
    ) -> None:
        self._store = store
        self._mine = mine  # in a cluster: this master holds the account's lease
        self._log = log
        self._count_error = count_error
        self.expire_after_s = expire_after_s
        self._link_of = link_of  # the process running the account's task now, if any
        self._idempotent = idempotent
        self.open: dict[Key, OutboxEntry] = {}  # queued or sending, in the order made
        self._busy: set[Key] = set()  # a write of it (or its hand-over) is under way
        self._tasks: set[asyncio.Task[None]] = set()
        self._saving: dict[Key, asyncio.Task[None]] = {}  # each entry's writes, in order
        self.counts: dict[str, int] = {str(s): 0 for s in OutboxState}  # entries reaching each
        self.wake: Callable[[], None] = lambda: None  # a new expiry: look at deadlines again
        # In a cluster: the epoch of the account's lease this master holds now (None:
        # none). Left None on one host, where the master owns every account.
        self.lease_of: Callable[[str], int | None] | None = None
        self.refused = 0  # writes the store refused: made under a lease since lost
        # Made ``unknown`` here when taken in (another master, or this one before a
        # restart, was sending them): queued again if their platform is idempotent.
        self._relaunch: dict[Key, OutboxEntry] = {}

    # --- start ----------------------------------------------------------------------------

    async def load(self) -> None:
        """The entries a previous master left open: queued ones wait again; those it was
        sending are ``unknown`` (its workers went with it)."""
        self._adopt(await self._store.outbox_open(), "the master stopped while it was sent")
        if self.open:
            self._log.info("outbox loaded", open=len(self.open))

    def take_in(self, account_ids: list[str], why: str, *, new_only: bool = False) -> None:
        """In a cluster: the open entries of these accounts, stored through any master,
        now this master's to send (in the background). ``new_only`` (a reply was just
        stored): only ``queued`` ones. One read as ``sending`` is this master's own, whose
        outcome may be stored since; only an account newly held has sends of another
        master's to make ``unknown``."""

        async def read() -> None:
            try:
                entries = await self._store.outbox_open(account_ids)
                if new_only:
                    entries = [e for e in entries if e.state is OutboxState.QUEUED]
            except Exception as exc:
                self._count_error()
                self._log.error("cannot read the accounts' replies", accounts=account_ids,
                                exc_info=exc)  # fmt: skip
                return
            adopted = self._adopt(entries, "its previous master lost the account while it was sent")
            if adopted:
                self._log.info("replies taken in", accounts=account_ids, replies=adopted, why=why)
            for account_id in account_ids:
                self.kick(account_id)

        self._spawn(read())

    def forget(self, account_ids: list[str]) -> None:
        """In a cluster: these accounts went to another master (after ``account_left``)."""
        gone = set(account_ids)
        for key in [k for k in self.open if k[0] in gone and k not in self._busy]:
            del self.open[key]
        for key in [k for k in self._relaunch if k[0] in gone]:
            del self._relaunch[key]

    def _adopt(self, entries: list[OutboxEntry], sending_why: str) -> int:
        """Open entries read from the store, of accounts this master holds, that it does
        not have yet: a queued one waits; one left ``sending`` is ``unknown``."""
        adopted = 0
        for entry in entries:
            key = (entry.account_id, entry.request_id)
            if not self._mine(entry.account_id) or key in self.open or key in self._busy:
                continue
            adopted += 1
            self.open[key] = entry
            if entry.state is OutboxState.SENDING:
                self._relaunch[key] = self._move(entry, OutboxState.UNKNOWN, error=sending_why)
        return adopted

    # --- in ---------------------------------------------------------------------------------

    def add(self, entry: OutboxEntry) -> None:
        """A new entry (already stored as queued)."""
        if not self._mine(entry.account_id):
            return  # another master's to send: it takes it in when the store tells it
        self.open[(entry.account_id, entry.request_id)] = entry
        self.counts[str(entry.state)] += 1
        self.wake()
        self.kick(entry.account_id)

    def kick(self, account_id: str) -> None:
        """The account may be able to send now: hand over what is ready."""
        link = self._link_of(account_id)
        if link is None:
            return
        self._relaunch_idempotent(account_id)
        mine = (e for e in self.open.values() if e.account_id == account_id)
        for entry in ready(mine, self._busy):
            self._busy.add((entry.account_id, entry.request_id))
            self._spawn(self._hand_over(entry, link))

    def on_result(self, link: WorkerLink, message: WorkerSendResult) -> None:
        key = (message.account_id, message.request_id)
        entry = self.open.get(key)
        if entry is None and message.outcome != "not_sent":  # late: it may be unknown now
            self._spawn(self._late_result(message))
            return
        if entry is None or entry.state is not OutboxState.SENDING:
            self._log.warning(
                "a send result for a reply not being sent ignored",
                worker=link.worker_id,
                account_id=message.account_id,
                request_id=message.request_id,
                outcome=message.outcome,
                state=str(entry.state) if entry else None,
            )
            return
        if message.outcome == "sent":
            self._move(entry, OutboxState.SENT, item_id=message.item_id)
        elif message.outcome == "failed":
            self._move(entry, OutboxState.FAILED, error=message.error or "failed")
        else:  # not handed to the platform: it may go again
            self._log.info(
                "reply not sent by the worker; queued again",
                account_id=entry.account_id,
                request_id=entry.request_id,
                why=message.error,
            )
            self._move(entry, OutboxState.QUEUED, error=message.error)
        self.kick(entry.account_id)

    async def _late_result(self, message: WorkerSendResult) -> None:
        entry = await self._store.outbox_get(message.account_id, message.request_id)
        if entry is None or entry.state is not OutboxState.UNKNOWN:
            self._log.warning(
                "a send result for a reply not being sent ignored",
                account_id=message.account_id,
                request_id=message.request_id,
                outcome=message.outcome,
                state=str(entry.state) if entry else None,
            )
            return
        if message.outcome == "sent":
            self._move(entry, OutboxState.SENT, item_id=message.item_id)
        else:
            self._move(entry, OutboxState.FAILED, error=message.error or "failed")

    def _relaunch_idempotent(self, account_id: str) -> None:
        """The account runs (its worker has said which platforms are idempotent): the
        entries made ``unknown`` when taken in are queued again if its sends are
        idempotent; otherwise they stay ``unknown`` for an operator."""
        keys = [k for k in self._relaunch if k[0] == account_id]
        if not keys:
            return
        idempotent = self._idempotent(account_id)
        for key in keys:
            entry = self._relaunch.pop(key)
            if idempotent:
                self._move(
                    entry, OutboxState.QUEUED, error=f"{entry.error}; sent again (idempotent)"
                )

    def account_left(self, account_id: str, why: str) -> None:
        """The account no longer runs where its replies were being sent."""
        lease_gone = self.lease_of is not None and self.lease_of(account_id) is None
        for entry in [e for e in self.open.values() if e.account_id == account_id]:
            if entry.state is not OutboxState.SENDING:
                continue
            if lease_gone:  # not this master's to say any more: the next holder's
                self._log.warning(
                    "reply left as it was being sent: the account's lease is gone; "
                    "its next master calls it unknown",
                    account_id=account_id,
                    request_id=entry.request_id,
                    why=why,
                )
            elif self._idempotent(account_id):
                self._move(entry, OutboxState.QUEUED, error=f"{why}; sent again (idempotent)")
            else:
                self._move(entry, OutboxState.UNKNOWN, error=f"{why} while it was being sent")

    def account_removed(self, account_id: str) -> None:
        for entry in [e for e in self.open.values() if e.account_id == account_id]:
            key = (entry.account_id, entry.request_id)
            if entry.state is OutboxState.QUEUED and key not in self._busy:
                self._move(entry, OutboxState.CANCELLED, error="the account was deleted")
        self.account_left(account_id, "the account was deleted")

    # --- operator actions ----------------------------------------------------------------

    def cancel(self, entry: OutboxEntry) -> OutboxEntry:
        """``entry`` as last stored; cancelled if it is queued (ReplyRefused if not)."""
        key = (entry.account_id, entry.request_id)
        current = self.open.get(key, entry)
        if current.state is not OutboxState.QUEUED or key in self._busy:
            raise ReplyRefused(409, f"the reply is {current.state}: only a queued one is cancelled")
        return self._move(current, OutboxState.CANCELLED)

    def retry(self, entry: OutboxEntry) -> OutboxEntry:
        """Queue again a reply that failed, expired or whose fate is unknown."""
        try:
            queued = entry.move(OutboxState.QUEUED, epoch_ms())
        except BadMove as exc:
            raise ReplyRefused(409, str(exc)) from None
        key = (entry.account_id, entry.request_id)
        self.open.pop(key, None)
        self._relaunch.pop(key, None)
        self._log.info("reply queued again by an operator", account_id=key[0], request_id=key[1])
        self._save(queued)
        self.open[key] = queued
        self.counts[str(queued.state)] += 1
        self.wake()
        self.kick(entry.account_id)
        return queued

    # --- time -------------------------------------------------------------------------------

    def next_expiry_ms(self) -> int | None:
        queued = [e.queued_since for e in self.open.values() if e.state is OutboxState.QUEUED]
        return min(queued) + int(self.expire_after_s * 1000) if queued else None

    def expire(self, now_ms: int) -> None:
        cutoff = now_ms - int(self.expire_after_s * 1000)
        for entry in list(self.open.values()):
            key = (entry.account_id, entry.request_id)
            if (
                entry.state is OutboxState.QUEUED
                and entry.queued_since <= cutoff
                and key not in self._busy
            ):
                self._move(
                    entry,
                    OutboxState.EXPIRED,
                    error=f"still queued after {self.expire_after_s:g} s (its account did not run)",
                )

    # --- inside -----------------------------------------------------------------------------

    def _move(
        self,
        entry: OutboxEntry,
        new: OutboxState,
        *,
        error: str | None = None,
        item_id: str | None = None,
    ) -> OutboxEntry:
        moved = entry.move(new, epoch_ms(), error=error, item_id=item_id)
        key = (entry.account_id, entry.request_id)
        self._relaunch.pop(key, None)
        if new in (OutboxState.QUEUED, OutboxState.SENDING):
            self.open[key] = moved
        else:
            self.open.pop(key, None)
        self.counts[str(new)] += 1
        level = (
            self._log.warning
            if new in (OutboxState.FAILED, OutboxState.UNKNOWN)
            else self._log.info
        )
        level(
            "reply state",
            account_id=entry.account_id,
            request_id=entry.request_id,
            old=str(entry.state),
            new=str(new),
            error=error,
            item_id=item_id,
        )
        self._save(moved)
        return moved

    async def _hand_over(self, entry: OutboxEntry, link: WorkerLink) -> None:
        key = (entry.account_id, entry.request_id)
        try:
            sending = entry.move(OutboxState.SENDING, epoch_ms())
            lease = self._lease(key[0])
            earlier = self._saving.get(key)
            if earlier is not None:  # its queued state first
                await asyncio.wait({earlier})
            try:  # stored before it goes: at most once
                await self._store.outbox_save(sending, lease=lease)
            except StaleLease as exc:
                self._refused(sending, exc)
                return
            except Exception as exc:
                self._count_error()
                self._log.error(
                    "reply not handed over: the store did not take its state; tried again",
                    account_id=key[0],
                    request_id=key[1],
                    exc_info=exc,
                )
                asyncio.get_running_loop().call_later(SAVE_RETRY_S, self.kick, entry.account_id)
                return
            if self.open.get(key) is not entry:  # cancelled or expired meanwhile: never sent
                return
            self.open[key] = sending
            self.counts[str(OutboxState.SENDING)] += 1
            self._log.info(
                "reply state",
                account_id=key[0],
                request_id=key[1],
                old="queued",
                new="sending",
                worker=link.worker_id,
                pid=link.pid,
            )
            if not link.send(
                MasterSend(account_id=key[0], request_id=key[1], action=entry.action)
            ):  # its process is gone: the reply never left the master
                self._move(sending, OutboxState.QUEUED, error="its worker had gone")
        finally:
            self._busy.discard(key)

    def _save(self, entry: OutboxEntry) -> None:
        """Store the entry's state, after its earlier states (in order, tried until the
        store takes it)."""
        key = (entry.account_id, entry.request_id)
        lease = self._lease(key[0])  # the lease it was made under, not the one at the write
        task = self._spawn(self._saved(self._saving.get(key), entry, lease))
        self._saving[key] = task
        task.add_done_callback(
            lambda done: self._saving.pop(key, None) if self._saving.get(key) is done else None
        )

    async def _saved(
        self, before: "asyncio.Task[None] | None", entry: OutboxEntry, lease: int | None
    ) -> None:
        if before is not None:
            await asyncio.wait({before})
        while True:
            try:
                await self._store.outbox_save(entry, lease=lease)
                return
            except StaleLease as exc:  # never tried again: it cannot succeed
                self._refused(entry, exc)
                return
            except Exception as exc:
                self._count_error()
                self._log.error(
                    "reply state not stored; trying again",
                    account_id=entry.account_id,
                    request_id=entry.request_id,
                    state=str(entry.state),
                    exc_info=exc,
                )
                await asyncio.sleep(SAVE_RETRY_S)

    def _lease(self, account_id: str) -> int | None:
        return None if self.lease_of is None else self.lease_of(account_id)

    def _refused(self, entry: OutboxEntry, exc: StaleLease) -> None:
        """The store refused the entry's state: this master no longer holds the lease it
        was made under. The entry is the account's present holder's now: forgotten here."""
        self.refused += 1
        key = (entry.account_id, entry.request_id)
        if key in self.open and not self._mine(entry.account_id):
            del self.open[key]
        self._relaunch.pop(key, None)
        self._log.warning(
            "reply state refused by the store: made under a lease this master lost; "
            "the account's present master decides",
            account_id=entry.account_id,
            request_id=entry.request_id,
            state=str(entry.state),
            why=str(exc),
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
