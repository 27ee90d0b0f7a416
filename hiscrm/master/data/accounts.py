"""The master's side of the data path: which worker runs each account, syncs into the
store, acknowledgements back, stale-sync health.

The supervisor tells it, through ``AccountsPort``, when worker processes come and go and
hands it their data messages; it decides with the :class:`Assigner`, writes through the
:class:`Store`, and answers a process only after the store has committed. Messages to
one process go out in the order they were decided (one chain of sends per process), so
a revoke can never overtake the assignment it revokes.
"""

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.data.assigner import Action, Assign, Assigner, Revoke
from hiscrm.master.data.store import DigestEntry, Store, SyncBatch, SyncFailure, SyncOutcome
from hiscrm.master.data.sync_health import SyncHealth
from hiscrm.master.ports import WorkerLink
from hiscrm.models import AccountSpec
from hiscrm.protocol import (
    MAX_MESSAGE_BYTES,
    AnyMessage,
    MasterAccountAssign,
    MasterAccountDigest,
    MasterAccountRevoke,
    MasterDataAck,
    MasterDataNack,
    MasterSyncRequest,
    WorkerAccountReleased,
    WorkerAccountState,
    WorkerDataSync,
    chunk_by_size,
)

ASSIGN_ATTEMPTS = 3


def digest_chunks(
    entries: list[DigestEntry], budget: int = MAX_MESSAGE_BYTES - 1000
) -> list[list[DigestEntry]]:
    """Split digest entries so each ``master:account:digest`` stays within the limit."""
    # What an entry takes in the message's JSON: UTF-8 bytes, escapes included.
    return chunk_by_size(
        entries, lambda entry: len(json.dumps(entry, ensure_ascii=False).encode()) + 1, budget
    )


