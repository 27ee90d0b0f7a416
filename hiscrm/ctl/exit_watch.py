"""Waiting for a process that is not our child to exit (the master, for ``hiscrmctl
shutdown``): through a pidfd, which becomes readable when the process ends, zombie or
not (Linux 5.3); elsewhere by looking at it every few milliseconds."""

import os
import select
import time

import psutil

POLL_S = 0.02


class ExitWatch:
    """Made before the process is asked to stop, so a pid reused later is not mistaken
    for it."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._fd: int | None = None
        self._process: psutil.Process | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return  # gone already
        except (AttributeError, OSError):  # no pidfds here: psutil, by polling
            try:
                self._process = psutil.Process(pid)
            except psutil.NoSuchProcess:
                return

    def wait(self, timeout_s: float) -> bool:
        """True once the process has exited; False if it still runs after ``timeout_s``."""
        if self._fd is not None:
            readable, _, _ = select.select([self._fd], [], [], timeout_s)
            return bool(readable)
        deadline = time.monotonic() + timeout_s
        while not self._exited():
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _exited(self) -> bool:
        if self._process is None:
            return True
        try:
            return self._process.status() == psutil.STATUS_ZOMBIE or not self._process.is_running()
        except psutil.NoSuchProcess:
            return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
