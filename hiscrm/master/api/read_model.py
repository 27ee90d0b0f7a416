"""One read model of the running master, for status, the API's views and the metrics.

Everything a reader may see is built here from the live state, on the master's loop;
nothing else reaches into the supervisor, the account manager or the store for reading.
A view built without awaiting (a worker, an account) is one moment of the master; one
that waits for the store (``status`` and its totals, an account's counts) may mix state
from before and after that wait. Figures that cost a system call (RSS, CPU) are read
here too, when a view is built.
"""

import asyncio
import os
from dataclasses import dataclass

from hiscrm import __version__
from hiscrm.items import epoch_ms
from hiscrm.logfile import tail_lines
from hiscrm.master.api.schemas import (
    AccountInfo,
    Health,
    ReloadResult,
    ReloadStep,
    StatusInfo,
    StoreTotals,
    SyncTotals,
    WorkerInfo,
)
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.store import CollectionQuery, Row, Store, StoreStats
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.worker_slot import WorkerSlot, WorkerState


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class CodeInfo:
    version: str
    stale: list[str]  # files that changed on disk since the process loaded them


class ReadModel:
    def __init__(
        self,
        supervisor: Supervisor,
        accounts: AccountManager,
        store: Store,
        processes: ProcessStats,
    ) -> None:
        self._supervisor = supervisor
        self._accounts = accounts
        self._store = store
        self._processes = processes

    # --- workers -------------------------------------------------------------------------

    def slot(self, worker_id: str) -> WorkerSlot:
        slot = self._supervisor.slots.get(worker_id)
        if slot is None:
            workers = ", ".join(self._supervisor.slots)
            raise NotFound(f"no worker {worker_id!r}; workers are {workers}")
        return slot

    def worker(self, worker_id: str) -> WorkerInfo:
        return self._worker(self.slot(worker_id))

    def workers(self) -> list[WorkerInfo]:
        views = [self._worker(s) for s in self._supervisor.slots.values()]
        self._processes.keep_only({v.pid for v in views if v.pid is not None})
        return views

    def _worker(self, slot: WorkerSlot) -> WorkerInfo:
        now = self._supervisor.now()
        process = slot.current
        sample = self._processes.sample(process.pid) if process is not None else None
        heartbeat = process.last_heartbeat if process is not None else None
        code = self.code_of(slot)
        return WorkerInfo(
            id=slot.id,
            state=slot.state.value,
            pid=slot.pid,
            restarts=slot.restarts,
            restarts_by_reason=dict(slot.restarts_by_reason),
            accounts=self._accounts.assigner.accounts_of(slot.id),
            heartbeat_age_s=_round(slot.heartbeat_age_s(now)),
            loop_lag_ms=heartbeat.loop_lag_ms if heartbeat else None,
            started_at=_wall_ms(now, process.started_at) if process is not None else None,
            uptime_s=_round(now - process.started_at) if process is not None else None,
            rss_bytes=sample.rss_bytes if sample else None,
            cpu_percent=sample.cpu_percent if sample else None,
            cpu_seconds=sample.cpu_seconds if sample else None,
            errors_total=slot.worker_errors,
            protocol_errors=sum(slot.protocol_errors.values()),
            protocol_errors_by_kind=dict(slot.protocol_errors),
            sync=dict(heartbeat.sync) if heartbeat else {},
            last_exit=slot.last_exit,
            code_version=code.version if code else None,
            stale_code=bool(code and code.stale),
            stale_files=code.stale if code else [],
        )

    def code_of(self, slot: WorkerSlot) -> CodeInfo | None:
        registered = slot.registered
        if registered is None:
            return None
        stale = self._supervisor.code.changed(registered.code_version, registered.code_files)
        return CodeInfo(registered.code_version, stale)

    async def worker_log(self, worker_id: str, lines: int) -> tuple[str, list[str]]:
        """The path and last lines of a worker's log, read off the event loop (a tail can
        be megabytes); also after the worker died."""
        path = self.slot(worker_id).log_path
        return str(path), await asyncio.to_thread(tail_lines, path, lines)

    # --- accounts ------------------------------------------------------------------------

    def account(self, account_id: str) -> AccountInfo:
        manager = self._accounts
        slot = manager.assigner.slots.get(account_id)
        if slot is None:
            raise NotFound(f"no account {account_id!r}")
        health = manager.health.accounts.get(account_id)
        return AccountInfo(
            id=account_id,
            platform=slot.account.platform,
            worker=slot.owner,
            home=slot.home,
            state=manager.account_states.get(account_id),
            last_sync_at=health.last_success_at if health else None,
            stale=bool(health and health.stale),
            syncs=health.syncs if health else 0,
            items_synced=health.items if health else 0,
            sync_errors=dict(health.errors) if health else {},
        )

    def accounts(self) -> list[AccountInfo]:
        return [self.account(a) for a in self._accounts.assigner.slots]

    async def account_with_counts(self, account_id: str) -> AccountInfo:
        info = self.account(account_id)
        info.counts = await self._store.count_items(account_id)
        return info

    # --- items ---------------------------------------------------------------------------

    async def page(self, collection: str, query: CollectionQuery) -> tuple[list[Row], int]:
        self.account(query.account_id)  # NotFound for an unknown account
        return await self._store.page(collection, query)

    async def item(self, collection: str, account_id: str, item_id: str) -> Row:
        self.account(account_id)
        row = await self._store.get_item(collection, account_id, item_id)
        if row is None:
            raise NotFound(f"no {collection[:-1]} {item_id!r} in account {account_id!r}")
        return row

    # --- the whole -----------------------------------------------------------------------

    def store_stats(self) -> StoreStats:
        return self._store.stats()

    async def status(self) -> StatusInfo:
        supervisor = self._supervisor
        now_ms = epoch_ms()
        slots = list(supervisor.slots.values())
        by_state: dict[str, int] = {s.value: 0 for s in WorkerState}
        for slot in slots:
            by_state[slot.state.value] += 1
        health = list(self._accounts.health.accounts.values())
        counts, counted_at = await self._store.totals()
        stats = self._store.stats()
        assigned = [s for s in self._accounts.assigner.slots.values() if s.owner is not None]
        return StatusInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=supervisor.started_at_ms,
            uptime_s=round((now_ms - supervisor.started_at_ms) / 1000, 3),
            state_dir=str(supervisor.config.state_dir),
            shutting_down=supervisor.shutting_down,
            workers=by_state,
            workers_total=len(slots),
            accounts_total=len(self._accounts.assigner.slots),
            accounts_assigned=len(assigned),
            store=StoreTotals(
                path=stats.where,
                items=counts,
                counted_at=counted_at,
                commits=stats.commits,
                items_written=stats.items_written,
                errors=stats.errors,
            ),
            sync=SyncTotals(
                syncs=sum(a.syncs for a in health),
                items=sum(a.items for a in health),
                errors=sum(sum(a.errors.values()) for a in health),
                stale_accounts=sum(1 for a in health if a.stale),
                last_success_at=max((a.last_success_at or 0 for a in health), default=0) or None,
            ),
            protocol_errors_total=supervisor.protocol_errors_total,
            worker_errors_total=sum(s.worker_errors for s in slots),
            internal_errors_total=supervisor.internal_errors_total,
            code_version=supervisor.code.master_version,
            stale_code=bool(supervisor.code.master_changed()),
            stale_workers=sum(1 for s in slots if (c := self.code_of(s)) and c.stale),
            last_reload=reload_result(supervisor.last_reload) if supervisor.last_reload else None,
        )

    def health(self) -> Health:
        checks = {
            "event_loop": True,  # it answered this request
            "store_thread": self._store.stats().alive,
            "not_shutting_down": not self._supervisor.shutting_down,
        }
        return Health(status="ok" if all(checks.values()) else "failing", checks=checks)


def reload_result(rollout: RollingReload) -> ReloadResult:
    return ReloadResult(
        why=rollout.why,
        running=not rollout.done,
        complete=rollout.done and rollout.error is None,
        took_s=round((rollout.ended or rollout.began) - rollout.began, 3),
        steps=[ReloadStep(**vars(step)) for step in rollout.steps],
        error=rollout.error,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _wall_ms(now: float, loop_time: float) -> int:
    """A loop-clock moment as ms since the epoch."""
    return epoch_ms() - int((now - loop_time) * 1000)