class AccountManager:
    def __init__(
        self,
        config: Config,
        store: Store,
        log: FilteringBoundLogger,
        now: float,
        observe_commit_latency: Callable[[float], None] = lambda seconds: None,
        count_error: Callable[[], int] | None = None,
    ) -> None:
        self._count_error = count_error or (lambda: 0)
        self._observe_commit_latency = observe_commit_latency
        self._store = store
        self._log = log
        self.assigner = Assigner(
            config.accounts,
            config.worker_ids,
            config.accounts_per_worker,
            config.supervision.reassign_after_s,
            now,
        )
        self.health = SyncHealth(config.sync.stale_after_s, log)
        self.account_states: dict[str, str] = {}  # as its worker last reported
        self._links: dict[str, WorkerLink] = {}  # worker id -> its serving process
        self._chains: dict[int, asyncio.Task[None]] = {}  # pid -> its last queued send
        homeless = [a for a, s in self.assigner.slots.items() if s.home is None]
        if homeless:
            self._log.warning(
                "accounts left without a worker: more accounts than workers * accounts_per_worker",
                accounts=homeless,
            )

    # --- worker processes ----------------------------------------------------------------

    def worker_up(self, link: WorkerLink, now: float) -> None:
        self._links[link.worker_id] = link
        self._execute(self.assigner.worker_up(link.worker_id, now), now)

    def worker_down(self, worker_id: str, now: float) -> None:
        self._links.pop(worker_id, None)
        self._execute(self.assigner.worker_down(worker_id, now), now)

    def relink(self, link: WorkerLink) -> None:
        self._links[link.worker_id] = link

    def accounts_of(self, worker_id: str) -> list[str]:
        return [a for a in self.assigner.accounts_of(worker_id) if not self.assigner.releasing(a)]

    def revoke(self, link: WorkerLink, account_id: str) -> None:
        self._chain(link, self._send(link, MasterAccountRevoke(account_id=account_id)))

    def assign(self, link: WorkerLink, account_id: str) -> None:
        self._chain(link, self._assign(link, self.assigner.slots[account_id].account))

    def next_deadline(self) -> float | None:
        deadlines = [
            d for d in (self.health.next_deadline(), self.assigner.next_deadline()) if d is not None
        ]
        return min(deadlines, default=None)

    def on_deadline(self, now: float) -> None:
        self.health.check(now)
        self._execute(self.assigner.tick(now), now)

    # --- data messages -------------------------------------------------------------------

    def on_sync(self, link: WorkerLink, message: WorkerDataSync) -> None:
        owner = self.assigner.owner_of(message.account_id)
        if owner != link.worker_id:
            reason = (
                f"account {message.account_id!r} is not assigned to {link.worker_id} "
                f"(owner: {owner})"
            )
            self.health.failure(message.account_id, SyncFailure.NOT_ASSIGNED)
            self._log.error(
                "sync refused", worker=link.worker_id, account_id=message.account_id, reason=reason
            )
            link.send(
                MasterDataNack(account_id=message.account_id, seq=message.last_seq, reason=reason)
            )
            return
        self._store.submit(
            SyncBatch(link, message.account_id, message.base_seq, message.last_seq, message.changes)
        )

    def on_outcomes(self, outcomes: list[SyncOutcome]) -> None:
        """From the store (on the loop): acknowledge what was committed, refuse the rest;
        each answer goes to the process that sent the sync, if it still runs."""
        now = asyncio.get_running_loop().time()
        at_ms = epoch_ms()
        for outcome in outcomes:
            batch = outcome.batch
            if outcome.ok:
                self._observe_commit_latency(time.monotonic() - batch.received_at)
                self.health.success(batch.account_id, now, at_ms, len(batch.changes))
                batch.link.send(
                    MasterDataAck(account_id=batch.account_id, seq=outcome.committed_seq)
                )
                continue
            reason = outcome.error or "unknown"
            self.health.failure(batch.account_id, outcome.failure or SyncFailure.STORE_ERROR)
            self._log.warning(
                "sync not committed",
                worker=batch.link.worker_id,
                account_id=batch.account_id,
                base_seq=batch.base_seq,
                last_seq=batch.last_seq,
                reason=reason,
            )
            batch.link.send(
                MasterDataNack(account_id=batch.account_id, seq=batch.last_seq, reason=reason)
            )

    def on_released(self, link: WorkerLink, message: WorkerAccountReleased, now: float) -> None:
        self._log.info(
            "account released",
            worker=link.worker_id,
            pid=link.pid,
            account_id=message.account_id,
            unacked=message.unacked,
        )
        self._execute(self.assigner.released(link.worker_id, message.account_id, now), now)

    def on_account_state(self, link: WorkerLink, message: WorkerAccountState, now: float) -> None:
        self.account_states[message.account_id] = message.state

    def request_sync(self, account_id: str, from_seq: int | None) -> str:
        """Ask the account's worker to sync now; its id. LookupError says why it cannot."""
        owner = self.assigner.owner_of(account_id)
        if owner is None:
            raise LookupError(f"account {account_id!r} has no worker right now")
        link = self._links.get(owner)
        if link is None or not link.serving:
            raise LookupError(f"account {account_id!r} belongs to {owner}, which is not running")
        if not link.send(MasterSyncRequest(account_id=account_id, from_seq=from_seq)):
            raise LookupError(f"{owner} did not take the request: its pipe is closed")
        return owner

    # --- carrying out decisions ----------------------------------------------------------

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            link = self._links.get(action.worker_id)
            if link is None:  # decided for a worker that is not up: a bug in the assigner
                self._count_error()
                self._log.error("no running process for an assignment decision", action=action)
                continue
            match action:
                case Assign(_, account):
                    self.health.watch(account.id, now)
                    self._chain(link, self._assign(link, account))
                case Revoke(worker_id, account_id):
                    self._log.info("revoking account", worker=worker_id, account_id=account_id)
                    self.revoke(link, account_id)

    def _chain(self, link: WorkerLink, step: Coroutine[Any, Any, None]) -> None:
        """Run ``step`` after every step queued before for the same process."""
        previous = self._chains.get(link.pid)

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await step

        task = asyncio.create_task(after_previous(), name=f"to:{link.worker_id}:{link.pid}")
        task.add_done_callback(lambda done: self._step_done(link.pid, done))
        self._chains[link.pid] = task

    def _step_done(self, pid: int, task: "asyncio.Task[None]") -> None:
        if self._chains.get(pid) is task:
            del self._chains[pid]
        if task.cancelled() or task.exception() is None:
            return
        self._count_error()
        self._log.error(
            "sending to a worker failed", task=task.get_name(), exc_info=task.exception()
        )

    async def _send(self, link: WorkerLink, message: AnyMessage) -> None:
        link.send(message)

    async def _assign(self, link: WorkerLink, account: AccountSpec) -> None:
        """Send the assignment and the store's digest of the account (read after every
        queued write; tried again if it fails). A big account's digest is megabytes: it
        is encoded off the loop."""
        account_id = account.id
        encode = link.encoder.encode
        for attempt in range(1, ASSIGN_ATTEMPTS + 1):
            try:
                digest = await self._store.digest(account_id)
                break
            except Exception as exc:
                self._count_error()
                self._log.error(
                    "cannot read the account's digest",
                    account_id=account_id,
                    attempt=attempt,
                    exc_info=exc,
                )
                await asyncio.sleep(attempt)
        else:
            return  # logged above; the account shows stale until its worker registers again

        def frames() -> list[bytes]:
            head = MasterAccountAssign(
                account=account, acked_seq=digest.acked_seq, digest_total=len(digest.entries)
            )
            return [encode(head)] + [
                encode(MasterAccountDigest(account_id=account_id, entries=chunk))
                for chunk in digest_chunks(digest.entries)
            ]

        encoded = await asyncio.to_thread(frames) if digest.entries else frames()
        if not link.serving:
            return  # it went away meanwhile; its accounts are placed again when it is back
        if not all(link.send_frame(frame) for frame in encoded):
            self._log.error(
                "assignment not delivered: the pipe closed",
                worker=link.worker_id,
                account_id=account_id,
            )
            return
        self._log.info(
            "account assigned",
            worker=link.worker_id,
            pid=link.pid,
            account_id=account_id,
            acked_seq=digest.acked_seq,
            items=len(digest.entries),
        )
