"""A started worker process as the master sees it: its pidfd, its channel, signals to it
and its group, and reaping it.

The master learns of a death from a pidfd (an fd that becomes readable when that exact
process exits; no polling), and reports it only after the pipe has delivered everything
the worker wrote before dying (or after ``EOF_GRACE_S``).
"""

import asyncio
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from hiscrm.channel import Channel
from hiscrm.master.supervision.events import ChannelClosed, Event, FrameReceived, ProcessExited

EOF_GRACE_S = 0.5  # after the exit, how long to wait for the pipe's last bytes


class WorkerProcess:
    """A started worker process as the master sees it: spawned (``process`` is its
    multiprocessing handle) or forked from the template (the master's child all the same,
    reaped through its pidfd)."""

    def __init__(
        self,
        worker_id: str,
        pid: int,
        post: Callable[[Event], None],
        process: BaseProcess | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.pid = pid
        self._process = process
        self._post = post
        self._loop = asyncio.get_running_loop()
        self.channel: Channel | None = None
        self._exit_fd = _exit_fd(pid, process)
        self._exited = False
        self.exit_noticed_at: float | None = None  # time.time() when the pidfd fired
        self._channel_closed = False
        self._exit_posted = False
        self._eof_timer: asyncio.TimerHandle | None = None
        self._loop.add_reader(self._exit_fd, self._on_exit_fd)

    # --- notifications -------------------------------------------------------------------

    def on_frame(self, data: bytes) -> None:
        self._post(FrameReceived(self.worker_id, self.pid, data))

    def on_channel_closed(self, error: Exception | None) -> None:
        self._channel_closed = True
        self._post(ChannelClosed(self.worker_id, self.pid, error))
        if self._exited:
            self._post_exit()

    def _on_exit_fd(self) -> None:
        self.exit_noticed_at = time.time()
        self._loop.remove_reader(self._exit_fd)
        self._exited = True
        if self._channel_closed:
            self._post_exit()
        else:
            self._eof_timer = self._loop.call_later(EOF_GRACE_S, self._post_exit)

    def _post_exit(self) -> None:
        if self._eof_timer is not None:
            self._eof_timer.cancel()
        if not self._exit_posted:
            self._exit_posted = True
            self._post(ProcessExited(self.worker_id, self.pid))

    # --- actions -------------------------------------------------------------------------

    def send(self, payload: bytes) -> bool:
        return self.channel is not None and self.channel.send(payload)

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal the worker alone."""
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:  # already gone; its exit is on its way
            return

    def signal_group(self, sig: signal.Signals) -> None:
        """Signal the worker's process group (it and everything it started)."""
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:  # it has not made its own group yet, or is gone
            self.send_signal(sig)

    def reap(self) -> int | None:
        """The exit code (negative: the signal) once the process has exited."""
        if self._process is not None:
            self._process.join(timeout=0)
            return self._process.exitcode
        try:
            info = os.waitid(os.P_PIDFD, self._exit_fd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:  # not our child after all: no status to be had
            return None
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def kill_leftovers(self) -> bool:
        """After the worker is reaped: SIGKILL whatever is left of its group. True if
        something was left."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def close(self) -> None:
        if not self._exited:
            self._loop.remove_reader(self._exit_fd)
        if self._eof_timer is not None:
            self._eof_timer.cancel()
        os.close(self._exit_fd)
        if self.channel is not None:
            self.channel.close()
        if self._process is not None and self._process.exitcode is not None:
            self._process.close()


def _exit_fd(pid: int, process: BaseProcess | None) -> int:
    if hasattr(os, "pidfd_open"):
        return os.pidfd_open(pid)
    assert process is not None, "forked workers need pidfd_open (Linux)"
    return os.dup(process.sentinel)  # readable at exit too, unless a grandchild inherited it
