"""One worker process of a slot, from its start to its exit: registration, heartbeats,
and the way it is stopped.

Its own states are few (``starting`` until it registers, ``running``, ``stopping`` once
a stop plan is set); which part it plays (the slot's current process, a reload's
incoming replacement or the outgoing old one) is the slot's business. It is also what
the data wing sees of a worker process (``WorkerLink``): its account messages go
through ``send``.
"""

import os
import signal
from enum import StrEnum
from pathlib import Path

from structlog.typing import FilteringBoundLogger

from hiscrm.config import SupervisionConfig
from hiscrm.items import epoch_ms
from hiscrm.logfile import tail_lines
from hiscrm.master.supervision.exit_record import ExitRecord, describe_exit, exit_tail
from hiscrm.master.supervision.stop_plan import AfterStop, StopPlan, StopReason, StopStage
from hiscrm.master.supervision.worker_process import WorkerProcess
from hiscrm.protocol import (
    PROTOCOL_VERSION,
    AnyMessage,
    Encoder,
    MasterRefuse,
    MasterShutdown,
    MasterWelcome,
    WorkerHeartbeat,
    WorkerRegister,
    schema_hash,
)

LOG_TAIL_LINES = 20
CRASH_TAIL_LINES = 60  # at most, when the log ends in a crash dump (see exit_tail)


