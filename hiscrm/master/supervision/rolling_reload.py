"""Reloading every worker in turn (``hiscrmctl reload``, ``POST /reload``, SIGHUP), as
steps the supervisor loop advances.

For each running worker:

1. *starting*: a replacement process starts beside it, with the code now on disk;
2. *handing over*: once the replacement has registered it becomes the slot's worker;
   each account is revoked from the old process (which stops its task and flushes its
   changes) and, when released, assigned to the new one. An account never has two
   workers; the gap (revoked → running again) is measured per account;
3. *stopping old*: the old process, now without accounts, is stopped.

A replacement that fails to start stops the whole reload: the old process keeps serving
and ``error`` says why. A SIGTERM during a reload takes effect at once (the supervisor
drops the reload and stops every process).
"""

import re
from collections import deque
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING

from structlog.typing import FilteringBoundLogger

from hiscrm.master.supervision.worker_handle import WorkerHandle, WorkerState

if TYPE_CHECKING:
    from hiscrm.master.supervision.supervisor import Supervisor


class Phase(Enum):
    STARTING = "starting"
    HANDING_OVER = "handing_over"
    STOPPING_OLD = "stopping_old"


@dataclass
class Step:
    worker: str
    old_pid: int | None
    new_pid: int | None
    state: str
    took_s: float
    accounts: int = 0
    max_gap_ms: float | None = None  # longest time an account had no running task


@dataclass
class _Current:
    old: WorkerHandle
    new: WorkerHandle
    old_pid: int | None
    began: float
    phase: Phase = Phase.STARTING
    deadline: float | None = None  # of the hand-over: then the old process is stopped anyway


class RollingReload:
    def __init__(
        self, supervisor: "Supervisor", log: FilteringBoundLogger, now: float, why: str
    ) -> None:
        self.why = why  # SIGHUP, requested (API), --watch
        self._supervisor = supervisor
        self._log = log
        self._pending = deque(supervisor.handles)
        self._current: _Current | None = None
        self.began = now
        self.ended: float | None = None
        self.steps: list[Step] = []
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.ended is not None

    @property
    def deadline(self) -> float | None:
        """When the supervisor must call ``advance`` even if nothing happens."""
        return self._current.deadline if self._current is not None else None

    async def advance(self, now: float) -> None:
        """Move on as far as the processes allow; returns when it has to wait."""
        while not self.done:
            if self._current is None:
                if not await self._begin_next(now):
                    return
                continue
            current = self._current
            if current.phase is Phase.STARTING:
                if current.new.state is WorkerState.STOPPED:
                    self._fail(current, now)
                    return
                if current.new.state is not WorkerState.RUNNING:
                    return
                self._supervisor.promote(current.old, current.new)
                self._supervisor.accounts_manager().begin_handover(current.old, current.new, now)
                current.phase = Phase.HANDING_OVER
                sup = self._supervisor.config.supervision
                current.deadline = now + sup.stop_timeout_s + sup.start_timeout_s
            if current.phase is Phase.HANDING_OVER:
                manager = self._supervisor.accounts_manager()
                if not manager.handover_done(current.old):
                    if current.deadline is None or now < current.deadline:
                        return
                    self._log.error(
                        "reload: hand-over not finished in time; stopping the old process",
                        worker=current.new.id,
                        old_pid=current.old_pid,
                        waiting_for=manager.handover_waiting_for(current.old),
                    )
                current.deadline = None
                await current.old.request_stop("reload", now, restart=False)
                current.phase = Phase.STOPPING_OLD
            if current.phase is Phase.STOPPING_OLD:
                if current.old.state is not WorkerState.STOPPED:
                    return
                self._finish_step(current, now)

    async def _begin_next(self, now: float) -> bool:
        """Start the next worker's replacement; False when there is none left."""
        while self._pending:
            worker_id = self._pending.popleft()
            old = self._supervisor.handles[worker_id]
            if old.state is not WorkerState.RUNNING:
                self._log.warning(
                    "reload: skipping worker", worker=worker_id, state=old.state.value
                )
                continue
            new = self._supervisor.new_replacement(worker_id)
            self._current = _Current(old, new, old.pid, now)
            self._log.info("reload: starting replacement", worker=worker_id, old_pid=old.pid)
            await new.start(now, "reload")
            return True
        self.ended = now
        self._log.info("reload complete", took_s=round(now - self.began, 3), steps=len(self.steps))
        return False

    def _finish_step(self, current: _Current, now: float) -> None:
        handover = self._supervisor.accounts_manager().end_handover(current.old)
        gaps = list(handover.gaps_ms.values()) if handover else []
        step = Step(
            worker=current.new.id,
            old_pid=current.old_pid,
            new_pid=current.new.pid,
            state=current.new.state.value,
            took_s=round(now - current.began, 3),
            accounts=len(handover.accounts) if handover else 0,
            max_gap_ms=round(max(gaps), 1) if gaps else None,
        )
        self.steps.append(step)
        self._current = None
        self._log.info("reload: worker replaced", **asdict(step))

    def _fail(self, current: _Current, now: float) -> None:
        record = current.new.last_exit
        why = record.detail if record else "it stopped before registering"
        cause = _exception_line(record.log_tail if record else [])
        if cause:
            why = f"{why}: {cause}"
        self.error = f"the new {current.new.id} did not start ({why}); the old one keeps serving"
        self.steps.append(
            Step(
                current.new.id, current.old_pid, None, "boot_failed", round(now - current.began, 3)
            )
        )
        self._log.error(
            "reload stopped: a replacement did not start",
            worker=current.new.id,
            reason=record.reason if record else None,
            left=list(self._pending),
            log_tail=record.log_tail if record else [],
        )
        self._current = None
        self.ended = now

    def abandon(self, now: float) -> None:
        """Shutdown: every process will be stopped by the supervisor anyway."""
        self._current = None
        self.error = self.error or "interrupted by shutdown"
        self.ended = now


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Warning)\b")


def _exception_line(lines: list[str]) -> str | None:
    """The last 'SomeError: message' line of a log tail (a traceback's conclusion)."""
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line.strip()):
            return line.strip()[:300]
    return None
