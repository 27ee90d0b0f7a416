"""The master's side of the accounts: which worker runs each one, its state as the master
sees it, syncs into the store and acknowledgements back, staleness, and the quarantine
of accounts that kill their workers.

The supervisor tells it, through ``AccountsPort``, when worker processes come and go and
hands it their messages; it decides with the :class:`Assigner` and the
:class:`Quarantine` (both pure), writes through the :class:`Store`, and answers a
process only after the store has committed. Messages to one process go out in the order
they were decided (one chain of sends per process), so a revoke can never overtake the
assignment it revokes.
"""

import asyncio
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.channel import FrameError
from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.data.account_registry import usable_specs
from hiscrm.master.data.account_status import AccountState, AccountStatus, TaskState, derive
from hiscrm.master.data.assigner import Action, Assign, Assigner, Revoke
from hiscrm.master.data.outbox import Outbox
from hiscrm.master.data.quarantine import Quarantine, QuarantineRule
from hiscrm.master.data.staleness import Staleness
from hiscrm.master.data.store import (
    AccountRecord,
    DigestEntry,
    Store,
    SyncBatch,
    SyncFailure,
    SyncOutcome,
)
from hiscrm.master.ports import EventSink, WorkerLink
from hiscrm.models import AccountSpec
from hiscrm.platform_names import resolve_platform_name
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
    WorkerError,
    WorkerHeartbeat,
    WorkerSendResult,
    chunk_by_size,
)
from hiscrm.sync_wire import SyncView

ASSIGN_ATTEMPTS = 3
SOLO_PREFIX = "solo-"  # the worker of a quarantined account: solo-<account id>


def solo_worker(account_id: str) -> str:
    return SOLO_PREFIX + account_id


def digest_chunks(
    entries: list[DigestEntry], budget: int = MAX_MESSAGE_BYTES - 1000
) -> list[list[DigestEntry]]:
    """Split digest entries so each ``master:account:digest`` stays within the limit."""
    # What an entry takes in the message's JSON: UTF-8 bytes, escapes included.
    return chunk_by_size(
        entries, lambda entry: len(json.dumps(entry, ensure_ascii=False).encode()) + 1, budget
    )


def _done(loop: asyncio.AbstractEventLoop) -> "asyncio.Future[None]":
    done: asyncio.Future[None] = loop.create_future()
    done.set_result(None)
    return done


async def _nothing_after(gathered: "asyncio.Future[list[None]]") -> None:
    await gathered


def _loop_now() -> float:
    """The supervisor's clock (the loop's), for deadlines."""
    return asyncio.get_running_loop().time()


