"""What the API may see and do in the master.

Views are built from the live state on the master's loop (the API runs on the same
loop, so a view is one consistent moment). Actions never change that state here: they
are commands handed to the supervisor, serialized per worker, and answered once they
have settled.
"""

import asyncio
import os
import time
from collections import defaultdict
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
    SyncRequested,
    SyncTotals,
    WorkerAction,
    WorkerInfo,
)
from hiscrm.master.data import datastore, queries
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.worker_handle import WorkerHandle, WorkerState


class NotFound(LookupError):
    pass


@dataclass(frozen=True)
class CodeInfo:
    version: str
    stale: list[str]  # files that changed on disk since the process loaded them


class Control:
    def __init__(
        self, supervisor: Supervisor, reader: queries.StoreReader, processes: ProcessStats
    ) -> None:
        self.supervisor = supervisor
        self.reader = reader
        self._processes = processes
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.config = supervisor.config

    # --- workers -------------------------------------------------------------------------

    def handle(self, worker_id: str) -> WorkerHandle:
        handle = self.supervisor.handles.get(worker_id)
        if handle is None:
            raise NotFound(
                f"no worker {worker_id!r}; workers are {', '.join(self.supervisor.handles)}"
            )
        return handle

    def worker(self, handle: WorkerHandle) -> WorkerInfo:
        now = self.supervisor.now()
        sample = self._processes.sample(handle.pid) if handle.pid is not None else None
        manager = self.supervisor.accounts
        started = handle.started_at
        code = self.code_of(handle)
        return WorkerInfo(
            id=handle.id,
            state=handle.state.value,
            pid=handle.pid,
            restarts=handle.restarts,
            restarts_by_reason=dict(handle.restarts_by_reason),
            accounts=manager.assigner.accounts_of(handle.id) if manager else [],
            heartbeat_age_s=_round(handle.heartbeat_age_s(now)) if handle.pid is not None else None,
            loop_lag_ms=handle.last_heartbeat.loop_lag_ms if handle.last_heartbeat else None,
            started_at=_wall_ms(now, started)
            if started is not None and handle.pid is not None
            else None,
            uptime_s=_round(now - started)
            if started is not None and handle.pid is not None
            else None,
            rss_bytes=sample.rss_bytes if sample else None,
            cpu_percent=sample.cpu_percent if sample else None,
            errors_total=handle.worker_errors,
            protocol_errors=sum(handle.protocol_errors.values()),
            sync=dict(handle.last_heartbeat.sync) if handle.last_heartbeat else {},
            last_exit=handle.last_exit,
            code_version=code.version if code else None,
            stale_code=bool(code and code.stale),
            stale_files=code.stale if code else [],
        )

    def code_of(self, handle: WorkerHandle) -> "CodeInfo | None":
        registered = handle.registered
        if registered is None or handle.pid is None:
            return None
        stale = self.supervisor.code.changed(registered.code_version, registered.code_files)
        return CodeInfo(registered.code_version, stale)

    def workers(self) -> list[WorkerInfo]:
        return [self.worker(h) for h in self.supervisor.handles.values()]

    async def worker_log(self, handle: WorkerHandle, lines: int) -> list[str]:
        """The last lines of its log, read off the event loop (a tail can be megabytes)."""
        return await asyncio.to_thread(tail_lines, handle.log_path, lines)

    async def act(self, worker_id: str, action: str, timeout_s: float) -> WorkerAction:
        """stop / start / restart, one at a time per worker; answers with the result."""
        handle = self.handle(worker_id)
        async with self._locks[worker_id]:
            previous = handle.pid
            began = time.monotonic()
            await asyncio.wait_for(self.supervisor.command(action, worker_id), timeout_s)
            return WorkerAction(
                action=action,
                previous_pid=previous,
                took_s=round(time.monotonic() - began, 3),
                worker=self.worker(handle),
            )

    async def reload(self, timeout_s: float) -> ReloadResult:
        rollout: RollingReload = await asyncio.wait_for(
            self.supervisor.command("reload"), timeout_s
        )
        return reload_result(rollout)

    def action_timeout_s(self) -> float:
        """Long enough for a stop that escalates to SIGKILL and a start that times out."""
        sup = self.config.supervision
        return sup.stop_timeout_s + 2 * sup.kill_timeout_s + sup.start_timeout_s + 5

    # --- accounts ------------------------------------------------------------------------

    def _account(self, account_id: str) -> AccountInfo:
        manager = self.supervisor.accounts
        if manager is None or account_id not in manager.assigner.slots:
            raise NotFound(f"no account {account_id!r}")
        slot = manager.assigner.slots[account_id]
        health = manager.health.accounts.get(account_id)
        state = manager.account_states.get(account_id)
        return AccountInfo(
            id=account_id,
            platform=slot.account.platform,
            worker=slot.owner,
            home=slot.home,
            state=state,
            last_sync_at=health.last_success_at if health else None,
            stale=bool(health and health.stale),
            syncs=health.syncs if health else 0,
            items_synced=health.items if health else 0,
            sync_errors=dict(health.errors) if health else {},
        )

    def accounts(self) -> list[AccountInfo]:
        manager = self.supervisor.accounts
        return [self._account(a) for a in (manager.assigner.slots if manager else {})]

    async def account(self, account_id: str) -> AccountInfo:
        info = self._account(account_id)
        info.counts = await self.reader.run(lambda conn: datastore.count_items(conn, account_id))
        return info

    def check_account(self, account_id: str) -> None:
        self._account(account_id)

    def request_sync(self, account_id: str, from_seq: int | None) -> SyncRequested:
        self.check_account(account_id)
        manager = self.supervisor.accounts
        assert manager is not None
        worker = manager.request_sync(account_id, from_seq)
        return SyncRequested(account_id=account_id, worker=worker, from_seq=from_seq)

    # --- the whole ---------------------------------------------------------------------

    async def status(self) -> StatusInfo:
        supervisor = self.supervisor
        now_ms = epoch_ms()
        by_state: dict[str, int] = {s.value: 0 for s in WorkerState}
        for handle in supervisor.handles.values():
            by_state[handle.state.value] += 1
        manager = supervisor.accounts
        health = manager.health.accounts.values() if manager else []
        counts, counted_at = await self.reader.totals()
        return StatusInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=supervisor.started_at_ms,
            uptime_s=round((now_ms - supervisor.started_at_ms) / 1000, 3),
            state_dir=str(self.config.state_dir),
            shutting_down=supervisor.shutting_down,
            workers=by_state,
            workers_total=len(supervisor.handles),
            accounts_total=len(self.config.accounts),
            accounts_assigned=len(self.config.accounts) - len(manager.assigner.unplaced)
            if manager
            else 0,
            store=StoreTotals(
                path=str(self.reader.path),
                items=counts,
                counted_at=counted_at,
                commits=supervisor.store.commits,
                items_written=supervisor.store.items_written,
                errors=supervisor.store.errors,
            ),
            sync=SyncTotals(
                syncs=sum(a.syncs for a in health),
                items=sum(a.items for a in health),
                errors=sum(sum(a.errors.values()) for a in health),
                stale_accounts=sum(1 for a in health if a.stale),
                last_success_at=max((a.last_success_at or 0 for a in health), default=0) or None,
            ),
            protocol_errors_total=supervisor.protocol_errors_total,
            worker_errors_total=sum(h.worker_errors for h in supervisor.handles.values()),
            internal_errors_total=supervisor.internal_errors_total,
            code_version=supervisor.code.master_version,
            stale_code=bool(supervisor.code.master_changed()),
            stale_workers=sum(
                1 for h in supervisor.handles.values() if (c := self.code_of(h)) and c.stale
            ),
            last_reload=reload_result(supervisor.last_reload) if supervisor.last_reload else None,
        )

    def health(self) -> Health:
        checks = {
            "event_loop": True,  # it answered this request
            "store_thread": self.supervisor.store.alive,
            "not_shutting_down": not self.supervisor.shutting_down,
        }
        return Health(status="ok" if all(checks.values()) else "failing", checks=checks)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _wall_ms(now: float, loop_time: float) -> int:
    """A loop-clock moment as ms since the epoch."""
    return epoch_ms() - int((now - loop_time) * 1000)


def reload_result(rollout: RollingReload) -> ReloadResult:
    return ReloadResult(
        why=rollout.why,
        running=not rollout.done,
        complete=rollout.done and rollout.error is None,
        took_s=round((rollout.ended or rollout.began) - rollout.began, 3),
        steps=[ReloadStep(**vars(step)) for step in rollout.steps],
        error=rollout.error,
    )
