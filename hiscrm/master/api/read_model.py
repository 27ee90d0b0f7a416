"""One read model of the running master, for status, the API's views and the metrics.

Everything a reader may see is built here from the live state, on the master's loop;
nothing else reaches into the supervisor, the account manager or the store for reading.
A view built without awaiting (a worker, an account) is one moment of the master; one
that waits for the store (``status`` and its totals, an account's counts) may mix state
from before and after that wait. Figures that cost a system call (RSS, CPU) are read
here too, when a view is built; a worker's tree memory is the memory watch's last pass.
"""

import asyncio
import os
import shutil

import msgspec
from msgspec.structs import asdict

from hiscrm import __version__
from hiscrm.items import epoch_ms
from hiscrm.logfile import tail_lines
from hiscrm.master.api.cluster_info import ClusterInfo, cluster_info, one_host
from hiscrm.master.api.health import HealthInputs, assess, unannounced
from hiscrm.master.api.schemas import (
    AccountInfo,
    Health,
    LastError,
    ReloadResult,
    ReloadStep,
    StatusInfo,
    StoreTotals,
    SyncTotals,
    WorkerInfo,
)
from hiscrm.master.data.account_status import AccountState
from hiscrm.master.data.accounts import AccountManager
from hiscrm.master.data.lease_view import LeaseStats
from hiscrm.master.data.store import CollectionQuery, Row, Store, StoreStats
from hiscrm.master.supervision.process_stats import ProcessStats
from hiscrm.master.supervision.rolling_reload import RollingReload
from hiscrm.master.supervision.supervisor import Supervisor
from hiscrm.master.supervision.template_launcher import TemplateLauncher
from hiscrm.master.supervision.worker_slot import WorkerSlot, WorkerState

ASSIGNED = (AccountState.RUNNING, AccountState.STARTING, AccountState.BACKOFF)


class NotFound(LookupError):
    pass


class CodeInfo(msgspec.Struct, frozen=True):
    version: str
    stale: list[str]  # files that changed on disk since the process loaded them


class TemplateFigures(msgspec.Struct, frozen=True):
    started: int  # templates started (at start-up, after a code change, after a death)
    spare_ready: bool
    failures: int


class MasterFigures(msgspec.Struct, frozen=True):
    """The master's own counters, for metrics."""

    internal_errors: int
    starts: dict[str, int]  # worker processes started, by how
    template: TemplateFigures | None  # None: no fork template configured
    memory_watch_passes: int
    memory_watch_cpu_s: float
    stale_code: bool  # the master's own code changed on disk


