"""What the HTTP API answers, as pydantic models (they make the OpenAPI schema too).

They reuse the models the rest of the program uses: ``ExitRecord`` for how a worker
ended, and for the collections each kind's model plus what the store adds (derived from
the registry of kinds).
"""

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, create_model

from hiscrm.items import KINDS, Kind
from hiscrm.master.supervision.exit_record import ExitRecord

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="all that match; for collections, counted at most 1 s ago")
    limit: int
    offset: int
    truncated: bool = Field(
        False,
        description="fewer items than limit although more match: the page reached "
        "[api] max_page_bytes; ask again from next_offset",
    )
    next_offset: int | None = Field(None, description="where the next page begins, if any")


def page_of(everything: list[T], limit: int, offset: int) -> Page[T]:
    """One page of a list held in memory."""
    items = everything[offset : offset + limit]
    end = offset + len(items)
    return Page(
        items=items,
        total=len(everything),
        limit=limit,
        offset=offset,
        next_offset=end if end < len(everything) else None,
    )


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


class WorkerInfo(BaseModel):
    id: str
    state: str
    pid: int | None
    restarts: int
    restarts_by_reason: dict[str, int]
    accounts: list[str]
    heartbeat_age_s: float | None
    loop_lag_ms: float | None
    started_at: int | None  # ms, when the current process started
    uptime_s: float | None
    rss_bytes: int | None  # of the worker process alone, read when asked
    tree_memory_bytes: int | None = Field(
        description="memory of the worker and all its descendants as the memory limit "
        "judges it: proportional set size (PSS; pages shared with the fork template or "
        "between the processes count once in all), RSS standing in for a process whose "
        "PSS cannot be read (see tree_memory_kind); read at tree_memory_at, at least "
        "every 5 minutes; null until first read (the readings are spread over the "
        "memory watch's passes)"
    )
    tree_memory_kind: Literal["pss", "rss"] | None = Field(
        description="pss: PSS of every process of the tree; rss: RSS for at least one"
    )
    tree_memory_at: int | None = Field(description="ms, when tree_memory_bytes was read")
    tree_rss_bytes: int | None = Field(
        description="resident memory of the whole tree summed (pages shared count once per "
        "process), at the last measurement (every 2 s with a limit, 30 s without)"
    )
    tree_processes: int | None = Field(description="processes in the tree, the worker's included")
    max_memory_bytes: int | None = Field(
        description="its memory limit in bytes: over it, the worker is restarted gracefully "
        "(reason memory_limit); [supervision] max_memory_mb, or for a quarantined account's "
        "own worker (solo-<id>) that account's max_memory_mb when it has one; null: no limit"
    )
    cpu_percent: float | None
    cpu_seconds: float | None  # user + system, of the current process
    errors_total: int  # worker:error messages from this slot
    protocol_errors: int
    protocol_errors_by_kind: dict[str, int]
    sync: dict[str, int]  # its process's syncs sent: messages, bytes, resends, nacks
    last_exit: ExitRecord | None
    code_version: str | None  # hash of the source files it imported (null until registered)
    stale_code: bool  # some of those files changed on disk since: reload to run the new code
    stale_files: list[str]


class WorkerAction(BaseModel):
    """The outcome of a stop, start or restart: the worker as it is now."""

    action: str
    previous_pid: int | None
    took_s: float
    worker: WorkerInfo


class ShutdownStarted(BaseModel):
    """The master has begun to stop every worker; it exits once they have stopped."""

    pid: int  # the master's
    workers: int  # being stopped
    reason: str


class ReloadStep(BaseModel):
    worker: str
    old_pid: int | None
    new_pid: int | None
    state: str
    took_s: float
    accounts: int  # handed over from the old process to the new one
    max_gap_ms: float | None  # the longest an account had no running task


