"""One worker slot in the master (``worker1``, ``worker2``, …): its state machine and the
processes that fill it.

A slot has at most three processes, each a :class:`SlotProcess`: the *current* one,
which the state machine follows and which is restarted when it dies; during a rolling
reload an *incoming* replacement (until it takes over) and then the *outgoing* old one
(until it has stopped). Frames and exits are routed to a process by pid; whether a death
restarts anything follows from the part the process plays, not from a flag.

States of the slot and what moves them::

    stopped ─start─▶ starting ─registered─▶ running
    starting ─died─▶ exited ─▶ boot_failed ─(backoff)─▶ starting
    running ─died─▶ exited ─▶ starting (first crash) | backoff ─(delay)─▶ starting
    starting | running ─stop/restart/hung─▶ stopping ─died─▶ exited ─▶ stopped | starting
    backoff | boot_failed ─stop─▶ stopped
    (any but stopped) ─a reload's replacement took over─▶ running

Every transition goes through ``_transition``, which refuses illegal moves, logs the move
once and tells the listener (the supervisor completes operator commands from these).
The supervisor calls the methods; the slot never reads a clock.
"""

import asyncio
import os
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.master.supervision.events import Event
from hiscrm.master.supervision.exit_record import ExitRecord, describe_exit
from hiscrm.master.supervision.launcher import Launcher
from hiscrm.master.supervision.slot_process import ProcessState, SlotProcess
from hiscrm.master.supervision.stop_plan import AfterStop, StopReason, StopStage
from hiscrm.protocol import WorkerBoot, WorkerHeartbeat, WorkerRegister


