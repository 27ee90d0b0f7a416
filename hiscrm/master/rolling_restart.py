"""Restarting every worker in turn (SIGHUP), as steps the supervisor loop advances.

One worker at a time is stopped and started again; the next one goes only when the
previous is running again, so at most one worker is ever down. A worker that fails to
come back stops the rollout, leaving the others untouched.
"""

from collections import deque

from structlog.typing import FilteringBoundLogger

from hiscrm.master.worker_handle import WorkerHandle, WorkerState

_FAILED_STATES = (WorkerState.BOOT_FAILED, WorkerState.BACKOFF, WorkerState.STOPPED)


class RollingRestart:
    def __init__(self, worker_ids: list[str], log: FilteringBoundLogger) -> None:
        self._pending = deque(worker_ids)
        self._log = log
        self._current: str | None = None
        self._starts_before = 0
        self._began_at: float | None = None

    async def advance(self, handles: dict[str, WorkerHandle], now: float) -> bool:
        """Take the next step if the current one is done. True when the rollout is over."""
        if self._current is not None:
            handle = handles[self._current]
            if handle.state is WorkerState.RUNNING and handle.starts > self._starts_before:
                took = now - (self._began_at or now)
                self._log.info(
                    "rolling restart: worker back",
                    worker=handle.id,
                    pid=handle.pid,
                    took_s=round(took, 3),
                )
                self._current = None
            elif handle.state in _FAILED_STATES and handle.starts > self._starts_before:
                self._log.error(
                    "rolling restart stopped: a worker did not come back",
                    worker=handle.id,
                    state=str(handle.state),
                    left=list(self._pending),
                )
                return True
            else:
                return False
        while self._pending:
            handle = handles[self._pending.popleft()]
            if handle.state is not WorkerState.RUNNING:
                self._log.warning(
                    "rolling restart: skipping worker", worker=handle.id, state=str(handle.state)
                )
                continue
            self._current, self._starts_before, self._began_at = handle.id, handle.starts, now
            await handle.request_stop("reload", now, restart=True)
            return False
        self._log.info("rolling restart complete")
        return True