class ReloadResult(BaseModel):
    why: str  # SIGHUP, requested (API or hiscrmctl), --watch
    running: bool  # still under way
    complete: bool  # every worker replaced
    took_s: float
    steps: list[ReloadStep]
    error: str | None = None


class LastError(BaseModel):
    at: int  # ms
    message: str  # "Type: message"
    traceback: str  # its end


class AccountInfo(BaseModel):
    id: str
    platform: str
    source: str  # config: declared in the config file (change it there); api: made through the API
    enabled: bool
    options: dict[str, Any]
    max_memory_mb: int | None = Field(
        default=None,
        description="the memory limit (MB) of its own worker while it is quarantined and runs "
        "alone; null: [supervision] max_memory_mb (a shared worker always has that one)",
    )
    state: str  # disabled, unassigned, starting, running, backoff, down, failed, quarantined,
    # elsewhere (a cluster: another master holds it; its owner's last reported state is shown)
    state_since_at: int  # ms
    reason: str  # why it is in this state
    node: str | None = None  # the master (cluster node) running it; None: no lease holder
    worker: str | None  # the worker running it now
    home: str | None  # the worker it belongs to when that one is healthy
    quarantined: bool
    task_state: str | None  # its task in the worker, as last reported
    task_restarts: int
    errors_total: int  # errors its task reported
    last_error: LastError | None
    failed: str | None  # why its platform cannot run (the end of the traceback)
    progress_at: int | None  # ms, the last ctx.progress() or upsert
    last_item_at: int | None  # ms, the last committed sync with changes
    last_sync_at: int | None  # ms, the last committed sync
    stale: bool  # no progress for stale_after_s
    syncs: int  # committed since the master started
    items_synced: int  # committed since the master started
    sync_errors: dict[str, int]  # syncs not committed since the master started, by reason
    counts: dict[str, int] | None = None  # items in the store per collection


class SyncRequested(BaseModel):
    account_id: str
    worker: str
    from_seq: int | None
    node: str | None = None  # in a cluster: the master whose worker was asked


class StoreTotals(BaseModel):
    path: str
    items: dict[str, int]  # per collection
    counted_at: int  # ms; counts are at most a second old
    commits: int
    items_written: int
    errors: int


class SyncTotals(BaseModel):
    """Counted since the master started (``since``), unlike the store's totals."""

    since: int  # ms: when the master started
    syncs: int
    items: int
    errors: int
    stale_accounts: int
    last_success_at: int | None


class StatusInfo(BaseModel):
    version: str
    pid: int
    started_at: int
    uptime_s: float
    state_dir: str
    shutting_down: bool
    workers: dict[str, int]  # by state
    workers_total: int
    accounts_total: int
    accounts_assigned: int  # running, starting or in backoff on a running worker
    accounts: dict[str, int]  # by state
    health: str  # ok, degraded, failing (details at /healthz)
    store: StoreTotals
    sync: SyncTotals
    protocol_errors_total: int
    worker_errors_total: int
    internal_errors_total: int
    code_version: str  # the master's own code
    stale_code: bool  # the master's code changed on disk: only a master restart loads it
    stale_workers: int
    last_reload: ReloadResult | None


class Check(BaseModel):
    status: Literal["ok", "degraded", "failing"]
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "failing"]
    checks: dict[str, Check]


def _stored_model(kind: Kind) -> type[BaseModel]:
    """An item as the API serves it: the kind's model, what the store adds to every
    item, and the fields the master owns."""
    fields: dict[str, Any] = {
        "account_id": (str, ...),
        "version": (int, ...),
        "synced_at": (int, ...),
    }
    fields.update({owned.name: (owned.annotation, ...) for owned in kind.master_owned})
    model: type[BaseModel] = create_model(
        f"Stored{kind.model.__name__}", __base__=kind.model, **fields
    )
    return model


STORED_MODELS: dict[str, type[BaseModel]] = {
    kind.collection: _stored_model(kind) for kind in KINDS.values()
}