class WorkerState(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"
    BACKOFF = "backoff"
    BOOT_FAILED = "boot_failed"


S = WorkerState
_ALLOWED: dict[WorkerState, frozenset[WorkerState]] = {
    S.STOPPED: frozenset({S.STARTING, S.BOOT_FAILED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.EXITED}),
    S.RUNNING: frozenset({S.STOPPING, S.EXITED}),
    S.STOPPING: frozenset({S.EXITED, S.RUNNING}),
    S.EXITED: frozenset({S.STOPPED, S.STARTING, S.BACKOFF, S.BOOT_FAILED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.BOOT_FAILED, S.RUNNING}),
    S.BOOT_FAILED: frozenset({S.STARTING, S.STOPPED, S.BOOT_FAILED, S.RUNNING}),
}
# Where an operator's start, stop or restart comes to rest.
SETTLED = frozenset({S.RUNNING, S.BOOT_FAILED, S.BACKOFF, S.STOPPED})


class Role(StrEnum):
    CURRENT = "current"
    INCOMING = "incoming"  # a reload's replacement, until it takes over
    OUTGOING = "outgoing"  # the process it replaced, until it has stopped


class IllegalTransition(RuntimeError):
    pass


StateListener = Callable[["WorkerSlot", WorkerState, str], None]


class WorkerSlot:
    def __init__(
        self,
        worker_id: str,
        config: Config,
        launcher: Launcher,
        post: Callable[[Event], None],
        log: FilteringBoundLogger,
        on_state: StateListener | None = None,
        platforms: Callable[[], list[str]] | None = None,
    ) -> None:
        self.id = worker_id
        self._platforms = platforms or (lambda: config.platform_specs)
        self._config = config
        self._sup = config.supervision
        self._launcher = launcher
        self._post = post
        self._log = log.bind(worker=worker_id)
        self._on_state = on_state or (lambda slot, state, reason: None)
        self.log_path: Path = config.state_dir / "logs" / f"{worker_id}.log"
        self.backoff = RestartBackoff(
            self._sup.backoff_initial_s, self._sup.backoff_max_s, self._sup.backoff_reset_after_s
        )
        self.state = WorkerState.STOPPED
        self.current: SlotProcess | None = None
        self.incoming: SlotProcess | None = None
        self.outgoing: SlotProcess | None = None
        self._retry_at: float | None = None  # backoff or boot_failed: when to start again
        self.last_exit: ExitRecord | None = None
        self.incoming_exit: ExitRecord | None = None  # how a reload's replacement ended
        self.starts = 0
        self.restarts_by_reason: dict[str, int] = {}
        self.protocol_errors: dict[str, int] = {}  # by kind
        self.worker_errors = 0

    def reconfigure(self, config: Config) -> None:
        """Settings for what follows: processes started from now on, and the next
        backoff (its count of failures goes on)."""
        self._config = config
        self._sup = config.supervision
        self.backoff.reconfigure(
            self._sup.backoff_initial_s, self._sup.backoff_max_s, self._sup.backoff_reset_after_s
        )

    # --- queries -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.current.pid if self.current is not None else None

    @property
    def restarts(self) -> int:
        return sum(self.restarts_by_reason.values())

    @property
    def registered(self) -> WorkerRegister | None:
        return self.current.registered if self.current is not None else None

    def processes(self) -> list[SlotProcess]:
        return [p for p in (self.current, self.incoming, self.outgoing) if p is not None]

    def process(self, pid: int) -> SlotProcess | None:
        """The slot's process with this pid; None for one that has since been replaced."""
        for process in self.processes():
            if process.pid == pid:
                return process
        return None

    def role(self, process: SlotProcess) -> Role:
        if process is self.current:
            return Role.CURRENT
        return Role.INCOMING if process is self.incoming else Role.OUTGOING

    @property
    def deadline(self) -> float | None:
        """When ``on_deadline`` must run: the nearest of the slot's and its processes'."""
        due = self._retry_at
        for process in (self.current, self.incoming, self.outgoing):
            if process is not None and (at := process.deadline) is not None:
                due = at if due is None or at < due else due
        return due

    @property
    def idle(self) -> bool:
        """Stopped, with no process left."""
        return self.state is WorkerState.STOPPED and not self.processes()

    def heartbeat_age_s(self, now: float) -> float | None:
        return self.current.heartbeat_age_s(now) if self.current is not None else None

    # --- state changes -------------------------------------------------------------------

    def _process_moved(self, process: SlotProcess, new: ProcessState, reason: str) -> None:
        """A process other than the current one (a reload's incoming or outgoing process)
        changed state: logged once, as the slot's own state follows the current one only."""
        self._log.info(
            "worker process",
            pid=process.pid,
            role=str(self.role(process)),
            new=str(new),
            reason=reason,
        )

    def _transition(self, new: WorkerState, reason: str, **fields: Any) -> None:
        old = self.state
        if new not in _ALLOWED[old]:
            raise IllegalTransition(f"{self.id}: {old} -> {new} ({reason})")
        self.state = new
        level = self._log.warning if new is WorkerState.BOOT_FAILED else self._log.info
        fields.setdefault("pid", self.pid)
        level("worker state", old=str(old), new=str(new), reason=reason, **fields)
        self._on_state(self, new, reason)

    def boot(self) -> WorkerBoot:
        """What this worker's process is told when it starts."""
        return worker_boot(self._config, self.id, self._platforms())

    async def _launch(self) -> SlotProcess:
        process = await self._launcher.start(self.boot(), self._post)
        # From now, not from before the launch: starting may have taken a while.
        began = asyncio.get_running_loop().time()
        return SlotProcess(self.id, process, began, self._sup, self._log)

    async def start(self, now: float, reason: str) -> None:
        """Start the slot's current process."""
        if self.state is not WorkerState.STOPPED and self.last_exit is not None:
            key = self.last_exit.reason
            self.restarts_by_reason[key] = self.restarts_by_reason.get(key, 0) + 1
        self.starts += 1
        self._retry_at = None
        try:
            self.current = await self._launch()
        except Exception as exc:  # fork/exec failed: out of memory, process or fd limit, ...
            self._log.error("cannot start worker process", exc_info=exc)
            self.last_exit = _launch_failure(exc)
            delay = self.backoff.record_failure(0.0, during_start=True)
            self._transition(WorkerState.BOOT_FAILED, f"start failed; retry in {delay:.2f}s")
            self._retry_at = now + delay
            return
        self._transition(WorkerState.STARTING, reason, restarts=self.restarts)

    def register(self, process: SlotProcess, message: WorkerRegister, now: float) -> bool:
        """A process's registration; True if accepted. The current one makes the slot
        running; an incoming one waits for the reload to promote it."""
        if not process.register(message, now):
            if process is self.current:
                self._transition(WorkerState.STOPPING, StopReason.PROTOCOL_MISMATCH.value)
            return False
        if process is self.current:
            start_ms = (now - process.started_at) * 1000
            self._transition(
                WorkerState.RUNNING,
                "registered",
                boot_ms=round(message.boot_ms, 1),
                start_ms=round(start_ms, 1),
            )
        else:
            self._process_moved(process, ProcessState.RUNNING, "registered")
        return True

    def heartbeat(self, process: SlotProcess, message: WorkerHeartbeat, now: float) -> None:
        process.heartbeat(message, now)

    # --- stopping ------------------------------------------------------------------------

    async def request_stop(self, reason: StopReason, now: float, *, restart: bool) -> None:
        """Stop the current process (and start it again if ``restart``)."""
        then = AfterStop.RESTART if restart else AfterStop.STAY_STOPPED
        match self.state:
            case WorkerState.RUNNING | WorkerState.STARTING:
                assert self.current is not None
                self.current.stop(reason, now, then)
                plan = self.current.stop_plan
                assert plan is not None
                self._transition(WorkerState.STOPPING, reason.value, stage=plan.stage.value)
            case WorkerState.STOPPING:
                assert self.current is not None
                self.current.stop(reason, now, then)  # may cancel a restart, never add one
            case WorkerState.STOPPED | WorkerState.BACKOFF | WorkerState.BOOT_FAILED:
                if restart:
                    await self.start(now, reason.value)
                elif self.state is not WorkerState.STOPPED:
                    self._retry_at = None
                    self._transition(WorkerState.STOPPED, reason.value)
            case WorkerState.EXITED:  # only between an exit and its follow-up
                self._log.warning("stop requested while exited; ignored", reason=reason.value)

    async def shut_down(self, now: float) -> None:
        """The master is stopping: every process of the slot goes, nothing restarts."""
        for process in (self.incoming, self.outgoing):
            if process is not None:
                process.stop(StopReason.SHUTDOWN, now, AfterStop.STAY_STOPPED)
        await self.request_stop(StopReason.SHUTDOWN, now, restart=False)

    def kill_now(self, now: float) -> None:
        """SIGKILL every process of the slot at once (a second Ctrl-C)."""
        for process in self.processes():
            process.stop(StopReason.SHUTDOWN, now, AfterStop.STAY_STOPPED, stage=StopStage.KILLED)
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING):
            self._transition(WorkerState.STOPPING, StopReason.SHUTDOWN.value, stage="killed")

    # --- deadlines -----------------------------------------------------------------------

    def allow_for_stall(self, now: float, stall_s: float) -> None:
        """The master was stalled for ``stall_s``: judge no heartbeat or start until its
        processes have had their time again."""
        for process in self.processes():
            process.allow_for_stall(now, stall_s)

    async def on_deadline(self, now: float) -> None:
        if self._retry_at is not None and self._retry_at <= now:
            self._retry_at = None
            if self.state in (WorkerState.BACKOFF, WorkerState.BOOT_FAILED):
                await self.start(now, "backoff over")
        for process in self.processes():
            if process.deadline is not None and process.deadline <= now:
                self._process_deadline(process, now)

    def _process_deadline(self, process: SlotProcess, now: float) -> None:
        process.deadline = None
        current = process is self.current
        then = AfterStop.RESTART if current else AfterStop.STAY_STOPPED
        match process.state:
            case ProcessState.STARTING:
                self._log.error(
                    "worker did not register in time",
                    pid=process.pid,
                    role=str(self.role(process)),
                    start_timeout_s=self._sup.start_timeout_s,
                )
                process.stop(StopReason.START_TIMEOUT, now, then)
            case ProcessState.RUNNING:
                self._log.error(
                    "worker is hung: no heartbeat",
                    pid=process.pid,
                    role=str(self.role(process)),
                    heartbeat_age_s=round(process.heartbeat_age_s(now) or 0.0, 3),
                    heartbeat_timeout_s=self._sup.heartbeat_timeout_s,
                )
                process.stop(StopReason.HEARTBEAT_TIMEOUT, now, then, stage=StopStage.SIGNALLED)
            case ProcessState.STOPPING:
                process.escalate(now)
                return
        plan = process.stop_plan
        assert plan is not None
        if not current:
            self._process_moved(process, ProcessState.STOPPING, plan.reason.value)
        elif self.state is not WorkerState.STOPPING:
            self._transition(WorkerState.STOPPING, plan.reason.value, stage=plan.stage.value)

    # --- exits ---------------------------------------------------------------------------

    async def on_exit(self, process: SlotProcess, now: float) -> ExitRecord:
        """One of the slot's processes has exited (its pipe drained first)."""
        role = self.role(process)
        record = process.exit_record(now, self.log_path)
        level = self._log.error if record.is_failure else self._log.info
        level(
            "worker exited",
            pid=process.pid,
            role=str(role),
            code=record.code,
            signal=record.signal,
            reason=record.reason,
            detail=record.detail,
            uptime_s=record.uptime_s,
            restarts=self.restarts,
            killed_leftovers=process.leftovers_killed,
            noticed_at=process.process.exit_noticed_at,
            log_tail=record.log_tail,
        )
        if role is Role.INCOMING:
            self.incoming, self.incoming_exit = None, record
        elif role is Role.OUTGOING:
            self.outgoing = None
        else:
            self.current = None
            self.last_exit = record
            self._transition(WorkerState.EXITED, record.reason, pid=process.pid)
            await self._after_exit(process, record, now)
        return record

    async def _after_exit(self, process: SlotProcess, record: ExitRecord, now: float) -> None:
        plan = process.stop_plan
        if plan is not None and plan.then is AfterStop.STAY_STOPPED:
            self._transition(WorkerState.STOPPED, record.reason)
            return
        if not record.is_failure:
            await self.start(now, f"restart ({record.reason})")
            return
        if record.during_start:
            delay = self.backoff.record_failure(0.0, during_start=True)
            self._transition(WorkerState.BOOT_FAILED, f"{record.detail}; retry in {delay:.2f}s")
            self._retry_at = now + delay
            return
        registered_at = process.registered_at
        ran_for = now - registered_at if registered_at is not None else 0.0
        delay = self.backoff.record_failure(ran_for)
        if delay == 0:
            await self.start(now, f"restart after {record.reason}")
        else:
            self._transition(WorkerState.BACKOFF, f"restart in {delay:.2f}s")
            self._retry_at = now + delay

    # --- a rolling reload ----------------------------------------------------------------

    async def start_incoming(self) -> SlotProcess:
        """Start a replacement beside the current process (raises if it cannot start)."""
        self.incoming_exit = None
        self.incoming = await self._launch()
        self._process_moved(self.incoming, ProcessState.STARTING, "reload")
        return self.incoming

    def promote(self) -> SlotProcess | None:
        """The incoming process becomes the slot's current one; the old current one, if
        any, is outgoing (the reload stops it once its accounts are handed over). The
        reload counts as a restart."""
        incoming = self.incoming
        assert incoming is not None
        assert incoming.serving
        old, self.outgoing, self.current, self.incoming = self.current, self.current, incoming, None
        self._retry_at = None
        self.restarts_by_reason["reload"] = self.restarts_by_reason.get("reload", 0) + 1
        self._log.info(
            "worker replaced by its new process",
            old_pid=old.pid if old is not None else None,
            new_pid=incoming.pid,
        )
        if self.state is not WorkerState.RUNNING:
            self._transition(WorkerState.RUNNING, "a reload's replacement took over")
        return old

    def retire_outgoing(self, now: float) -> None:
        outgoing = self.outgoing
        if outgoing is not None and outgoing.stop_plan is None:
            outgoing.stop(StopReason.RELOAD, now, AfterStop.STAY_STOPPED)
            self._process_moved(outgoing, ProcessState.STOPPING, StopReason.RELOAD.value)


