"""The master's side of the data path: which worker runs each account, syncs into the
store, acknowledgements back, stale-sync health.

The supervisor tells it when workers come and go and hands it the data messages; it
decides with the :class:`Assigner`, writes through the :class:`StoreThread`, and answers
workers only after the store has committed. Messages to one worker go out in the order
they were decided (one chain of sends per worker), so a revoke can never overtake the
assignment it revokes.
"""

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.data import datastore
from hiscrm.master.data.assigner import Action, Assign, Assigner, Revoke
from hiscrm.master.data.store_thread import StoreThread, SyncBatch, SyncOutcome
from hiscrm.master.data.sync_health import SyncHealth
from hiscrm.master.supervision.worker_handle import WorkerHandle, WorkerState
from hiscrm.protocol import (
    MAX_MESSAGE_BYTES,
    MasterAccountAssign,
    MasterAccountDigest,
    MasterAccountRevoke,
    MasterDataAck,
    MasterDataNack,
    MasterSyncRequest,
    WorkerAccountReleased,
    WorkerDataSync,
    chunk_by_size,
)

DigestEntry = tuple[str, str, int, str]
ASSIGN_ATTEMPTS = 3


@dataclass
class Handover:
    """A rolling reload moving a slot's accounts from its old process to its new one."""

    old: WorkerHandle
    new: WorkerHandle
    old_pid: int | None
    accounts: list[str]
    pending: set[str]  # not released by the old process yet
    revoked_at: dict[str, float] = field(default_factory=dict)
    released_at: dict[str, float] = field(default_factory=dict)
    gaps_ms: dict[str, float] = field(default_factory=dict)  # revoked -> running in the new one
    settled: set[str] = field(default_factory=set)  # the new process reported a state for it


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
        store: StoreThread,
        handles: dict[str, WorkerHandle],
        log: FilteringBoundLogger,
        now: float,
        observe_commit_latency: Callable[[float], None] = lambda seconds: None,
        find_handle: Callable[[str, int], WorkerHandle | None] | None = None,
        count_error: Callable[[], int] | None = None,
    ) -> None:
        self._count_error = count_error or (lambda: 0)
        self._observe_commit_latency = observe_commit_latency
        # The handle whose process has this pid: during a reload a slot has two.
        self._find_handle = find_handle or (
            lambda worker_id, pid: h if (h := handles.get(worker_id)) and h.pid == pid else None
        )
        self._handovers: dict[str, Handover] = {}
        self._store = store
        self._handles = handles
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
        self._outbox: dict[str, asyncio.Task[None]] = {}
        homeless = [a for a, s in self.assigner.slots.items() if s.home is None]
        if homeless:
            self._log.warning(
                "accounts left without a worker: more accounts than workers * accounts_per_worker",
                accounts=homeless,
            )

    # --- worker lifecycle ----------------------------------------------------------------

    def worker_up(self, handle: WorkerHandle, now: float) -> None:
        self._execute(self.assigner.worker_up(handle.id, now), now)

    def worker_down(self, worker_id: str, now: float) -> None:
        self._execute(self.assigner.worker_down(worker_id, now), now)

    def next_deadline(self) -> float | None:
        deadlines = [
            d for d in (self.health.next_deadline(), self.assigner.next_deadline()) if d is not None
        ]
        return min(deadlines, default=None)

    def on_deadline(self, now: float) -> None:
        self.health.check(now)
        self._execute(self.assigner.tick(now), now)

    # --- data messages -------------------------------------------------------------------

    def on_sync(self, handle: WorkerHandle, message: WorkerDataSync) -> None:
        owner = self.assigner.owner_of(message.account_id)
        if owner != handle.id or handle.pid is None:
            reason = (
                f"account {message.account_id!r} is not assigned to {handle.id} (owner: {owner})"
            )
            self.health.failure(message.account_id, "not_assigned")
            self._log.error(
                "sync refused", worker=handle.id, account_id=message.account_id, reason=reason
            )
            handle.send(
                MasterDataNack(account_id=message.account_id, seq=message.last_seq, reason=reason)
            )
            return
        self._store.submit(
            SyncBatch(
                handle.id,
                handle.pid,
                message.account_id,
                message.base_seq,
                message.last_seq,
                message.changes,
            )
        )

    def on_outcomes(self, outcomes: list[SyncOutcome], now: float) -> None:
        at_ms = epoch_ms()
        for outcome in outcomes:
            batch = outcome.batch
            handle = self._find_handle(batch.worker_id, batch.pid)
            same_process = handle is not None
            if outcome.ok:
                self._observe_commit_latency(time.monotonic() - batch.received_at)
                self.health.success(batch.account_id, now, at_ms, len(batch.changes))
                if same_process and handle is not None:
                    handle.send(
                        MasterDataAck(account_id=batch.account_id, seq=outcome.committed_seq)
                    )
                continue
            reason = outcome.error or "unknown"
            kind = reason.split(":", 1)[0].replace(" ", "_")
            self.health.failure(batch.account_id, kind)
            self._log.warning(
                "sync not committed",
                worker=batch.worker_id,
                account_id=batch.account_id,
                base_seq=batch.base_seq,
                last_seq=batch.last_seq,
                reason=reason,
            )
            if same_process and handle is not None:
                handle.send(
                    MasterDataNack(account_id=batch.account_id, seq=batch.last_seq, reason=reason)
                )

    def on_released(self, handle: WorkerHandle, message: WorkerAccountReleased, now: float) -> None:
        self._log.info(
            "account released",
            worker=handle.id,
            pid=handle.pid,
            account_id=message.account_id,
            unacked=message.unacked,
        )
        handover = self._handovers.get(handle.id)
        if (
            handover is not None
            and handle is handover.old
            and message.account_id in handover.pending
        ):
            self._hand_to_new(handover, message.account_id, now)
            return
        self._execute(self.assigner.released(handle.id, message.account_id, now), now)

    def on_account_state(
        self, handle: WorkerHandle, account_id: str, state: str, now: float
    ) -> None:
        self.account_states[account_id] = state
        handover = self._handovers.get(handle.id)
        if handover is not None and handle is handover.new and account_id in handover.released_at:
            handover.settled.add(account_id)
        if (
            handover is None
            or handle is not handover.new
            or state != "running"
            or account_id not in handover.revoked_at
            or account_id in handover.gaps_ms
        ):
            return
        gap_ms = (now - handover.revoked_at[account_id]) * 1000
        handover.gaps_ms[account_id] = gap_ms
        released = handover.released_at.get(account_id)
        self._log.info(
            "account handed over",
            worker=handle.id,
            account_id=account_id,
            old_pid=handover.old_pid,
            new_pid=handle.pid,
            gap_ms=round(gap_ms, 1),
            flush_ms=round((released - handover.revoked_at[account_id]) * 1000, 1)
            if released
            else None,
        )

    # --- handing accounts from an old process to its replacement (rolling reload) ---------

    def begin_handover(self, old: WorkerHandle, new: WorkerHandle, now: float) -> None:
        """Revoke every account of ``old``; each goes to ``new`` once released."""
        accounts = [
            a for a in self.assigner.accounts_of(old.id) if not self.assigner.slots[a].releasing
        ]
        handover = Handover(old, new, old.pid, accounts, set(accounts))
        self._handovers[old.id] = handover
        for account_id in accounts:
            handover.revoked_at[account_id] = now
            self._chain(old.id, self._send(old, MasterAccountRevoke(account_id=account_id)))
        self._log.info(
            "handing accounts over",
            worker=old.id,
            old_pid=old.pid,
            new_pid=new.pid,
            accounts=accounts,
        )

    def handover_done(self, old: WorkerHandle) -> bool:
        """Every account released by the old process and taken up by the new one (or the
        new one is gone, and the slot's restart takes the accounts)."""
        handover = self._handovers.get(old.id)
        if handover is None or handover.old is not old:
            return True
        if handover.pending:
            return False
        return (
            handover.settled >= set(handover.accounts)
            or handover.new.state is not WorkerState.RUNNING
        )

    def handover_waiting_for(self, old: WorkerHandle) -> dict[str, list[str]]:
        """For the log: accounts not released by the old process, not taken up by the new."""
        handover = self._handovers.get(old.id)
        if handover is None or handover.old is not old:
            return {}
        return {
            "release": sorted(handover.pending),
            "take_up": sorted(set(handover.accounts) - handover.settled - handover.pending),
        }

    def end_handover(self, old: WorkerHandle) -> "Handover | None":
        handover = self._handovers.get(old.id)
        if handover is None or handover.old is not old:
            return None
        return self._handovers.pop(old.id)

    def retired_process_exited(self, handle: WorkerHandle, now: float) -> None:
        """An old process died during a handover: its death releases what it held."""
        handover = self._handovers.get(handle.id)
        if handover is not None and handover.old is handle:
            for account_id in sorted(handover.pending):
                self._hand_to_new(handover, account_id, now)

    def _hand_to_new(self, handover: "Handover", account_id: str, now: float) -> None:
        handover.pending.discard(account_id)
        handover.released_at[account_id] = now
        new = handover.new
        self._chain(
            new.id, self._assign(new, Assign(new.id, self.assigner.slots[account_id].account))
        )

    def request_sync(self, account_id: str, from_seq: int | None) -> str:
        """Ask the account's worker to sync now; its id. LookupError says why it cannot."""
        owner = self.assigner.owner_of(account_id)
        if owner is None:
            raise LookupError(f"account {account_id!r} has no worker right now")
        handle = self._handles[owner]
        if handle.state is not WorkerState.RUNNING:
            raise LookupError(
                f"account {account_id!r} belongs to {owner}, which is {handle.state.value}"
            )
        if not handle.send(MasterSyncRequest(account_id=account_id, from_seq=from_seq)):
            raise LookupError(f"{owner} did not take the request: its pipe is closed")
        return owner

    # --- carrying out decisions ----------------------------------------------------------

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            match action:
                case Assign(worker_id, account):
                    self.health.watch(account.id, now)
                    self._chain(worker_id, self._assign(self._handles[worker_id], action))
                case Revoke(worker_id, account_id):
                    self._log.info("revoking account", worker=worker_id, account_id=account_id)
                    handle = self._handles[worker_id]
                    self._chain(
                        worker_id, self._send(handle, MasterAccountRevoke(account_id=account_id))
                    )

    def _chain(self, worker_id: str, step: Coroutine[Any, Any, None]) -> None:
        previous = self._outbox.get(worker_id)

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await step

        task = asyncio.create_task(after_previous(), name=f"outbox:{worker_id}")
        task.add_done_callback(self._step_done)
        self._outbox[worker_id] = task

    def _step_done(self, task: "asyncio.Task[None]") -> None:
        if task.cancelled() or task.exception() is None:
            return
        self._count_error()
        self._log.error(
            "sending to a worker failed", task=task.get_name(), exc_info=task.exception()
        )

    async def _send(self, handle: WorkerHandle, message: Any) -> None:
        handle.send(message)

    async def _assign(self, handle: WorkerHandle, action: Assign) -> None:
        """Send the assignment and the store's digest of the account. Read and encoded in
        the store thread (a big account's digest is megabytes); tried again if it fails."""
        pid = handle.pid
        account_id = action.account.id
        encode = handle.encoder.encode

        def read(conn: Any) -> tuple[int, int, list[bytes]]:
            acked = datastore.committed_seq(conn, account_id)
            entries = datastore.digest(conn, account_id)
            frames = [
                encode(
                    MasterAccountAssign(
                        account=action.account, acked_seq=acked, digest_total=len(entries)
                    )
                )
            ]
            frames += [
                encode(MasterAccountDigest(account_id=account_id, entries=c))
                for c in digest_chunks(entries)
            ]
            return acked, len(entries), frames

        for attempt in range(1, ASSIGN_ATTEMPTS + 1):
            try:
                acked_seq, items, frames = await self._store.call(read)
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
        if handle.pid != pid or handle.state is not WorkerState.RUNNING:
            return  # it went away meanwhile; it gets its accounts again when it registers
        if not all(handle.send_frame(frame) for frame in frames):
            self._log.error(
                "assignment not delivered: the pipe closed", worker=handle.id, account_id=account_id
            )
            return
        self._log.info(
            "account assigned",
            worker=handle.id,
            pid=pid,
            account_id=account_id,
            acked_seq=acked_seq,
            items=items,
        )