class AccountManager:
    def __init__(
        self,
        config: Config,
        registry: list[AccountRecord],
        store: Store,
        log: FilteringBoundLogger,
        now: float,
        observe_commit_latency: Callable[[float], None] = lambda seconds: None,
        count_error: Callable[[], int] | None = None,
        publish: EventSink = lambda event, data: None,
        held: set[str] | None = None,
    ) -> None:
        self._count_error = count_error or (lambda: 0)
        # In a cluster, the accounts this master holds leases on (the lease keeper says
        # which); the others stay in the registry but are placed nowhere here. None: one
        # host, every account is this master's.
        self.held = held
        self.specs: dict[str, AccountSpec] = usable_specs(registry, log, self._count_error)
        registry = [r for r in registry if r.id in self.specs]  # bad rows: logged, left out
        self._letting_go: dict[str, asyncio.Future[None]] = {}  # leases being given up
        # In a cluster: each account's lease holder and the state it last reported.
        self.owners: dict[str, tuple[str | None, str | None]] = {}
        self._wake: Callable[[], None] = lambda: None
        self._observe_commit_latency = observe_commit_latency
        self._store = store
        self._log = log
        self._publish = publish
        sup = config.supervision
        accounts = [self._placed(spec) for spec in self.specs.values()]
        self.assigner = Assigner(
            accounts,
            config.worker_ids,
            config.accounts_per_worker,
            sup.reassign_after_s,
            now,
        )
        rule = config.quarantine
        self.quarantine = Quarantine(
            QuarantineRule(
                window_s=rule.window_s, deaths=rule.deaths, release_after_s=rule.release_after_s
            )
        )
        self.staleness = Staleness(config.sync.stale_after_s, log, self._stale_changed)
        self.status: dict[str, AccountStatus] = {
            r.id: AccountStatus(r.id, r.source) for r in registry
        }
        self.syncs: dict[str, int] = dict.fromkeys(self.status, 0)
        self.items_synced: dict[str, int] = dict.fromkeys(self.status, 0)
        self.sync_errors: dict[str, dict[str, int]] = {a: {} for a in self.status}
        self._links: dict[str, WorkerLink] = {}  # worker id -> its serving process
        self._chains: dict[int, asyncio.Task[None]] = {}  # pid -> its last queued send
        self._sending: set[asyncio.Task[None]] = set()  # every queued send not done
        self._solo: list[str] | None = None  # solo workers, kept until placement changes
        self._no_room: str | None = None  # why accounts have no home, likewise
        self._down: set[str] = set()  # workers that died and have not run again since
        self._master_stopping = False  # the master shuts down: accounts going down is expected
        self._leaving: dict[str, asyncio.Future[None]] = {}  # removed, not let go yet
        self.idempotent_platforms: set[str] = set()  # their sends may be repeated safely
        self.outbox = Outbox(
            store,
            log,
            self._count_error,
            config.outbox.expire_after_s,
            self._running_on,
            self._sends_idempotent,
            lambda account_id: self.held is None or account_id in self.held,
        )
        for account_id in self.status:
            self._refresh(account_id, "master started")
        self._warn_homeless(list(self.status), "master started")

    # --- queries -------------------------------------------------------------------------

    def accounts_of(self, worker_id: str) -> list[str]:
        return [a for a in self.assigner.accounts_of(worker_id) if not self.assigner.releasing(a)]

    def platform_specs(self) -> list[str]:
        specs = (resolve_platform_name(s.account.platform) for s in self.assigner.slots.values())
        return list(dict.fromkeys(specs))

    def solo_workers(self) -> list[str]:
        if self._solo is None:
            self._solo = self.assigner.solo_workers()
        return self._solo

    def is_stale(self, account_id: str) -> bool:
        return self.staleness.is_stale(account_id)

    def memory_limit_mb(self, worker_id: str) -> int | None:
        """The own ``max_memory_mb`` of the account a solo worker runs (None: a shared
        worker, whose accounts cannot be measured apart, or an account without one)."""
        if not worker_id.startswith(SOLO_PREFIX):
            return None
        spec = self.specs.get(worker_id.removeprefix(SOLO_PREFIX))
        return None if spec is None else spec.max_memory_mb

    # --- worker processes ----------------------------------------------------------------

    def worker_up(self, link: WorkerLink, now: float) -> None:
        self._links[link.worker_id] = link
        self._down.discard(link.worker_id)
        self._execute(self.assigner.worker_up(link.worker_id, now), now)
        self._refresh_worker(link.worker_id, "its worker runs")

    def worker_down(self, worker_id: str, now: float, abnormal: bool) -> None:
        """A slot's process is gone; ``abnormal``: it died in a way that may be an
        account's doing (killed, crashed, hung), with its accounts assigned."""
        self._links.pop(worker_id, None)
        self._down.add(worker_id)
        present = self.assigner.accounts_of(worker_id)
        for account_id in present:
            self.status[account_id].task = None
            self.outbox.account_left(account_id, f"{worker_id} died")
        self._execute(self.assigner.worker_down(worker_id, now), now)
        self._settle_leaving()
        present = [a for a in present if a in self.status]  # not those it was letting go
        if abnormal and present:
            for account_id in self.quarantine.death(present, worker_id, now):
                self._quarantine(account_id, worker_id, now)
        self._refresh_worker(worker_id, f"{worker_id} is down")

    def relink(self, link: WorkerLink) -> None:
        self._links[link.worker_id] = link

    def revoke(self, link: WorkerLink, account_id: str) -> None:
        self._chain(link, self._send(link, MasterAccountRevoke(account_id=account_id)))

    def assign(self, link: WorkerLink, account_id: str) -> None:
        self._chain(link, self._assign(link, self.assigner.slots[account_id].account))

    def next_deadline(self) -> float | None:
        expiry = self.outbox.next_expiry_ms()
        deadlines = (
            self.staleness.next_deadline(),
            self.assigner.next_deadline(),
            self.quarantine.next_deadline(),
            # On the loop's clock; one already past is in the past (never clamped to now:
            # a deadline that stays just ahead of the loop would never be due).
            None if expiry is None else _loop_now() + (expiry - epoch_ms()) / 1000,
        )
        return min((d for d in deadlines if d is not None), default=None)

    def on_deadline(self, now: float) -> None:
        self.staleness.check(now)
        self.outbox.expire(epoch_ms())
        waiting = lambda account_id: self.quarantine.suspected(account_id, now)  # noqa: E731
        self._execute(self.assigner.tick(now, waiting), now)
        for account_id in self.quarantine.due_for_release(now):
            self._log.info(
                "account released from quarantine: it ran alone without trouble",
                account_id=account_id,
                ran_alone_s=self.quarantine.rule.release_after_s,
            )
            self._execute(self.assigner.release_quarantine(account_id, now), now)
            self._refresh(account_id, "released from quarantine")
            self._publish("account.released", {"account_id": account_id, "by": "rule"})

    # --- accounts and workers that change -------------------------------------------

    def add(self, account: AccountSpec, source: str, now: float) -> None:
        if self.specs.get(account.id) == account and account.id in self.status:
            return  # known already (a cluster's lease keeper saw it in the registry first)
        self.specs[account.id] = account
        account = self._placed(account)
        self.status[account.id] = AccountStatus(account.id, source)
        self.syncs[account.id] = self.items_synced[account.id] = 0
        self.sync_errors[account.id] = {}
        self._log.info("account added", account_id=account.id, platform=account.platform)
        self._execute(self.assigner.add(account, now), now)
        self._refresh(account.id, "added")
        self._warn_homeless([account.id], "added")

    def change(self, account: AccountSpec, now: float) -> None:
        """New options, platform or enabled: its task restarts with them. Only a new
        memory limit: the next measurement judges by it; the task runs on."""
        before = self.specs.get(account.id)
        if before == account:
            return  # applied already (in a cluster, the registry's change may come first)
        limit = {"max_memory_mb": account.max_memory_mb}
        if before is not None and before.model_copy(update=limit) == account:
            self._log.info("account's memory limit changed", account_id=account.id, **limit)
            self.specs[account.id] = account
            if (slot := self.assigner.slots.get(account.id)) is not None:
                slot.account = slot.account.model_copy(update=limit)
            return
        self._log.info(
            "account changed; its task restarts with the change",
            account_id=account.id,
            enabled=account.enabled,
        )
        self.specs[account.id] = account
        account = self._placed(account)
        if not account.enabled:
            self.staleness.unwatch(account.id)
        self._execute(self.assigner.change(account, now), now)
        self._refresh(account.id, "changed" if account.enabled else "disabled")

    def remove(self, account_id: str, now: float) -> "asyncio.Future[None]":
        """Take the account away; the future is done once its worker has let it go (its
        changes flushed, its spool free)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._leaving[account_id] = done
        self.staleness.unwatch(account_id)
        self.quarantine.forget(account_id)
        self.outbox.account_removed(account_id)
        self._execute(self.assigner.remove(account_id, now), now)
        self._settle_leaving()
        return done

    def set_workers(self, worker_ids: list[str], now: float) -> None:
        """Scaling: homes move as little as possible (see the assigner)."""
        homed = [a for a, slot in self.assigner.slots.items() if slot.home is not None]
        self._execute(self.assigner.set_workers(worker_ids, now), now)
        for account_id in list(self.status):
            self._refresh(account_id, "workers changed")
        self._warn_homeless(homed, "workers changed")

    def holds(self, worker_id: str) -> bool:
        """Some account is assigned to, or being let go by, this worker."""
        return bool(self.assigner.accounts_of(worker_id))

    def _settle_leaving(self) -> None:
        for account_id, done in list(self._leaving.items()):
            if not self.assigner.gone(account_id):
                continue
            del self._leaving[account_id]
            self.specs.pop(account_id, None)
            self.status.pop(account_id, None)
            self.syncs.pop(account_id, None)
            self.items_synced.pop(account_id, None)
            self.sync_errors.pop(account_id, None)
            self._publish("account.removed", {"account_id": account_id})
            if not done.done():
                done.set_result(None)
        for account_id, done in list(self._letting_go.items()):
            slot = self.assigner.slots.get(account_id)
            if slot is None or (slot.owner is None and not slot.releasing):
                del self._letting_go[account_id]
                if not done.done():
                    done.set_result(None)

    # --- leases (a cluster) --------------------------------------------------------------

    def _placed(self, spec: AccountSpec) -> AccountSpec:
        """The account as the assigner places it: not at all (as if disabled) unless this
        master holds its lease."""
        if self.held is None or spec.id in self.held or not spec.enabled:
            return spec
        return spec.model_copy(update={"enabled": False})

    def lease_gained(self, account_ids: list[str], now: float) -> None:
        """This master now holds these accounts' leases: place them on its workers."""
        assert self.held is not None, "leases are for a cluster"
        for account_id in account_ids:
            self.held.add(account_id)
            spec = self.specs.get(account_id)
            if spec is None:
                continue  # not in the registry yet: placed when it is added
            self._log.info("lease gained; placing the account", account_id=account_id)
            self._execute(self.assigner.change(spec, now), now)
            self._refresh(account_id, "lease gained")
        self.outbox.take_in(account_ids, "lease gained")
        self._wake()

    def lease_lost(self, account_ids: list[str], now: float, why: str) -> "asyncio.Future[None]":
        """Stop these accounts' tasks (their workers let them go); done once no worker of
        this master holds any of them."""
        assert self.held is not None, "leases are for a cluster"
        loop = asyncio.get_running_loop()
        waits: list[asyncio.Future[None]] = []
        for account_id in account_ids:
            self.held.discard(account_id)
            spec = self.specs.get(account_id)
            slot = self.assigner.slots.get(account_id)
            if spec is None or slot is None:
                continue
            self._log.info("lease given up; stopping the account", account_id=account_id, why=why)
            self.staleness.unwatch(account_id)
            self.outbox.account_left(account_id, why)
            self.outbox.forget([account_id])
            self._execute(self.assigner.change(self._placed(spec), now), now)
            self._refresh(account_id, why)
            done = self._letting_go.get(account_id) or loop.create_future()
            self._letting_go[account_id] = done
            waits.append(done)
        self._settle_leaving()
        self._wake()
        if not waits:
            return _done(loop)
        gathered = asyncio.gather(*waits)
        return asyncio.ensure_future(_nothing_after(gathered))

    def running_here(self, account_id: str) -> bool:
        """Some worker of this master holds the account (or is letting it go)."""
        slot = self.assigner.slots.get(account_id)
        return slot is not None and slot.owner is not None

    # --- operator actions ----------------------------------------------------------------

    def release(self, account_id: str, now: float) -> bool:
        """Lift an account's quarantine; False if it was not quarantined."""
        if not self.quarantine.release(account_id):
            return False
        self._log.info("account released from quarantine by the operator", account_id=account_id)
        self._execute(self.assigner.release_quarantine(account_id, now), now)
        self._refresh(account_id, "released by the operator")
        self._publish("account.released", {"account_id": account_id, "by": "operator"})
        return True

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

    # --- messages from workers -----------------------------------------------------------

    def on_sync(self, link: WorkerLink, message: SyncView) -> None:
        owner = self.assigner.owner_of(message.account_id)
        if owner != link.worker_id:
            reason = (
                f"account {message.account_id!r} is not assigned to {link.worker_id} "
                f"(owner: {owner})"
            )
            self._sync_failed(message.account_id, SyncFailure.NOT_ASSIGNED)
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
        at_ms = epoch_ms()
        for outcome in outcomes:
            batch = outcome.batch
            account_id = batch.account_id
            if outcome.ok:
                self._observe_commit_latency(time.monotonic() - batch.received_at)
                status = self.status.get(account_id)
                if status is not None:
                    status.last_sync_at = at_ms
                    if batch.changes:
                        status.last_item_at = at_ms
                    self.syncs[account_id] = self.syncs.get(account_id, 0) + 1
                    self.items_synced[account_id] = self.items_synced.get(account_id, 0) + len(
                        batch.changes
                    )
                batch.link.send(MasterDataAck(account_id=account_id, seq=outcome.committed_seq))
                continue
            reason = outcome.error or "unknown"
            self._sync_failed(account_id, outcome.failure or SyncFailure.STORE_ERROR)
            self._log.warning(
                "sync not committed",
                worker=batch.link.worker_id,
                account_id=account_id,
                base_seq=batch.base_seq,
                last_seq=batch.last_seq,
                reason=reason,
            )
            batch.link.send(
                MasterDataNack(account_id=account_id, seq=batch.last_seq, reason=reason)
            )

    def on_released(self, link: WorkerLink, message: WorkerAccountReleased, now: float) -> None:
        self._log.info(
            "account released",
            worker=link.worker_id,
            pid=link.pid,
            account_id=message.account_id,
            unacked=message.unacked,
        )
        status = self.status.get(message.account_id)
        if status is not None:
            status.task = None
        self.outbox.account_left(message.account_id, f"{link.worker_id} let the account go")
        self._execute(self.assigner.released(link.worker_id, message.account_id, now), now)
        self._settle_leaving()
        self._refresh(message.account_id, "released by its worker")

    def master_stopping(self) -> None:
        self._master_stopping = True

    def handed_over(self, link: WorkerLink, account_id: str, why: str) -> None:
        self.outbox.account_left(account_id, f"{link.worker_id} (pid {link.pid}) {why}")

    def wake_with(self, wake: Callable[[], None]) -> None:
        self.outbox.wake = wake
        self._wake = wake

    def platforms_reported(self, idempotent: list[str]) -> None:
        self.idempotent_platforms.update(idempotent)

    def on_send_result(self, link: WorkerLink, message: WorkerSendResult) -> None:
        self.outbox.on_result(link, message)

    def _running_on(self, account_id: str) -> WorkerLink | None:
        """The process whose task of the account runs now (replies go there), if any."""
        slot = self.assigner.slots.get(account_id)
        status = self.status.get(account_id)
        if slot is None or status is None or slot.owner is None or slot.releasing:
            return None
        link = self._links.get(slot.owner)
        if link is None or not link.serving or status.task is not TaskState.RUNNING:
            return None
        return link

    def _sends_idempotent(self, account_id: str) -> bool:
        slot = self.assigner.slots.get(account_id)
        return slot is not None and (
            resolve_platform_name(slot.account.platform) in self.idempotent_platforms
        )

    def on_account_state(self, link: WorkerLink, message: WorkerAccountState, now: float) -> None:
        account_id = message.account_id
        status = self.status.get(account_id)
        if status is None or self.assigner.owner_of(account_id) != link.worker_id:
            return  # a state of an account this process no longer has
        try:
            task = TaskState(message.state)
        except ValueError:
            self._log.error(
                "unknown account task state", account_id=account_id, state=message.state
            )
            return
        status.task = task
        status.task_restarts = message.restarts
        failed = message.reason if task is TaskState.FAILED else None
        if failed is not None and failed != status.failed:
            # An error like any other, once; unless the worker reported it already since
            # the account's last change of state (it does when a platform raises as it is
            # made; a platform that cannot be imported has nobody else to report it).
            reported = status.last_error is not None and (
                status.last_error.at >= (status.state_since_at or 0)
            )
            if not reported:
                lines = failed.strip().splitlines()
                last = lines[-1][:300] if lines else "its platform cannot run"
                status.error(last, failed, epoch_ms())
        status.failed = failed
        if self.quarantine.is_quarantined(account_id) and link.worker_id == solo_worker(account_id):
            if task is TaskState.RUNNING:
                self.quarantine.running_alone(account_id, now)
            else:
                self.quarantine.stopped_alone(account_id)
        self._refresh(account_id, f"task {task}: {message.reason}"[:300])
        if task is TaskState.RUNNING:
            self.outbox.kick(account_id)

    def on_heartbeat(self, link: WorkerLink, message: WorkerHeartbeat, now: float) -> None:
        for account_id, at_ms in message.progress_at.items():
            status = self.status.get(account_id)
            if status is None or self.assigner.owner_of(account_id) != link.worker_id:
                continue
            if status.progress_at is None or at_ms > status.progress_at:
                status.progress_at = at_ms
                self.staleness.progress(account_id, now)

    def on_worker_error(self, link: WorkerLink, message: WorkerError) -> None:
        if message.account_id is None:
            return
        status = self.status.get(message.account_id)
        if status is not None:
            status.error(message.summary, message.traceback, epoch_ms())

    # --- states --------------------------------------------------------------------------

    def _refresh_worker(self, worker_id: str, reason: str) -> None:
        for account_id, slot in self.assigner.slots.items():
            if worker_id in (slot.owner, slot.home):
                self._refresh(account_id, reason)

    def _refresh(self, account_id: str, reason: str) -> None:
        status = self.status.get(account_id)
        slot = self.assigner.slots.get(account_id)
        if status is None or slot is None:
            return
        owner = slot.owner
        link = self._links.get(owner) if owner is not None else None
        state = derive(
            enabled=slot.account.enabled,
            failed=status.failed is not None,
            quarantined=self.quarantine.is_quarantined(account_id),
            owner=owner,
            owner_running=link is not None and link.serving,
            home=slot.home,
            home_down=slot.home in self._down,
            task=status.task,
        )
        if (
            state is AccountState.DISABLED
            and self.held is not None
            and account_id not in self.held
            and self.specs[account_id].enabled
        ):
            state = AccountState.ELSEWHERE
        if state is AccountState.FAILED and status.failed:
            reason = status.failed.strip().splitlines()[-1][:300] if status.failed else reason
        if state is AccountState.UNASSIGNED:
            reason = self._why_no_room()
        expected = self._master_stopping and state is AccountState.DOWN
        if status.move(state, reason, self._log, expected, worker=owner):
            event: dict[str, object] = {
                "account_id": account_id,
                "state": str(state),
                "reason": reason,
                "worker": owner,
            }
            if (traceback := status.traceback_tail()) is not None:
                event["traceback"] = traceback  # the log line keeps to one line
            self._publish("account.state", event)

    def _warn_homeless(self, account_ids: list[str], why: str) -> None:
        """Of these accounts, those now without a home for want of room (unassigned, or
        soon: once their worker lets them go): one warning with the numbers."""
        slots = self.assigner.slots
        homeless = [
            a
            for a in account_ids
            if a in slots
            and slots[a].home is None
            and slots[a].account.enabled
            and not slots[a].leaving
        ]
        if homeless:
            self._log.warning(
                "accounts left without a worker",
                accounts=homeless,
                reason=self._why_no_room(),
                why=why,
            )

    def _why_no_room(self) -> str:
        """``Assigner.no_room`` (which counts every home), once per placement change:
        scaling refreshes every account, and many may be unassigned."""
        if self._no_room is None:
            self._no_room = self.assigner.no_room()
        return self._no_room

    def _stale_changed(self, account_id: str, stale: bool) -> None:
        self._publish("account.stale", {"account_id": account_id, "stale": stale})

    def _quarantine(self, account_id: str, died: str, now: float) -> None:
        solo = solo_worker(account_id)
        self._log.warning(
            "account quarantined: its workers die while it runs; it runs alone from now on",
            account_id=account_id,
            died_on=died,
            deaths=self.quarantine.deaths(account_id, now),
            worker=solo,
        )
        self._execute(self.assigner.quarantine(account_id, solo, now), now)
        self._refresh(account_id, f"quarantined after deaths on {died}")
        self._publish("account.quarantined", {"account_id": account_id, "worker": solo})

    def _sync_failed(self, account_id: str, failure: SyncFailure) -> None:
        errors = self.sync_errors.setdefault(account_id, {})
        errors[failure] = errors.get(failure, 0) + 1

    # --- carrying out decisions ----------------------------------------------------------

    def _execute(self, actions: list[Action], now: float) -> None:
        self._solo = self._no_room = None  # placement may have changed
        for action in actions:
            link = self._links.get(action.worker_id)
            if link is None:  # decided for a worker that is not up: a bug in the assigner
                self._count_error()
                self._log.error("no running process for an assignment decision", action=action)
                continue
            match action:
                case Assign(_, account):
                    self.staleness.watch(account.id, now)
                    self._chain(link, self._assign(link, account))
                case Revoke(worker_id, account_id):
                    self._log.info("revoking account", worker=worker_id, account_id=account_id)
                    self.revoke(link, account_id)
            self._refresh(action.account_id, "placed")

    def _chain(self, link: WorkerLink, step: Coroutine[Any, Any, None]) -> None:
        """Run ``step`` after every step queued before for the same process."""
        previous = self._chains.get(link.pid)

        async def after_previous() -> None:
            if previous is not None:
                await asyncio.wait({previous})
            await step

        task = asyncio.create_task(after_previous(), name=f"to:{link.worker_id}:{link.pid}")
        task.add_done_callback(lambda done: self._step_done(link.pid, done))
        task.add_done_callback(lambda _: step.close())  # cancelled before it began: no warning
        self._chains[link.pid] = task
        self._sending.add(task)

    async def stop(self) -> None:
        """Once every worker has stopped, before the store closes: what was still to be
        sent to them goes (an assignment would read the closed store)."""
        for task in self._sending:
            task.cancel()
        if self._sending:
            await asyncio.wait(self._sending)

    def _step_done(self, pid: int, task: "asyncio.Task[None]") -> None:
        self._sending.discard(task)
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
        try:
            delivered = all(link.send_frame(frame) for frame in encoded)
        except FrameError as exc:  # cannot happen with valid options (bounded far below)
            self._log.error(
                "assignment cannot be sent: its frame is refused",
                worker=link.worker_id,
                account_id=account_id,
                reason=str(exc),
                errors_total=self._count_error(),
            )
            return
        if not delivered:
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
