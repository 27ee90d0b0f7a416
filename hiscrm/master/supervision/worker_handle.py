"""One worker slot in the master: its state machine and the process currently filling it.

States and what moves them::

    stopped ─start─▶ starting ─registered─▶ running
    starting ─died─▶ exited ─▶ boot_failed ─(backoff)─▶ starting
    running ─died─▶ exited ─▶ starting (first crash) | backoff ─(delay)─▶ starting
    starting | running ─stop/restart/hung─▶ stopping ─died─▶ exited ─▶ stopped | starting
    backoff | boot_failed ─stop─▶ stopped

Stopping escalates: ``master:shutdown`` over the pipe, after ``stop_timeout_s`` SIGTERM,
after ``kill_timeout_s`` SIGKILL, always to the whole process group. A hung worker (no
heartbeat) gets SIGABRT first so faulthandler writes its stack to its log.

Every transition goes through ``_transition``, which refuses illegal moves and logs the
move once. The supervisor calls the ``on_*`` methods; the handle never reads a clock.
"""

import asyncio
import os
import signal
from collections.abc import Callable
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from structlog.typing import FilteringBoundLogger

from hiscrm.backoff import RestartBackoff
from hiscrm.config import Config
from hiscrm.items import epoch_ms
from hiscrm.logfile import tail_lines
from hiscrm.master.supervision.events import Event
from hiscrm.master.supervision.exit_record import ExitRecord, describe_exit
from hiscrm.master.supervision.launcher import Launcher, WorkerProcess
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    MasterRefuse,
    MasterShutdown,
    MasterWelcome,
    WorkerBoot,
    WorkerHeartbeat,
    WorkerRegister,
    schema_hash,
)

LOG_TAIL_LINES = 20


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
    S.STOPPING: frozenset({S.EXITED}),
    S.EXITED: frozenset({S.STOPPED, S.STARTING, S.BACKOFF, S.BOOT_FAILED}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.BOOT_FAILED}),
    S.BOOT_FAILED: frozenset({S.STARTING, S.STOPPED, S.BOOT_FAILED}),
}


class StopStage(Enum):
    ASKED = "asked"  # master:shutdown sent
    SIGNALLED = "signalled"  # SIGTERM (or SIGABRT for a hung worker) sent
    KILLED = "killed"  # SIGKILL sent


class IllegalTransition(RuntimeError):
    pass