def _launch_failure(exc: Exception) -> ExitRecord:
    return describe_exit(
        1,
        requested=None,
        during_start=True,
        uptime_s=0.0,
        at_ms=epoch_ms(),
        log_tail=[f"cannot start process: {exc}"],
    )


def worker_boot(config: Config, worker_id: str, platforms: list[str]) -> WorkerBoot:
    """What worker ``worker_id``'s process is told when it starts, ``platforms`` being the
    specs of every account's platform."""
    sup, logs = config.supervision, config.logs
    return WorkerBoot(
        worker_id=worker_id,
        master_pid=os.getpid(),
        log_path=str(config.state_dir / "logs" / f"{worker_id}.log"),
        log_max_bytes=logs.max_bytes,
        log_backups=logs.backups,
        heartbeat_interval_s=sup.heartbeat_interval_s,
        stop_timeout_s=sup.stop_timeout_s,
        backoff_initial_s=sup.backoff_initial_s,
        backoff_max_s=sup.backoff_max_s,
        backoff_reset_after_s=sup.backoff_reset_after_s,
        platforms=platforms,
        plugin_paths=[str(path) for path in config.plugin_paths],
        spool_dir=str(config.state_dir / "spool"),
        idle_sync_s=max(0.1, config.sync.stale_after_s / 4),
        ack_timeout_s=sup.heartbeat_timeout_s,
        code_packages=config.code.packages,
        retention_days=config.retention.days(),
    )
