"""Restarting every worker in turn (SIGHUP, ``POST /reload``), as steps the supervisor
loop advances.

One worker at a time is stopped and started again; the next one goes only when the
previous is running again, so at most one worker is ever down. A worker that fails to
come back stops the rollout, leaving the others untouched. Each step is recorded with
its timing for whoever asked.
"""

from collections import deque
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from hiscrm.master.worker_handle import WorkerHandle, WorkerState

_FAILED_STATES = (WorkerState.BOOT_FAILED, WorkerState.BACKOFF, WorkerState.STOPPED)


@dataclass
class Step:
    worker: str
    old_pid: int | None
    new_pid: int | None
    state: str
    took_s: float


class RollingRestart:
    def __init__(self, worker_ids: list[str], log: FilteringBoundLogger, now: float) -> None:
        self._pending = deque(worker_ids)
        self._log = log
        self._current: str | None = None
        self._starts_before = 0
        self._old_pid: int | None = None
        self._step_began = now
        self.began = now
        self.ended: float | None = None
        self.steps: list[Step] = []
        self.error: str | None = None

    @property
    def done(self) -> bool:
        return self.ended is not None

    async def advance(self, handles: dict[str, WorkerHandle], now: float) -> bool:
        """Take the next step if the current one is done. True when the rollout is over."""
        if self._current is not None:
            handle = handles[self._current]
            if handle.starts <= self._starts_before or handle.state not in (
                WorkerState.RUNNING,
                *_FAILED_STATES,
            ):
                return False
            step = Step(
                handle.id,
                self._old_pid,
                handle.pid,
                handle.state.value,
                round(now - self._step_began, 3),
            )
            self.steps.append(step)
            self._current = None
            if handle.state is not WorkerState.RUNNING:
                self.error = f"{handle.id} did not come back ({handle.state.value})"
                self._log.error(
                    "rolling restart stopped: a worker did not come back",
                    worker=handle.id,
                    state=handle.state.value,
                    left=list(self._pending),
                )
                return self._finish(now)
            self._log.info(
                "rolling restart: worker back", worker=handle.id, pid=handle.pid, took_s=step.took_s
            )
        while self._pending:
            handle = handles[self._pending.popleft()]
            if handle.state is not WorkerState.RUNNING:
                self._log.warning(
                    "rolling restart: skipping worker", worker=handle.id, state=handle.state.value
                )
                continue
            self._current, self._starts_before, self._old_pid = handle.id, handle.starts, handle.pid
            self._step_began = now
            await handle.request_stop("reload", now, restart=True)
            return False
        self._log.info("rolling restart complete", took_s=round(now - self.began, 3))
        return self._finish(now)

    def _finish(self, now: float) -> bool:
        self.ended = now
        return True