class WorkerHandle:
    def __init__(
        self,
        worker_id: str,
        config: Config,
        launcher: Launcher,
        post: Callable[[Event], None],
        log: FilteringBoundLogger,
        *,
        restartable: bool = True,
    ) -> None:
        self.id = worker_id
        # A rolling reload's new process for this slot (until it takes over) and the old one
        # it replaces are not restarted: if the new one fails, the reload stops and the old
        # one goes on serving; the old one is on its way out anyway.
        self.restartable = restartable
        self._config = config
        self._sup = config.supervision
        self._launcher = launcher
        self._post = post
        self._log = log.bind(worker=worker_id)
        self._encoder = Encoder()
        self.log_path: Path = config.state_dir / "logs" / f"{worker_id}.log"
        self.backoff = RestartBackoff(
            self._sup.backoff_initial_s, self._sup.backoff_max_s, self._sup.backoff_reset_after_s
        )
        self.state = WorkerState.STOPPED
        self.process: WorkerProcess | None = None
        self.deadline: float | None = None  # when on_deadline must run; meaning per state
        self.started_at: float | None = None
        self.registered: WorkerRegister | None = None
        self.registered_at: float | None = None
        self.last_heartbeat_at: float | None = None
        self.last_heartbeat: WorkerHeartbeat | None = None
        self.last_exit: ExitRecord | None = None
        self.starts = 0
        self.restarts_by_reason: dict[str, int] = {}
        self.protocol_errors: dict[str, int] = {}  # by kind
        self.worker_errors = 0
        self._stop_reason: str | None = None
        self._restart_after_stop = False
        self._stop_stage: StopStage | None = None
        self._stop_signal: signal.Signals | None = None

    def take_over_from(self, old: "WorkerHandle") -> None:
        """Become the slot's handle in place of ``old`` (a rolling reload): its history of
        restarts and errors carries over, and the reload counts as a restart."""
        self.restartable, old.restartable = True, False
        self.restarts_by_reason = dict(old.restarts_by_reason)
        self.restarts_by_reason["reload"] = self.restarts_by_reason.get("reload", 0) + 1
        self.worker_errors = old.worker_errors
        self.protocol_errors = dict(old.protocol_errors)
        self.last_exit = old.last_exit
        self.backoff = old.backoff

    # --- queries -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def restarts(self) -> int:
        return sum(self.restarts_by_reason.values())

    def heartbeat_age_s(self, now: float) -> float | None:
        return None if self.last_heartbeat_at is None else now - self.last_heartbeat_at

    # --- state changes -------------------------------------------------------------------

    def _transition(self, new: WorkerState, reason: str, **fields: Any) -> None:
        old = self.state
        if new not in _ALLOWED[old]:
            raise IllegalTransition(f"{self.id}: {old} -> {new} ({reason})")
        self.state = new
        level = self._log.warning if new is WorkerState.BOOT_FAILED else self._log.info
        fields.setdefault("pid", self.pid)
        level("worker state", old=str(old), new=str(new), reason=reason, **fields)

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def send(self, message: AnyMessage) -> bool:
        return self.send_frame(self._encoder.encode(message))

    def send_frame(self, frame: bytes) -> bool:
        return self.process is not None and self.process.send(frame)

    def boot(self) -> WorkerBoot:
        """What this worker's process is told when it starts."""
        sup, logs = self._sup, self._config.logs
        return WorkerBoot(
            worker_id=self.id,
            master_pid=os.getpid(),
            log_path=str(self.log_path),
            log_max_bytes=logs.max_bytes,
            log_backups=logs.backups,
            heartbeat_interval_s=sup.heartbeat_interval_s,
            stop_timeout_s=sup.stop_timeout_s,
            backoff_initial_s=sup.backoff_initial_s,
            backoff_max_s=sup.backoff_max_s,
            backoff_reset_after_s=sup.backoff_reset_after_s,
            platforms=self._config.platform_specs,
            spool_dir=str(self._config.state_dir / "spool"),
            idle_sync_s=max(0.1, self._config.sync.stale_after_s / 4),
            ack_timeout_s=sup.heartbeat_timeout_s,
            code_packages=self._config.code.packages,
        )

    async def start(self, now: float, reason: str) -> None:
        if self.state is not WorkerState.STOPPED and self.last_exit is not None:
            key = self.last_exit.reason
            self.restarts_by_reason[key] = self.restarts_by_reason.get(key, 0) + 1
        self.starts += 1
        self.registered = self.registered_at = None
        self.last_heartbeat_at = self.last_heartbeat = None
        self._stop_reason, self._stop_stage, self._restart_after_stop = None, None, False
        try:
            self.process = await self._launcher.start(self.boot(), self._post)
        except Exception as exc:  # fork/exec failed: out of memory, process or fd limit, ...
            self._log.error("cannot start worker process", exc_info=exc)
            self.last_exit = describe_exit(
                1,
                requested=None,
                during_start=True,
                uptime_s=0.0,
                at_ms=epoch_ms(),
                log_tail=[f"cannot start process: {exc}"],
            )
            if not self.restartable:  # a reload's replacement: the reload gives up on it
                self._transition(WorkerState.BOOT_FAILED, "start failed")
                self._transition(WorkerState.STOPPED, "not retried: a reload's replacement")
                return
            delay = self.backoff.record_failure(0.0, during_start=True)
            self._transition(WorkerState.BOOT_FAILED, f"start failed; retry in {delay:.2f}s")
            self.deadline = now + delay
            return
        self.started_at = now
        self._transition(WorkerState.STARTING, reason, restarts=self.restarts)
        # From now, not from before the launch: starting may have taken a while.
        self.deadline = asyncio.get_running_loop().time() + self._sup.start_timeout_s

    def on_register(self, message: WorkerRegister, now: float) -> bool:
        """The worker's first message, checked against our protocol. True if accepted."""
        mine = schema_hash()
        if message.protocol != PROTOCOL_VERSION or message.schema_hash != mine:
            self._log.error(
                "worker refused: it speaks a different protocol; restart the master to load "
                "the new protocol code",
                pid=self.pid,
                worker_protocol=message.protocol,
                worker_schema=message.schema_hash,
                master_protocol=PROTOCOL_VERSION,
                master_schema=mine,
            )
            self.send(MasterRefuse(reason=f"protocol {PROTOCOL_VERSION} schema {mine} expected"))
            self._begin_stop("protocol_mismatch", now, restart=True, stage=StopStage.ASKED)
            return False
        self.registered = message
        self.registered_at = self.last_heartbeat_at = now
        start_ms = (now - self.started_at) * 1000 if self.started_at is not None else None
        self._transition(
            WorkerState.RUNNING,
            "registered",
            boot_ms=round(message.boot_ms, 1),
            start_ms=None if start_ms is None else round(start_ms, 1),
        )
        self.send(
            MasterWelcome(protocol=PROTOCOL_VERSION, schema_hash=mine, master_pid=os.getpid())
        )
        self.deadline = now + self._sup.heartbeat_timeout_s
        return True

    def on_heartbeat(self, message: WorkerHeartbeat, now: float) -> None:
        previous = self.last_heartbeat.log_write_errors if self.last_heartbeat else 0
        if message.log_write_errors > previous:
            self._log.error(
                "worker cannot write its log file (disk full?)",
                pid=self.pid,
                lost_lines=message.log_write_errors,
                log_path=str(self.log_path),
            )
        self.last_heartbeat = message
        self.last_heartbeat_at = now
        if self.state is WorkerState.RUNNING:
            self.deadline = now + self._sup.heartbeat_timeout_s

    async def request_stop(self, reason: str, now: float, *, restart: bool) -> None:
        """Stop the worker (and start it again if ``restart``). ``reason`` is recorded as
        the exit reason; see exit_record.OPERATOR_REASONS for the ones that are not
        failures."""
        match self.state:
            case WorkerState.RUNNING:
                self._begin_stop(reason, now, restart=restart, stage=StopStage.ASKED)
            case WorkerState.STARTING:  # it cannot take messages yet
                self._begin_stop(reason, now, restart=restart, stage=StopStage.SIGNALLED)
            case WorkerState.STOPPING:
                # A later request may cancel a planned restart, never add one: once a
                # shutdown or stop is under way, nothing brings the worker back.
                self._restart_after_stop = self._restart_after_stop and restart
            case WorkerState.STOPPED | WorkerState.BACKOFF | WorkerState.BOOT_FAILED:
                if restart:
                    await self.start(now, reason)
                elif self.state is not WorkerState.STOPPED:
                    self._transition(WorkerState.STOPPED, reason)
                    self.deadline = None
            case WorkerState.EXITED:  # only between an exit and its follow-up; nothing to do
                self._log.warning("stop requested while exited; ignored", reason=reason)

    def kill_now(self, reason: str, now: float) -> None:
        """SIGKILL at once (a second Ctrl-C, or a process that must not linger)."""
        if self.state in (WorkerState.RUNNING, WorkerState.STARTING):
            self._begin_stop(reason, now, restart=False, stage=StopStage.KILLED)
        elif self.state is WorkerState.STOPPING and self.process is not None:
            self._restart_after_stop = False
            self._stop_stage = StopStage.KILLED
            self.process.signal_group(signal.SIGKILL)
            self.deadline = now + self._sup.kill_timeout_s

    def _begin_stop(self, reason: str, now: float, *, restart: bool, stage: StopStage) -> None:
        assert self.process is not None
        self._stop_reason, self._restart_after_stop, self._stop_stage = reason, restart, stage
        if stage is StopStage.ASKED and reason != "protocol_mismatch":
            shutdown = MasterShutdown(reason=reason, timeout_s=self._sup.stop_timeout_s)
            if not self.send(shutdown):  # the pipe is gone: asking is pointless
                stage = self._stop_stage = StopStage.SIGNALLED
        if stage is StopStage.ASKED:
            self.deadline = now + self._sup.stop_timeout_s
        elif reason == "heartbeat_timeout" and stage is StopStage.SIGNALLED:
            # To the worker alone: faulthandler writes its stuck stack to the log. Its
            # children get SIGKILL with the group if it does not go.
            self._stop_signal = signal.SIGABRT
            self.process.send_signal(signal.SIGABRT)
            self.deadline = now + self._sup.kill_timeout_s
        else:
            sig = signal.SIGKILL if stage is StopStage.KILLED else signal.SIGTERM
            self._stop_signal = sig
            self.process.signal_group(sig)
            self.deadline = now + self._sup.kill_timeout_s
        self._transition(WorkerState.STOPPING, reason, stage=stage.value)

    async def on_deadline(self, now: float) -> None:
        self.deadline = None
        match self.state:
            case WorkerState.STARTING:
                self._log.error(
                    "worker did not register in time",
                    pid=self.pid,
                    start_timeout_s=self._sup.start_timeout_s,
                )
                self._begin_stop("start_timeout", now, restart=True, stage=StopStage.SIGNALLED)
            case WorkerState.RUNNING:
                self._log.error(
                    "worker is hung: no heartbeat",
                    pid=self.pid,
                    heartbeat_age_s=round(self.heartbeat_age_s(now) or 0.0, 3),
                    heartbeat_timeout_s=self._sup.heartbeat_timeout_s,
                )
                self._begin_stop("heartbeat_timeout", now, restart=True, stage=StopStage.SIGNALLED)
            case WorkerState.STOPPING:
                self._escalate(now)
            case WorkerState.BACKOFF | WorkerState.BOOT_FAILED:
                await self.start(now, "backoff over")
            case _:
                pass  # no deadline in these states; a stale one is simply dropped

    def _escalate(self, now: float) -> None:
        assert self.process is not None
        if self._stop_stage is StopStage.ASKED:
            self._log.warning(
                "worker did not stop in time; sending SIGTERM",
                pid=self.pid,
                stop_timeout_s=self._sup.stop_timeout_s,
            )
            self._stop_stage, self._stop_signal = StopStage.SIGNALLED, signal.SIGTERM
            self.process.signal_group(signal.SIGTERM)
        elif self._stop_stage is StopStage.SIGNALLED:
            self._log.error(
                "worker still alive after signal; sending SIGKILL",
                pid=self.pid,
                signal=self._stop_signal.name if self._stop_signal else None,
                kill_timeout_s=self._sup.kill_timeout_s,
            )
            self._stop_stage = StopStage.KILLED
            self.process.signal_group(signal.SIGKILL)
        else:
            self._log.error(
                "worker still alive after SIGKILL (uninterruptible sleep?)", pid=self.pid
            )
        self.deadline = now + self._sup.kill_timeout_s

    async def on_exit(self, now: float) -> None:
        process = self.process
        assert process is not None
        exitcode = process.reap()
        if exitcode is None:
            self._log.error("exit reported but the process is not reaped yet", pid=process.pid)
            exitcode = -int(signal.SIGKILL)
            process.signal_group(signal.SIGKILL)
        leftovers = process.kill_leftovers()
        process.close()
        requested = self._stop_reason if self.state is WorkerState.STOPPING else None
        try:
            tail = tail_lines(self.log_path, LOG_TAIL_LINES)
        except OSError as exc:
            tail = [f"(cannot read {self.log_path}: {exc})"]
        record = describe_exit(
            exitcode,
            requested=requested,
            during_start=self.registered is None,
            uptime_s=now - self.started_at if self.started_at is not None else 0.0,
            at_ms=epoch_ms(),
            log_tail=tail,
        )
        self.last_exit = record
        self.process = None
        self.deadline = None
        level = self._log.error if record.is_failure else self._log.info
        level(
            "worker exited",
            pid=process.pid,
            code=record.code,
            signal=record.signal,
            reason=record.reason,
            detail=record.detail,
            uptime_s=record.uptime_s,
            restarts=self.restarts,
            killed_leftovers=leftovers,
            noticed_at=process.exit_noticed_at,
            log_tail=record.log_tail,
        )
        self._transition(WorkerState.EXITED, record.reason, pid=process.pid)
        await self._after_exit(record, now)

    async def _after_exit(self, record: ExitRecord, now: float) -> None:
        if (self._stop_reason is not None and not self._restart_after_stop) or not self.restartable:
            self._transition(WorkerState.STOPPED, record.reason)
            return
        if not record.is_failure:
            await self.start(now, f"restart ({record.reason})")
            return
        if record.during_start:
            delay = self.backoff.record_failure(0.0, during_start=True)
            self._transition(WorkerState.BOOT_FAILED, f"{record.detail}; retry in {delay:.2f}s")
            self.deadline = now + delay
            return
        ran_for = now - self.registered_at if self.registered_at is not None else 0.0
        delay = self.backoff.record_failure(ran_for)
        if delay == 0:
            await self.start(now, f"restart after {record.reason}")
        else:
            self._transition(WorkerState.BACKOFF, f"restart in {delay:.2f}s")
            self.deadline = now + delay