class ProcessState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class SlotProcess:
    def __init__(
        self,
        worker_id: str,
        process: WorkerProcess,
        started_at: float,
        supervision: SupervisionConfig,
        log: FilteringBoundLogger,
    ) -> None:
        self._worker_id = worker_id
        self.process = process
        self.started_at = started_at
        self._sup = supervision
        self._log = log
        self._encoder = Encoder()
        self.state = ProcessState.STARTING
        self.deadline: float | None = started_at + supervision.start_timeout_s
        self.registered: WorkerRegister | None = None
        self.registered_at: float | None = None
        self.last_heartbeat: WorkerHeartbeat | None = None
        self.last_heartbeat_at: float | None = None
        self.stop_plan: StopPlan | None = None
        self.leftovers_killed = False  # something of its group outlived it

    # --- what the data wing sees (WorkerLink) -------------------------------------------

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def serving(self) -> bool:
        return self.state is ProcessState.RUNNING

    @property
    def encoder(self) -> Encoder:
        return self._encoder

    def send(self, message: AnyMessage) -> bool:
        return self.send_frame(self._encoder.encode(message))

    def send_frame(self, frame: bytes) -> bool:
        return self.process.send(frame)

    # --- queries -------------------------------------------------------------------------

    def heartbeat_age_s(self, now: float) -> float | None:
        return None if self.last_heartbeat_at is None else now - self.last_heartbeat_at

    # --- registration and heartbeats ----------------------------------------------------

    def register(self, message: WorkerRegister, now: float) -> bool:
        """The worker's first message, checked against our protocol. True if accepted;
        if not, the worker is refused and stopped."""
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
            # The refusal is the request to go: no master:shutdown on top of it.
            self.stop(
                StopReason.PROTOCOL_MISMATCH,
                now,
                AfterStop.RESTART,
                ask=False,
                stage=StopStage.ASKED,
            )
            return False
        self.registered = message
        self.registered_at = self.last_heartbeat_at = now
        self.state = ProcessState.RUNNING
        self.deadline = now + self._sup.heartbeat_timeout_s
        self.send(
            MasterWelcome(protocol=PROTOCOL_VERSION, schema_hash=mine, master_pid=os.getpid())
        )
        return True

    def heartbeat(self, message: WorkerHeartbeat, now: float) -> None:
        previous = self.last_heartbeat.log_write_errors if self.last_heartbeat else 0
        if message.log_write_errors > previous:
            self._log.error(
                "worker cannot write its log file (disk full?)",
                pid=self.pid,
                lost_lines=message.log_write_errors,
            )
        self.last_heartbeat = message
        self.last_heartbeat_at = now
        if self.state is ProcessState.RUNNING:
            self.deadline = now + self._sup.heartbeat_timeout_s

    def allow_for_stall(self, now: float, stall_s: float) -> None:
        """The master did not run for ``stall_s``: what this process sent meanwhile is
        still unread. A running one gets a whole heartbeat timeout from now; a starting
        one, the time the master lost."""
        if self.deadline is None:
            return
        if self.state is ProcessState.RUNNING:
            self.deadline = max(self.deadline, now + self._sup.heartbeat_timeout_s)
        elif self.state is ProcessState.STARTING:
            self.deadline += stall_s

    # --- stopping ------------------------------------------------------------------------

    def stop(
        self,
        reason: StopReason,
        now: float,
        then: AfterStop,
        *,
        ask: bool = True,
        stage: StopStage | None = None,
    ) -> None:
        """Begin (or continue) stopping. The one place a stop plan is set.

        A first request picks the stage: asked over the pipe if the process is running
        and ``ask``, else signalled. A later request never brings back what an earlier
        one ruled out: a planned restart may be cancelled, not added. ``stage`` moves
        an ongoing stop on (escalation, a second Ctrl-C)."""
        plan = self.stop_plan
        if plan is not None and stage is None:
            if then is AfterStop.STAY_STOPPED and plan.then is AfterStop.RESTART:
                self.stop_plan = _replace(plan, then=then)
            return
        if plan is not None:
            reason = plan.reason
            then = AfterStop.STAY_STOPPED if then is AfterStop.STAY_STOPPED else plan.then
        if stage is None:
            stage = StopStage.ASKED if self.state is ProcessState.RUNNING else StopStage.SIGNALLED
        sent: signal.Signals | None = None
        shutdown = MasterShutdown(reason=reason.value, timeout_s=self._sup.stop_timeout_s)
        if stage is StopStage.ASKED and ask and not self.send(shutdown):
            stage = StopStage.SIGNALLED  # the pipe is gone: asking is pointless
        if stage is StopStage.SIGNALLED and reason is StopReason.HEARTBEAT_TIMEOUT:
            # To the worker alone: faulthandler writes its stuck stack to the log. Its
            # children get SIGKILL with the group if it does not go.
            sent = signal.SIGABRT
            self.process.send_signal(sent)
        elif stage is StopStage.SIGNALLED:
            sent = signal.SIGTERM
            self.process.signal_group(sent)
        elif stage is StopStage.KILLED:
            sent = signal.SIGKILL
            self.process.signal_group(sent)
        wait = self._sup.stop_timeout_s if stage is StopStage.ASKED else self._sup.kill_timeout_s
        self.stop_plan = StopPlan(reason, stage, sent, now + wait, then)
        self.state = ProcessState.STOPPING
        self.deadline = self.stop_plan.deadline

    def escalate(self, now: float) -> None:
        """The stop plan's deadline passed: on to the next stage."""
        plan = self.stop_plan
        assert plan is not None
        if plan.stage is StopStage.ASKED:
            self._log.warning(
                "worker did not stop in time; sending SIGTERM",
                pid=self.pid,
                stop_timeout_s=self._sup.stop_timeout_s,
            )
            self.stop(plan.reason, now, plan.then, stage=StopStage.SIGNALLED)
        elif plan.stage is StopStage.SIGNALLED:
            self._log.error(
                "worker still alive after signal; sending SIGKILL",
                pid=self.pid,
                signal=plan.signal.name if plan.signal else None,
                kill_timeout_s=self._sup.kill_timeout_s,
            )
            self.stop(plan.reason, now, plan.then, stage=StopStage.KILLED)
        else:
            self._log.error(
                "worker still alive after SIGKILL (uninterruptible sleep?)", pid=self.pid
            )
            self.stop(plan.reason, now, plan.then, stage=StopStage.KILLED)

    # --- the end -------------------------------------------------------------------------

    def exit_record(self, now: float, log_path: Path) -> ExitRecord:
        """Reap the process, kill what is left of its group, close it; how it ended."""
        process = self.process
        exitcode = process.reap()
        if exitcode is None:
            self._log.error("exit reported but the process is not reaped yet", pid=process.pid)
            exitcode = -int(signal.SIGKILL)
            process.signal_group(signal.SIGKILL)
        self.leftovers_killed = process.kill_leftovers()
        process.close()
        try:
            tail = exit_tail(tail_lines(log_path, CRASH_TAIL_LINES), LOG_TAIL_LINES, exitcode)
        except OSError as exc:
            tail = [f"(cannot read {log_path}: {exc})"]
        self.deadline = None
        return describe_exit(
            exitcode,
            requested=self.stop_plan.reason if self.stop_plan is not None else None,
            during_start=self.registered is None,
            uptime_s=now - self.started_at,
            at_ms=epoch_ms(),
            log_tail=tail,
        )


def _replace(plan: StopPlan, *, then: AfterStop) -> StopPlan:
    return StopPlan(plan.reason, plan.stage, plan.signal, plan.deadline, then)