class ReadModel:
    def __init__(
        self,
        supervisor: Supervisor,
        accounts: AccountManager,
        store: Store,
        processes: ProcessStats,
        missing_platforms: dict[str, list[str]] | None = None,
    ) -> None:
        self._supervisor = supervisor
        self._accounts = accounts
        self._store = store
        self._processes = processes
        self._missing_platforms = missing_platforms or {}
        self.node_id = supervisor.config.cluster.node_id
        self.cluster_stats: LeaseStats | None = None  # a cluster: the lease keeper's
        self.api_url: str | None = None

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
        tree = self._supervisor.memory.of(slot.id, slot.pid)
        pss = tree.pss if tree is not None else None
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
            tree_memory_bytes=pss.bytes if pss is not None else None,
            tree_memory_kind=pss.kind.value if pss is not None else None,
            tree_memory_at=_wall_ms(now, pss.at) if pss is not None else None,
            tree_rss_bytes=tree.rss_bytes if tree is not None else None,
            tree_processes=tree.processes if tree is not None else None,
            max_memory_bytes=self._supervisor.memory_limit_bytes(slot.id),
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
        status = manager.status.get(account_id)
        if slot is None or status is None:
            raise NotFound(f"no account {account_id!r}")
        error = status.last_error
        spec = manager.specs.get(account_id, slot.account)  # as placed: not if not leased
        state, reason = status.state.value, status.reason
        node: str | None = self.node_id
        if manager.held is not None:
            node, reported = manager.owners.get(account_id, (None, None))
            if status.state is AccountState.ELSEWHERE and node is not None:
                state, reason = reported or state, f"runs on {node} (its state as it reported it)"
            elif manager.running_here(account_id):
                node = self.node_id
        return AccountInfo(
            id=account_id,
            platform=slot.account.platform,
            source=status.source,
            enabled=spec.enabled,
            options=dict(slot.account.options),
            max_memory_mb=spec.max_memory_mb,
            state=state,
            state_since_at=status.state_since_at,
            reason=reason,
            node=node,
            worker=slot.owner,
            home=slot.home,
            quarantined=manager.quarantine.is_quarantined(account_id),
            task_state=status.task.value if status.task else None,
            task_restarts=status.task_restarts,
            errors_total=status.errors_total,
            last_error=LastError(at=error.at, message=error.message, traceback=error.traceback)
            if error
            else None,
            failed=status.failed,
            progress_at=status.progress_at,
            last_item_at=status.last_item_at,
            last_sync_at=status.last_sync_at,
            stale=manager.is_stale(account_id),
            syncs=manager.syncs.get(account_id, 0),
            items_synced=manager.items_synced.get(account_id, 0),
            sync_errors=dict(manager.sync_errors.get(account_id, {})),
        )

    def cluster(self) -> ClusterInfo:
        if self.cluster_stats is not None:
            return cluster_info(self.cluster_stats)
        enabled = sum(spec.enabled for spec in self._accounts.specs.values())
        config = self._supervisor.config
        capacity = config.node_capacity
        started = self._supervisor.started_at_ms
        return one_host(self.node_id, capacity, enabled, started, epoch_ms(), self.api_url)

    def account_ids(self) -> list[str]:
        return list(self._accounts.status)

    def accounts(self) -> list[AccountInfo]:
        return [self.account(a) for a in list(self._accounts.status)]

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

    def master_figures(self) -> MasterFigures:
        supervisor = self._supervisor
        launcher = supervisor.launcher
        template = (
            TemplateFigures(
                launcher.templates_started, launcher.spare_ready, launcher.template_failures
            )
            if isinstance(launcher, TemplateLauncher)
            else None
        )
        return MasterFigures(
            internal_errors=supervisor.internal_errors_total,
            starts=dict(launcher.starts),
            template=template,
            memory_watch_passes=supervisor.memory.passes,
            memory_watch_cpu_s=supervisor.memory.cpu_seconds,
            stale_code=bool(supervisor.code.master_changed()),
        )

    async def status(self) -> StatusInfo:
        supervisor = self._supervisor
        manager = self._accounts
        now_ms = epoch_ms()
        slots = list(supervisor.slots.values())
        by_state: dict[str, int] = {s.value: 0 for s in WorkerState}
        for slot in slots:
            by_state[slot.state.value] += 1
        accounts: dict[str, int] = {s.value: 0 for s in AccountState}
        for status in manager.status.values():
            accounts[status.state.value] += 1
        counts, counted_at = await self._store.totals()
        stats = self._store.stats()
        last_syncs = [s.last_sync_at for s in manager.status.values() if s.last_sync_at]
        return StatusInfo(
            version=__version__,
            pid=os.getpid(),
            started_at=supervisor.started_at_ms,
            uptime_s=round((now_ms - supervisor.started_at_ms) / 1000, 3),
            state_dir=str(supervisor.config.state_dir),
            shutting_down=supervisor.shutting_down,
            workers=by_state,
            workers_total=len(slots),
            accounts_total=len(manager.status),
            accounts_assigned=sum(accounts[s.value] for s in ASSIGNED),
            accounts=accounts,
            health=self.health().status,
            store=StoreTotals(
                path=stats.where,
                items=counts,
                counted_at=counted_at,
                commits=stats.commits,
                items_written=stats.items_written,
                errors=stats.errors,
            ),
            sync=SyncTotals(
                since=supervisor.started_at_ms,
                syncs=sum(manager.syncs.values()),
                items=sum(manager.items_synced.values()),
                errors=sum(sum(e.values()) for e in manager.sync_errors.values()),
                stale_accounts=sum(1 for a in manager.status if manager.is_stale(a)),
                last_success_at=max(last_syncs, default=None),
            ),
            protocol_errors_total=supervisor.protocol_errors_total,
            worker_errors_total=sum(s.worker_errors for s in slots),
            internal_errors_total=supervisor.internal_errors_total,
            code_version=supervisor.code.master_version,
            stale_code=bool(supervisor.code.master_changed()),
            stale_workers=sum(1 for s in slots if (c := self.code_of(s)) and c.stale),
            last_reload=reload_result(supervisor.last_reload) if supervisor.last_reload else None,
        )

    def _disk_free(self) -> int | None:
        try:
            return shutil.disk_usage(self._supervisor.config.state_dir).free
        except OSError:
            return None

    def health_probe(self) -> tuple[str, ...]:
        """What no event announces (the store, the disk), cheaply: see ``unannounced``."""
        min_free = self._supervisor.config.store.min_free_mb * 2**20
        return unannounced(self._store.stats(), self._disk_free(), min_free)

    def health_inputs(self) -> HealthInputs:
        supervisor = self._supervisor
        manager = self._accounts
        configured = set(supervisor.config.worker_ids)
        return HealthInputs(
            shutting_down=supervisor.shutting_down,
            store=self._store.stats(),
            disk_free_bytes=self._disk_free(),
            min_free_bytes=supervisor.config.store.min_free_mb * 2**20,
            workers={w: s.state.value for w, s in supervisor.slots.items() if w in configured},
            solo_workers={
                w: s.state.value for w, s in supervisor.slots.items() if w not in configured
            },
            accounts={a: s.state for a, s in manager.status.items()},
            stale=frozenset(a for a in manager.status if manager.is_stale(a)),
            failed_reasons={
                a: s.failed.strip().splitlines()[-1][:200]
                for a, s in manager.status.items()
                if s.failed
            },
            missing_platforms=self._missing_platforms,
            leases=self.cluster_stats,
        )

    def health(self) -> Health:
        return assess(self.health_inputs())


def reload_result(rollout: RollingReload) -> ReloadResult:
    return ReloadResult(
        why=rollout.why,
        running=not rollout.done,
        complete=rollout.done and rollout.error is None,
        took_s=round((rollout.ended or rollout.began) - rollout.began, 3),
        steps=[ReloadStep(**asdict(step)) for step in rollout.steps],
        error=rollout.error,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _wall_ms(now: float, loop_time: float) -> int:
    """A loop-clock moment as ms since the epoch."""
    return epoch_ms() - int((now - loop_time) * 1000)
